"""
securews.auth.introspect against a real HTTPS introspection endpoint.

A twisted.web ``Site`` listens on 127.0.0.1 with a trustme certificate,
and the authenticator uses the real ``Agent`` with the trustme CA as
``introspect_ca``.  The endpoint answers by the ``session`` cookie's
value up to its first ``.``; what follows is a secret that must never
reach a log.  A few cache and timeout boundaries are checked exactly with
a ``Clock`` and an in-memory agent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import trustme
from OpenSSL import SSL
from twisted.internet import error
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface.verify import verifyObject

from securews.auth.interfaces import (
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    Principal,
)
from securews.auth.introspect import IntrospectingCookieAuthenticator
from securews.rules.config import ConfigError
from securews.rules.head import RequestHead
from securews.rules.settings import CookieSettings, TLSSettings
from securews.wire.tls import server_context
from tests.support.common import CertFiles, write_cert
from tests.support.memory import result_of

HOST = "127.0.0.1"
BOUND = 5.0  # no await in this file waits longer
SECRET = "s3cr3t-9f2c41d7"
GOOD = {"sub": "alice", "roles": ["admin"], "tenant": 7}


# -- the introspection endpoint ------------------------------------------------


def _json(request: Any, value: object) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode()


class Endpoint(Resource):
    """
    ``/introspect`` answers by the session cookie's kind; every call is
    recorded.  ``/elsewhere`` (a redirect target) would accept anyone.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.cookies: list[list[bytes] | None] = []
        self.accepts: list[list[bytes] | None] = []
        self.elsewhere = 0
        self.port = 0

    @property
    def calls(self) -> int:
        return len(self.cookies)

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/elsewhere":
            self.elsewhere += 1
            return _json(request, GOOD)
        self.cookies.append(request.requestHeaders.getRawHeaders(b"cookie"))
        self.accepts.append(request.requestHeaders.getRawHeaders(b"accept"))
        kind = (request.getCookie(b"session") or b"").split(b".")[0].decode()
        statuses = {"denied": 401, "forbidden": 403, "broken": 500, "teapot": 418}
        bodies: dict[str, object] = {
            "good": GOOD, "nosub": {"user": "alice"}, "list": ["alice"],
            "emptysub": {"sub": ""}, "intsub": {"sub": 7},
            "big": {"sub": "alice", "pad": "x" * 60_000},
            "huge": {"sub": "alice", "pad": "x" * 2**20},
        }
        if kind in statuses:
            request.setResponseCode(statuses[kind])
            return b"no " * 50_000
        if kind in bodies:
            return _json(request, bodies[kind])
        if kind == "html":
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body>Please log in</body></html>"
        if kind == "deep":
            return b"[" * 60_000 + b"]" * 60_000
        if kind == "redirect":
            request.redirect(f"https://{HOST}:{self.port}/elsewhere".encode())
            return b""
        if kind == "stall":
            request.setHeader(b"content-length", b"100")
            request.write(b'{"sub": "al')
            return NOT_DONE_YET
        if kind == "slow":
            return NOT_DONE_YET
        request.setResponseCode(400)
        return b"unknown kind"


@attrs.define
class Server:
    endpoint: Endpoint
    port: int
    files: CertFiles

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}/introspect"

    def settings(self, **overrides: Any) -> CookieSettings:
        values: dict[str, Any] = {
            "mode": "introspect", "introspect_url": self.url,
            "introspect_ca": str(self.files.ca_cert), "introspect_timeout": 2.0}
        return CookieSettings(**{**values, **overrides})

    def authenticator(self, **overrides: Any) -> IntrospectingCookieAuthenticator:
        return IntrospectingCookieAuthenticator(self.settings(**overrides),
                                                global_reactor)


@pytest_twisted.async_yield_fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """``await serve(files)``: an endpoint with that certificate; torn down after."""
    ports: list[Any] = []
    wrappers: list[WrappingFactory] = []

    async def start(files: CertFiles) -> Server:
        options = server_context(TLSSettings(cert=str(files.cert),
                                             key=str(files.key)))
        endpoint = Endpoint()
        site = Site(endpoint)
        site.log = lambda request: None  # type: ignore[method-assign]
        wrapper = WrappingFactory(site)
        port = await SSL4ServerEndpoint(global_reactor, 0, options,
                                        interface=HOST).listen(wrapper)
        ports.append(port)
        wrappers.append(wrapper)
        endpoint.port = port.getHost().port
        return Server(endpoint, endpoint.port, files)

    yield start
    for wrapper in wrappers:
        for protocol in list(wrapper.protocols):
            protocol.transport.abortConnection()
    for port in ports:
        await port.stopListening()


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> CertFiles:
    return write_cert(ca, tmp_path / "endpoint")


