"""
JWT keys from a JWKS URL against a real identity provider: a twisted.web
``Site`` serving the JWKS over TLS on 127.0.0.1 with a trustme
certificate, real keys and real JWTs.

The first fetch is synchronous (under ``twistd`` it runs before the
reactor does); here the reactor is already running and serves the
provider, so the tests run that fetch in a thread (``deferToThread``).
Every wait is bounded, and counted in provider requests, never in time.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from securews.auth.interfaces import AuthenticationFailed
from securews.auth.jwks import JWKSKeys, jwt_key_source
from securews.rules.config import ConfigError
from securews.rules.settings import JWTSettings, TLSSettings
from securews.testing import make_config
from securews.wire.factory import SecureServerFactory
from securews.wire.listening import listening_factory
from securews.wire.tls import server_context
from tests.support.common import CertFiles, websocket_client_tls, write_cert
from tests.support.jwkstools import EC_A, EC_B, RSA_A, document, jwk, material, token
from tests.support.processes import Server, free_port, toml, twistd

HOST = "127.0.0.1"
ORIGIN = "https://app.example.com"
BOUND = 10.0  # no wait in this file is longer
ALGORITHMS = ("RS256", "ES256")
KEY_A = jwk(RSA_A, "a")
KEY_B = jwk(EC_B, "b")


class Provider(Resource):
    """
    ``/jwks.json`` as ``mode`` says; every request to it is counted.
    ``/elsewhere`` (a redirect target) would serve the keys too.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.document = document(KEY_A)
        self.mode = "serve"
        self.status = 200
        self.cache_control: str | None = None
        self.requests = 0
        self.elsewhere = 0
        self.port = 0

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/elsewhere":
            self.elsewhere += 1
            return self.document
        self.requests += 1
        if self.mode == "redirect":
            request.redirect(f"https://{HOST}:{self.port}/elsewhere".encode())
            return b""
        if self.mode == "silent":
            return NOT_DONE_YET
        if self.mode == "trickle":  # a byte every 0.1 s: never idle, never done
            request.setHeader(b"content-length", b"100000")
            drip = LoopingCall(request.write, b" ")
            drip.clock = global_reactor
            drip.start(0.1)
            request.notifyFinish().addBoth(lambda _: drip.stop())
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/jwk-set+json")
        if self.mode == "close":
            # The answer ends the connection (as HTTP/1.0 providers do), its
            # head sent before the body, in TLS records of its own.
            request.setHeader(b"connection", b"close")
            request.setHeader(b"content-length", b"%d" % len(self.document))
            request.write(b"")
            global_reactor.callLater(0.05, lambda: (request.write(self.document),
                                                    request.finish()))
            return NOT_DONE_YET
        if self.cache_control is not None:
            request.setHeader(b"cache-control", self.cache_control.encode())
        return self.document


@attrs.define
class Running:
    provider: Provider
    files: CertFiles
    port: Any

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.provider.port}/jwks.json"

    def settings(self, **overrides: Any) -> JWTSettings:
        values: dict[str, Any] = {
            "algorithms": ALGORITHMS, "jwks_url": self.url,
            "jwks_ca": str(self.files.ca_cert), "jwks_cooldown": 1.0,
            "jwks_timeout": 2.0}
        return JWTSettings(**{**values, **overrides})


@pytest_twisted.async_yield_fixture
async def idp() -> AsyncIterator[Callable[..., Any]]:
    """``await idp(files)``: a provider with that certificate; torn down after."""
    ports: list[Any] = []
    wrappers: list[WrappingFactory] = []

    async def start(files: CertFiles) -> Running:
        options = server_context(TLSSettings(cert=str(files.cert), key=str(files.key)))
        provider = Provider()
        site = Site(provider)
        site.log = lambda request: None  # type: ignore[method-assign]
        wrapper = WrappingFactory(site)
        port = await SSL4ServerEndpoint(global_reactor, 0, options,
                                        interface=HOST).listen(wrapper)
        ports.append(port)
        wrappers.append(wrapper)
        provider.port = port.getHost().port
        return Running(provider, files, port)

    yield start
    for wrapper in wrappers:
        for protocol in list(wrapper.protocols):
            protocol.transport.abortConnection()
    for port in ports:  # a test may have stopped it already
        await maybeDeferred(port.stopListening)


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> CertFiles:
    return write_cert(ca, tmp_path / "provider")


@pytest_twisted.async_yield_fixture
async def load() -> AsyncIterator[Callable[..., Any]]:
    """``await load(settings)``: the keys, fetched as at startup, then started."""
    loaded: list[JWKSKeys] = []

    async def fetch(settings: JWTSettings) -> JWKSKeys:
        keys = await deferToThread(jwt_key_source, settings, global_reactor)
        assert isinstance(keys, JWKSKeys)
        loaded.append(keys)
        keys.start()
        return keys

    yield fetch
    for keys in loaded:
        keys.stop()