def who(principal: Principal) -> tuple[str, str, dict[str, Any]]:
    """A principal without its session expiry (which depends on the clock)."""
    return principal.id, principal.method, dict(principal.claims)


def handshake(*cookies: str) -> HandshakeRequest:
    """A handshake carrying these Cookie headers."""
    head = RequestHead("GET", "/ws", "", "HTTP/1.1",
                       tuple(("cookie", c) for c in cookies), 0)
    return HandshakeRequest(head=head, client=HOST, origin=None)


def session(kind: str) -> str:
    return f"session={kind}.{SECRET}"


async def bounded(d: Deferred[Any]) -> Any:
    """Await ``d``, but never for more than BOUND seconds."""
    return await d.addTimeout(BOUND, global_reactor)


async def refusal(d: Deferred[Any]) -> str:
    """The reason ``d`` fails with; the test fails if it succeeds."""
    with pytest.raises(AuthenticationFailed) as info:
        await bounded(d)
    return info.value.reason


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(global_reactor, seconds, lambda: None)


# -- accepted and forwarded ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_accepted_cookie_yields_principal_with_claims(
        serve: Any, files: CertFiles) -> None:
    """200 with {"sub": ...} gives a cookie principal carrying the whole object."""
    server = await serve(files)
    principal = await bounded(server.authenticator().authenticate(
        handshake(session("good"))))
    assert who(principal) == who(Principal(id="alice", method="cookie", claims=GOOD))


@pytest_twisted.ensureDeferred
async def test_cookie_headers_are_forwarded_verbatim(
        serve: Any, files: CertFiles) -> None:
    """The endpoint gets one Cookie header: the request's, joined by '; '."""
    server = await serve(files)
    first, second = f"theme=dark; {session('good')}", "csrf=abc; x=\"q\""
    await bounded(server.authenticator().authenticate(handshake(first, second)))
    assert server.endpoint.cookies == [[f"{first}; {second}".encode()]]
    assert server.endpoint.accepts == [[b"application/json"]]


@pytest.mark.parametrize("cookies", [
    (), ("theme=dark",), ("xsession=good.1; sessionx=good.2",), ("session=",),
    ("session",), ("other=session=good.1",),
], ids=["none", "other", "similar-names", "empty-value", "no-value", "in-value"])
@pytest_twisted.ensureDeferred
async def test_no_session_cookie_means_no_credential(
        serve: Any, files: CertFiles, cookies: tuple[str, ...]) -> None:
    """Without a non-empty cookie of settings.name: None, and no request is made."""
    server = await serve(files)
    result = await bounded(server.authenticator().authenticate(handshake(*cookies)))
    assert result is None
    assert server.endpoint.calls == 0


@pytest_twisted.ensureDeferred
async def test_configured_cookie_name_is_the_one_looked_for(
        serve: Any, files: CertFiles) -> None:
    """With name = "sid", "session" alone is no credential and "sid" is."""
    server = await serve(files)
    auth = server.authenticator(name="sid")
    assert await bounded(auth.authenticate(handshake(session("good")))) is None
    principal = await bounded(auth.authenticate(
        handshake(f"sid=1; {session('good')}")))
    assert principal.id == "alice"
    assert server.endpoint.calls == 1


@pytest_twisted.ensureDeferred
async def test_body_under_the_size_limit_is_accepted(
        serve: Any, files: CertFiles) -> None:
    """A 60 KB answer (under the 64 KiB bound) is read whole."""
    server = await serve(files)
    principal = await bounded(server.authenticator().authenticate(
        handshake(session("big"))))
    assert principal.id == "alice"


# -- refused -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["denied", "forbidden"])
@pytest_twisted.ensureDeferred
async def test_401_and_403_are_rejected(
        serve: Any, files: CertFiles, kind: str) -> None:
    """The endpoint's 401 or 403 is a "rejected" refusal."""
    server = await serve(files)
    auth = server.authenticator()
    assert await refusal(auth.authenticate(handshake(session(kind)))) == "rejected"


@pytest.mark.parametrize("kind", [
    "broken", "teapot", "html", "nosub", "list", "emptysub", "intsub", "deep",
    "huge"])
@pytest_twisted.ensureDeferred
async def test_unusable_answers_are_introspection_errors(
        serve: Any, files: CertFiles, kind: str) -> None:
    """Other statuses, non-JSON, no string sub, and a 1 MiB body all refuse."""
    server = await serve(files)
    auth = server.authenticator()
    reason = await refusal(auth.authenticate(handshake(session(kind))))
    assert reason == "introspection_error"


@pytest_twisted.ensureDeferred
async def test_redirect_is_a_refusal_and_not_followed(
        serve: Any, files: CertFiles) -> None:
    """A 302 to a URL that would accept is refused; the target is never asked."""
    server = await serve(files)
    auth = server.authenticator()
    reason = await refusal(auth.authenticate(handshake(session("redirect"))))
    assert reason == "introspection_error"
    assert server.endpoint.elsewhere == 0


@pytest.mark.parametrize("kind", ["slow", "stall"])
@pytest_twisted.ensureDeferred
async def test_no_complete_answer_in_time_is_a_timeout(
        serve: Any, files: CertFiles, kind: str) -> None:
    """No answer (or half a body) within introspect_timeout: "introspection_timeout"."""
    server = await serve(files)
    auth = server.authenticator(introspect_timeout=0.5)
    began = global_reactor.seconds()
    reason = await refusal(auth.authenticate(handshake(session(kind))))
    elapsed = global_reactor.seconds() - began
    assert reason == "introspection_timeout"
    assert 0.45 <= elapsed < 2.0
    assert server.endpoint.calls == 1


@pytest_twisted.ensureDeferred
async def test_closed_port_is_unreachable(files: CertFiles) -> None:
    """Connection refused: "introspection_unreachable"."""
    port = await TCP4ServerEndpoint(global_reactor, 0, interface=HOST).listen(
        Factory.forProtocol(Protocol))
    number = port.getHost().port
    await port.stopListening()
    settings = CookieSettings(mode="introspect",
                              introspect_url=f"https://{HOST}:{number}/introspect",
                              introspect_ca=str(files.ca_cert))
    auth = IntrospectingCookieAuthenticator(settings, global_reactor)
    reason = await refusal(auth.authenticate(handshake(session("good"))))
    assert reason == "introspection_unreachable"


@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_is_unreachable(
        serve: Any, files: CertFiles, tmp_path: Path) -> None:
    """An endpoint the configured CA did not certify is never sent the cookie."""
    other = write_cert(trustme.CA(), tmp_path / "other")
    server = await serve(other)
    auth = server.authenticator(introspect_ca=str(files.ca_cert))
    reason = await refusal(auth.authenticate(handshake(session("good"))))
    assert reason == "introspection_unreachable"
    assert server.endpoint.calls == 0
    # Control: the same endpoint is fine when its own CA is configured.
    trusting = server.authenticator(introspect_ca=str(other.ca_cert))
    principal = await bounded(trusting.authenticate(handshake(session("good"))))
    assert principal.id == "alice"


@pytest_twisted.ensureDeferred
async def test_certificate_for_another_name_is_unreachable(
        serve: Any, ca: trustme.CA, tmp_path: Path) -> None:
    """A trusted CA's certificate for wrong.example does not do for 127.0.0.1."""
    server = await serve(write_cert(ca, tmp_path / "wrong", "wrong.example"))
    auth = server.authenticator()
    reason = await refusal(auth.authenticate(handshake(session("good"))))
    assert reason == "introspection_unreachable"
    assert server.endpoint.calls == 0


# -- cache and in-flight sharing -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_accepted_answer_is_cached_for_the_ttl(
        serve: Any, files: CertFiles) -> None:
    """Within introspect_cache the endpoint is asked once; after it, again."""
    server = await serve(files)
    auth = server.authenticator(introspect_cache=0.5)
    request = handshake(session("good"))
    first = await bounded(auth.authenticate(request))
    second = await bounded(auth.authenticate(request))
    assert who(first) == who(second)
    assert server.endpoint.calls == 1
    await sleep(0.7)
    assert (await bounded(auth.authenticate(request))).id == "alice"
    assert server.endpoint.calls == 2