def verdict(keys: JWKSKeys, jwt_text: str) -> str:
    """"ok" or the refusal reason: select() never waits for the network."""
    try:
        keys.select(jwt_text)
    except AuthenticationFailed as e:
        return e.reason
    return "ok"


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the reactor run until ``condition()``, for at most BOUND seconds."""
    for _ in range(int(BOUND / 0.05)):
        if condition():
            return
        await deferLater(global_reactor, 0.05, lambda: None)
    raise AssertionError(f"never happened: {what}")


async def startup_error(settings: JWTSettings) -> str:
    """The one-line ConfigError of a startup fetch that must fail."""
    with pytest.raises(ConfigError) as info:
        await deferToThread(jwt_key_source, settings, global_reactor)
    text = str(info.value)
    assert info.value.key == "auth.jwt.jwks_url"
    assert "\n" not in text
    return text


# -- startup -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_startup_fetch_loads_the_keys_and_honours_max_age(
        idp: Any, files: CertFiles, load: Any, events: list[LogEvent]) -> None:
    """The set is fetched over verified HTTPS; max-age sets the next refresh."""
    running = await idp(files)
    running.provider.document = document(
        KEY_A, KEY_B, {"kty": "oct", "kid": "s", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"})
    running.provider.cache_control = "public, max-age=120"
    keys = await load(running.settings())
    assert set(keys.current.keys.by_kid) == {"a", "b"}
    assert keys.plan.due == keys.last_success + 120
    assert verdict(keys, token(RSA_A, "a")) == "ok"
    assert verdict(keys, token(EC_B, "b")) == "ok"
    assert running.provider.requests == 1
    logged = [formatEvent(e) for e in events if e.get("event") == "jwks"]
    assert logged == [f"JWKS from {HOST}:{running.provider.port}: 2 keys "
                      "(1 skipped: 1 symmetric)"]


@pytest_twisted.ensureDeferred
async def test_startup_fetch_reads_an_answer_that_closes_the_connection(
        idp: Any, files: CertFiles, load: Any) -> None:
    """``Connection: close`` (as HTTP/1.0 providers answer): the body is read
    after the client closed its side, as a real socket's file allows."""
    running = await idp(files)
    running.provider.mode = "close"
    keys = await load(running.settings())
    assert set(keys.current.keys.by_kid) == {"a"}


@pytest.mark.parametrize(("setup", "says"), [
    (lambda p: setattr(p, "status", 500), "answered HTTP 500"),
    (lambda p: setattr(p, "mode", "redirect"), "(redirects are not followed)"),
    (lambda p: setattr(p, "document", b"<html>login</html>"), "not JSON"),
    (lambda p: setattr(p, "document", b" " * (256 * 1024 + 1)),
     "larger than 262144 bytes"),
    (lambda p: setattr(p, "document", document(
        jwk(EC_A, "p", private=True), {"kty": "oct", "kid": "s", "k": "c2VjcmV0"})),
     "no usable key: 0 keys (2 skipped: 1 private, 1 symmetric)"),
    (lambda p: setattr(p, "document", document(*[jwk(EC_A, str(n))
                                                  for n in range(101)])),
     "101 keys, more than 100"),
    (lambda p: setattr(p, "mode", "silent"), "no complete answer within 0.5 s"),
    (lambda p: setattr(p, "mode", "trickle"), "no complete answer within 0.5 s"),
], ids=["500", "redirect", "html", "oversized", "no-usable-key", "too-many-keys",
        "silent", "trickle"])
@pytest_twisted.ensureDeferred
async def test_unusable_provider_stops_the_start_with_one_line(
        idp: Any, files: CertFiles, setup: Callable[[Provider], None],
        says: str) -> None:
    """Bad status, body, key set or time: a ConfigError naming host and cause."""
    running = await idp(files)
    setup(running.provider)
    text = await startup_error(running.settings(jwks_timeout=0.5))
    assert text.startswith(f"auth.jwt.jwks_url: cannot use the JWKS at "
                           f"{HOST}:{running.provider.port}: ")
    assert says in text
    assert running.provider.elsewhere == 0
    for secret in material(jwk(EC_A, "p", private=True)):
        assert secret not in text


@pytest_twisted.ensureDeferred
async def test_unreachable_provider_stops_the_start(files: CertFiles) -> None:
    """Nothing listening at the URL: "connection refused"."""
    settings = JWTSettings(algorithms=ALGORITHMS, jwks_ca=str(files.ca_cert),
                           jwks_url=f"https://{HOST}:{free_port()}/jwks.json")
    assert (await startup_error(settings)).endswith(": connection refused")