@pytest_twisted.ensureDeferred
async def test_cache_is_per_cookie_header(serve: Any, files: CertFiles) -> None:
    """A different Cookie header is a different cache entry."""
    server = await serve(files)
    auth = server.authenticator()
    await bounded(auth.authenticate(handshake(session("good"))))
    await bounded(auth.authenticate(handshake(f"{session('good')}; theme=dark")))
    assert server.endpoint.calls == 2


@pytest_twisted.ensureDeferred
async def test_zero_ttl_disables_the_cache(serve: Any, files: CertFiles) -> None:
    """introspect_cache = 0: every handshake asks the endpoint."""
    server = await serve(files)
    auth = server.authenticator(introspect_cache=0)
    for _ in range(3):
        await bounded(auth.authenticate(handshake(session("good"))))
    assert server.endpoint.calls == 3


@pytest_twisted.ensureDeferred
async def test_refusals_are_not_cached(serve: Any, files: CertFiles) -> None:
    """A refused cookie is asked about again on the next handshake."""
    server = await serve(files)
    auth = server.authenticator()
    for _ in range(2):
        await refusal(auth.authenticate(handshake(session("denied"))))
    assert server.endpoint.calls == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_lookups_share_one_request(
        serve: Any, files: CertFiles) -> None:
    """Two handshakes with the same cookie at once cost one request."""
    server = await serve(files)
    auth = server.authenticator(introspect_cache=0)
    request = handshake(session("good"))
    first, second = auth.authenticate(request), auth.authenticate(request)
    assert who(await bounded(first)) == who(await bounded(second))
    assert server.endpoint.calls == 1


@pytest_twisted.ensureDeferred
async def test_cancelling_one_waiter_leaves_the_other(
        serve: Any, files: CertFiles) -> None:
    """A handshake that gives up does not cancel the lookup another awaits."""
    server = await serve(files)
    auth = server.authenticator()
    request = handshake(session("good"))
    leaving, staying = auth.authenticate(request), auth.authenticate(request)
    leaving.cancel()
    with pytest.raises(CancelledError):
        await leaving
    assert (await bounded(staying)).id == "alice"


# -- exact boundaries with a Clock ---------------------------------------------


@attrs.define
class FakeResponse:
    code: int
    body: bytes

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


@attrs.define
class FakeAgent:
    """
    Answers {"sub": <cookie header>} at once, or fails with ``error``, or
    never answers when ``hang``.
    """

    hang: bool = False
    error: Exception | None = None
    calls: int = 0
    pending: list[Deferred[Any]] = attrs.Factory(list)

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Deferred[Any]:
        self.calls += 1
        if self.error is not None:
            return fail(self.error)
        if self.hang:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        cookie = headers.getRawHeaders(b"cookie")[0].decode()
        return succeed(FakeResponse(200, json.dumps({"sub": cookie}).encode()))


def _clocked(agent: FakeAgent, **settings: Any) -> tuple[Clock, Any]:
    clock = Clock()
    cookie = CookieSettings(mode="introspect", introspect_url="https://idp.test/i",
                            **settings)
    return clock, IntrospectingCookieAuthenticator(cookie, clock, agent=agent,
                                                   max_entries=2)


def test_cache_entry_expires_exactly_at_the_ttl() -> None:
    """A cached answer is used until introspect_cache seconds have passed, not after."""
    agent = FakeAgent()
    clock, auth = _clocked(agent, introspect_cache=10)
    request = handshake("session=a")
    auth.authenticate(request)
    clock.advance(9.75)
    auth.authenticate(request)
    assert agent.calls == 1
    clock.advance(0.25)
    auth.authenticate(request)
    assert agent.calls == 2


def test_cache_holds_at_most_max_entries_evicting_least_recent() -> None:
    """With room for two, a third cookie evicts the least recently used one."""
    agent = FakeAgent()
    _clock, auth = _clocked(agent, introspect_cache=60)
    a, b, c = (handshake(f"session={x}") for x in "abc")
    auth.authenticate(a)
    auth.authenticate(b)
    auth.authenticate(a)  # a is now the most recent
    auth.authenticate(c)  # evicts b
    assert agent.calls == 3
    auth.authenticate(a)
    assert agent.calls == 3
    auth.authenticate(b)
    assert agent.calls == 4


def test_timeout_fires_at_introspect_timeout() -> None:
    """Just before introspect_timeout the lookup waits; at it, it times out."""
    agent = FakeAgent(hang=True)
    clock, auth = _clocked(agent, introspect_timeout=2.0)
    outcome: list[Any] = []
    auth.authenticate(handshake("session=a")).addBoth(outcome.append)
    clock.advance(1.75)
    assert outcome == []
    clock.advance(0.25)
    assert isinstance(outcome[0], Failure)
    assert outcome[0].value.reason == "introspection_timeout"
    assert agent.pending[0].called  # the request itself was cancelled


@pytest.mark.parametrize(("exception", "reason"), [
    (error.TimeoutError(), "introspection_timeout"),
    (error.DNSLookupError(), "introspection_unreachable"),
    (error.ConnectionRefusedError(), "introspection_unreachable"),
    (ResponseNeverReceived([Failure(SSL.Error())]), "introspection_unreachable"),
    (ResponseFailed([Failure(error.ConnectionLost())]), "introspection_error"),
    (ValueError("unexpected"), "introspection_error"),
], ids=["connect-timeout", "dns", "refused", "tls", "cut-short", "other"])
def test_transport_failures_are_classified(exception: Exception, reason: str) -> None:
    """A connect timeout is a timeout, no connection is unreachable, the rest errors."""
    _clock, auth = _clocked(FakeAgent(error=exception))
    outcome: list[Any] = []
    auth.authenticate(handshake("session=a")).addBoth(outcome.append)
    assert outcome[0].check(AuthenticationFailed)
    assert outcome[0].value.reason == reason


# -- configuration -------------------------------------------------------------


@pytest.mark.parametrize(("url", "problem"), [
    ("", "required when auth.cookie.mode is 'introspect'"),
    ("https://", "names no host"),
    ("https://:8443/x", "names no host"),
    ("https://idp.test:99999/x", "not a valid URL"),
    ("https://idp.test:http/x", "not a valid URL"),
    ("https://user:pw@idp.test/x", "must not hold credentials"),
    ("https://idp.test/a b", "no spaces"),
    ("https://idp.test/x#frag", "fragment"),
    ("https://idp.t\u00e9st/x", "ASCII"),
])
def test_bad_url_is_a_config_error(url: str, problem: str) -> None:
    """An introspect_url that is missing or not a usable https URL is refused."""
    settings = CookieSettings(mode="introspect", introspect_url=url)
    with pytest.raises(ConfigError) as info:
        IntrospectingCookieAuthenticator(settings, Clock())
    assert info.value.key == "auth.cookie.introspect_url"
    assert problem in info.value.problem


@pytest.mark.parametrize("content", [
    None, b"", b"not a certificate",
    b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    "key",
], ids=["missing", "empty", "text", "garbage-pem", "private-key"])
def test_bad_ca_file_is_a_config_error(
        files: CertFiles, tmp_path: Path, content: bytes | str | None) -> None:
    """An introspect_ca that cannot be read as PEM certificates is refused."""
    path = tmp_path / "ca.pem"
    if content == "key":
        path = files.key
    elif isinstance(content, bytes):
        path.write_bytes(content)
    settings = CookieSettings(mode="introspect", introspect_url="https://idp.test/",
                              introspect_ca=str(path))
    with pytest.raises(ConfigError) as info:
        IntrospectingCookieAuthenticator(settings, Clock())
    assert info.value.key == "auth.cookie.introspect_ca"