@pytest_twisted.ensureDeferred
async def test_untrusted_or_misnamed_certificate_stops_the_start(
        idp: Any, files: CertFiles, ca: trustme.CA, tmp_path: Path) -> None:
    """Another CA's certificate, or one for another name: no request is even sent."""
    other_ca = await idp(write_cert(trustme.CA(), tmp_path / "other"))
    misnamed = await idp(write_cert(ca, tmp_path / "wrong", "wrong.example"))
    for running in (other_ca, misnamed):
        text = await startup_error(running.settings(jwks_ca=str(files.ca_cert)))
        assert "TLS certificate verification failed" in text
        assert running.provider.requests == 0
    # Control: trusting its own CA, the first provider is fine.
    assert await deferToThread(jwt_key_source, other_ca.settings(), global_reactor)


# -- while running ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rotation_is_picked_up_without_a_restart(
        idp: Any, files: CertFiles, load: Any) -> None:
    """The provider swaps key a for b: b works after one fetch, a stops working."""
    running = await idp(files)
    keys = await load(running.settings())
    assert verdict(keys, token(RSA_A, "a")) == "ok"
    running.provider.document = document(KEY_B)
    rotated = token(EC_B, "b")
    assert verdict(keys, rotated) == "unknown_key"
    await until(lambda: "b" in keys.current.keys.by_kid, "refetch after the cooldown")
    assert running.provider.requests == 2
    assert verdict(keys, rotated) == "ok"
    assert verdict(keys, token(RSA_A, "a")) == "unknown_key"


@pytest_twisted.ensureDeferred
async def test_provider_down_keeps_the_last_good_keys(
        idp: Any, files: CertFiles, load: Any, events: list[LogEvent]) -> None:
    """500s, then recovery, then a closed port: known kids verify throughout."""
    running = await idp(files)
    keys = await load(running.settings())
    known = token(RSA_A, "a")
    running.provider.status = 500
    assert verdict(keys, token(EC_A, "unknown")) == "unknown_key"  # refresh soon
    await until(lambda: keys.refresh_failures == 2, "two failed refreshes")
    assert verdict(keys, known) == "ok"
    running.provider.status = 200
    await until(lambda: keys.plan.failures == 0, "a refresh that works")
    await running.port.stopListening()
    assert verdict(keys, token(EC_A, "still-unknown")) == "unknown_key"
    await until(lambda: keys.refresh_failures == 3, "a refresh to a closed port")
    assert verdict(keys, known) == "ok"
    assert keys.current.keys.by_kid.keys() == {"a"}
    jwks = [e for e in events if e.get("event") == "jwks"]
    warnings = [formatEvent(e) for e in jwks if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 2  # once per run of failures
    assert "answered HTTP 500" in warnings[0]
    assert "connection refused" in warnings[1]
    assert sum("works again after 2 failed attempts" in formatEvent(e)
               for e in jwks) == 1


@pytest_twisted.ensureDeferred
async def test_flood_of_unknown_kids_is_bounded_at_the_provider(
        idp: Any, files: CertFiles, load: Any) -> None:
    """
    400 made-up kids over 40 reactor turns: each refused at once, and the
    provider sees at most one fetch per cooldown of the flood's length.
    """
    running = await idp(files)
    keys = await load(running.settings(jwks_cooldown=1.0))
    began = global_reactor.seconds()
    verdicts = []
    for turn in range(40):
        verdicts += [verdict(keys, token(EC_A, f"forged-{turn}-{n}"))
                     for n in range(10)]
        await deferLater(global_reactor, 0.025, lambda: None)
    lasted = global_reactor.seconds() - began
    assert set(verdicts) == {"unknown_key"}
    await deferLater(global_reactor, 1.5, lambda: None)  # a fetch still due runs
    refetches = running.provider.requests - 1
    assert 1 <= refetches <= math.floor(lasted / 1.0) + 1
    assert keys.current.keys.by_kid.keys() == {"a"}


# -- the whole server ------------------------------------------------------------


def handshake(port: int, context: ssl.SSLContext, jwt_text: str) -> int | str:
    """The echo of "hi" over an accepted session, else the refusal status."""
    try:
        with connect(f"wss://{HOST}:{port}/ws?token={jwt_text}", ssl=context,
                     origin=ORIGIN, open_timeout=BOUND) as ws:  # type: ignore[arg-type]
            ws.send("hi")
            return str(ws.recv(timeout=BOUND))
    except InvalidStatus as e:
        return int(e.response.status_code)


@pytest_twisted.ensureDeferred
async def test_factory_serves_rotated_keys_and_reports_them(
        idp: Any, files: CertFiles, certs: CertFiles) -> None:
    """SecureServerFactory with jwks_url: wss handshakes follow the provider's keys."""
    provider_files = files
    running = await idp(provider_files)
    config = make_config(
        tls={"cert": str(certs.cert), "key": str(certs.key)},
        origin={"allowed": [ORIGIN]},
        auth={"methods": ["jwt"], "jwt": {
            "algorithms": list(ALGORITHMS), "jwks_url": running.url,
            "jwks_ca": str(provider_files.ca_cert), "jwks_cooldown": 1.0}},
        ratelimit={"connect_burst": 1000})
    factory = await deferToThread(SecureServerFactory, config)
    jwks = factory.policy.jwks
    assert jwks is not None
    server = await _listen(factory)
    try:
        context = websocket_client_tls(certs.ca_cert)
        port = server.getHost().port
        assert await deferToThread(handshake, port, context, token(RSA_A, "a")) == "hi"
        running.provider.document = document(KEY_A, KEY_B)
        rotated = token(EC_B, "b")
        assert await deferToThread(handshake, port, context, rotated) == 401
        await until(lambda: "b" in jwks.current.keys.by_kid,
                    "the refetch the unknown kid asked for")
        assert await deferToThread(handshake, port, context, rotated) == "hi"
        assert factory.metrics.registry.get_sample_value(
            "securews_auth_failures_total", {"method": "jwt",
                                             "reason": "unknown_key"}) == 1
        text = factory.metrics.exposition().decode()
        assert "securews_jwks_keys 2.0" in text
        assert "securews_jwks_refresh_failures_total 0.0" in text
    finally:
        await server.stopListening()
        await factory.shutdown(grace=0)
    assert not jwks.running  # stopFactory stopped the refreshes


async def _listen(factory: SecureServerFactory) -> Any:
    endpoint = TCP4ServerEndpoint(global_reactor, 0, interface=HOST)
    return await endpoint.listen(listening_factory(factory))


# -- twistd ----------------------------------------------------------------------


def _settings(tmp_path: Path, certs: CertFiles, jwt: dict[str, object],
              port: int) -> Path:
    path = tmp_path / "securews.toml"
    path.write_text(toml({
        "server": {"listen": f"tcp:{port}:interface={HOST}"},
        "tls": {"cert": str(certs.cert), "key": str(certs.key)},
        "origin": {"allowed": [ORIGIN]},
        "auth": {"methods": ["jwt"]},
        "auth.jwt": jwt,
    }))
    return path


def test_twistd_refuses_to_start_without_the_jwks(
        tmp_path: Path, certs: CertFiles) -> None:
    """twistd securews with an unreachable jwks_url: exit 2, one line, no traceback."""
    path = _settings(tmp_path, certs, {
        "jwks_url": f"https://{HOST}:{free_port()}/jwks.json",
        "jwks_ca": str(certs.ca_cert)}, free_port())
    result = twistd("--nodaemon", "--pidfile=", "securews", "--config", str(path),
                    cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"securews: error: {path}: auth.jwt.jwks_url: "
                               "cannot use the JWKS at ")
    assert lines[0].endswith("connection refused")


@pytest_twisted.ensureDeferred
async def test_twistd_fetches_before_the_reactor_and_refreshes_after(
        idp: Any, files: CertFiles, certs: CertFiles, tmp_path: Path) -> None:
    """The installed server starts with the provider's keys and follows a rotation."""
    running = await idp(files)
    port = free_port()
    path = _settings(tmp_path, certs, {
        "algorithms": list(ALGORITHMS), "jwks_url": running.url,
        "jwks_ca": str(files.ca_cert), "jwks_cooldown": 1.0}, port)
    server = await deferToThread(Server, ["--config", str(path)], tmp_path)
    try:
        await deferToThread(server.wait_for, "securews listening on")
        assert f"JWKS from {HOST}:{running.provider.port}: 1 key" in server.text()
        context = websocket_client_tls(certs.ca_cert)
        assert await deferToThread(handshake, port, context, token(RSA_A, "a")) == "hi"
        running.provider.document = document(KEY_B)
        rotated = token(EC_B, "b")
        assert await deferToThread(handshake, port, context, rotated) == 401
        await until(lambda: running.provider.requests == 2, "the refetch")
        await until(lambda: "changed: 1 key" in server.text(), "the new set in use")
        assert await deferToThread(handshake, port, context, rotated) == "hi"
        assert await deferToThread(handshake, port, context, token(RSA_A, "a")) == 401
    finally:
        await deferToThread(server.stop)