def test_ca_bundle_and_system_trust_are_accepted(
        files: CertFiles, tmp_path: Path) -> None:
    """A file of several CA certificates, or "" (the system store), is accepted."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes() + files.ca_cert.read_bytes())
    for ca_file in (str(bundle), ""):
        settings = CookieSettings(mode="introspect",
                                  introspect_url="https://idp.test/",
                                  introspect_ca=ca_file)
        auth = IntrospectingCookieAuthenticator(settings, Clock())
        assert verifyObject(IAuthenticator, auth)
        assert auth.method == "cookie"


@pytest_twisted.ensureDeferred
async def test_ca_bundle_verifies_the_endpoint(
        serve: Any, files: CertFiles, tmp_path: Path) -> None:
    """Any CA in a multi-certificate introspect_ca file can vouch for the endpoint."""
    server = await serve(files)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes() + files.ca_cert.read_bytes())
    auth = server.authenticator(introspect_ca=str(bundle))
    assert (await bounded(auth.authenticate(handshake(session("good"))))).id == "alice"


# -- the cookie stays secret ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cookie_never_reaches_a_log_event_nor_the_cache(
        serve: Any, files: CertFiles, ca: trustme.CA, tmp_path: Path) -> None:
    """Across every outcome, log events name categories only; state holds no cookie."""
    server = await serve(files)
    wrong = await serve(write_cert(ca, tmp_path / "wrong", "wrong.example"))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        auth = server.authenticator(introspect_timeout=0.5)
        await bounded(auth.authenticate(handshake(session("good"))))
        for kind in ("denied", "html", "huge", "slow", "broken"):
            await refusal(auth.authenticate(handshake(session(kind))))
        await refusal(wrong.authenticator().authenticate(handshake(session("good"))))
    finally:
        globalLogPublisher.removeObserver(events.append)
    for event in events:
        assert SECRET not in formatEvent(event)
        assert SECRET not in repr(event)
    assert not [e for e in events if "Starting factory" in formatEvent(e)]
    reasons = {e.get("reason") for e in events if e.get("log_namespace") ==
               "securews.auth"}
    assert reasons == {"rejected", "introspection_error", "introspection_timeout",
                       "introspection_unreachable"}
    assert SECRET not in repr(vars(auth))


# -- asking again while the session is open ----------------------------------------


def test_session_principal_expires_at_the_next_check_and_renews_by_asking() -> None:
    """An accepted cookie's session is good until introspect_cache seconds
    on; renewing asks the application again (the cache entry has lapsed)."""
    agent = FakeAgent()
    clock, auth = _clocked(agent, introspect_cache=30)
    clock.advance(1000)
    principal = result_of(auth.authenticate(handshake("session=a")))
    assert principal.expires_at == 1030
    assert agent.calls == 1
    clock.advance(30)
    renewed = result_of(principal.renew())
    assert agent.calls == 2
    assert (renewed.id, renewed.expires_at) == (principal.id, 1060)
    assert renewed.renew is not None
    assert "renew" not in repr(renewed)  # the closure holds the Cookie header


def test_an_unanswered_renewal_fails() -> None:
    """No answer when asked again fails the renewal (fail closed); with
    introspect_cache = 0 the check comes every second."""
    agent = FakeAgent()
    _clock, auth = _clocked(agent, introspect_cache=0)
    principal = result_of(auth.authenticate(handshake("session=a")))
    assert principal.expires_at == 1.0  # introspect_cache 0: checked every second
    agent.error = error.ConnectionRefusedError()
    with pytest.raises(AuthenticationFailed):
        result_of(principal.renew())


def test_answer_exp_earlier_than_the_next_check_is_the_expiry() -> None:
    """An exp in the application's answer before the next check ends it."""

    class ExpAgent(FakeAgent):
        def request(self, method: bytes, uri: bytes, headers: Any = None,
                    bodyProducer: Any = None) -> Deferred[Any]:
            self.calls += 1
            return succeed(FakeResponse(200, b'{"sub": "alice", "exp": 12.5}'))

    _clock, auth = _clocked(ExpAgent(), introspect_cache=30)
    assert result_of(auth.authenticate(handshake("session=a"))).expires_at == 12.5


class ExpAnswers(FakeAgent):
    """Answers {"sub": "alice", "exp": exp}, counting requests."""

    exp: float = 0.0

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Deferred[Any]:
        self.calls += 1
        body = json.dumps({"sub": "alice", "exp": self.exp}).encode()
        return succeed(FakeResponse(200, body))


def test_a_cached_answer_is_not_used_past_its_exp() -> None:
    """The cache keeps an answer no longer than the exp it carries: a new
    handshake after it asks again, and an answer whose exp has passed is
    a refusal ("expired"), not a session."""
    agent = ExpAnswers()
    agent.exp = 3.0
    clock, auth = _clocked(agent, introspect_cache=30)
    assert result_of(auth.authenticate(handshake("session=a"))).expires_at == 3.0
    clock.advance(3)
    with pytest.raises(AuthenticationFailed, match="expired"):
        result_of(auth.authenticate(handshake("session=a")))
    assert agent.calls == 2


def test_a_session_re_check_bypasses_the_cache() -> None:
    """Renewal asks the application anew, so a revocation there ends the
    session within one introspect_cache, not two."""
    agent = FakeAgent()
    clock, auth = _clocked(agent, introspect_cache=30)
    principal = result_of(auth.authenticate(handshake("session=a")))
    result_of(auth.authenticate(handshake("session=a")))  # from the cache
    assert agent.calls == 1
    clock.advance(10)
    result_of(principal.renew())
    assert agent.calls == 2
