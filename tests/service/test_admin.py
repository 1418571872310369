"""
The admin listener and its metrics: ``/metrics`` scraped over real
loopback sockets after a scripted run, ``/healthz`` and ``/readyz``
through a drain, what the listener refuses, and in memory (on a
``Clock``) the hooks that need exact time or exact failures.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from OpenSSL import SSL
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

import securews
from securews.auth.anonymous import AnonymousAuthenticator
from securews.auth.interfaces import AuthenticationFailed, Principal
from securews.auth.tickets import InMemoryTicketStore, TicketBook
from securews.ops.metrics import (
    AUTH_REASONS,
    CLOSE_CATEGORIES,
    DROP_REASONS,
    HANDSHAKE_REASONS,
    OUTCOMES,
    STATUSES,
    Metrics,
)
from securews.rules.config import ConfigError
from securews.rules.settings import AdminSettings
from securews.service._service import build_service
from securews.service.admin import Readiness, admin_service
from securews.service.listener import ListeningService
from securews.testing import make_config
from tests.support.common import CertFiles, websocket_client_tls
from tests.support.memory import (
    FixedAuthenticator,
    client_frame,
    connect,
    handshake,
    make_factory,
    request,
    status,
)

ORIGIN = "https://app.example.com"
LOOPBACK = "tcp:0:interface=127.0.0.1"
TIMEOUT = 10.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers ----------------------------------------------------------------------

def http_request(port: int, path: str, method: str = "GET",
                 host: str | None = None) -> tuple[
        int, http.client.HTTPMessage, bytes]:
    """One request to the admin listener (blocking: run it in a thread);
    ``host``: the Host header, if not the one http.client writes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        if host is None:
            conn.request(method, path)
        else:
            conn.putrequest(method, path, skip_host=True)
            if host:
                conn.putheader("Host", host)
            conn.endheaders()
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def status_line(port: int, host: str) -> bytes:
    """The first line of the answer to ``GET /healthz`` with ``Host: host``."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return sock.recv(4096).split(b"\r\n", 1)[0]


def samples(text: str) -> Samples:
    """Every sample of a text exposition, keyed by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples}


def scrape(port: int) -> Samples:
    code, headers, body = http_request(port, "/metrics")
    assert code == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return samples(body.decode("utf-8"))


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def counter_deltas(before: Samples, after: Samples) -> Samples:
    """How every securews counter (and histogram count) moved."""
    moved = {}
    for k, value in after.items():
        name = k[0]
        if name.startswith("securews_") and name.endswith(("_total", "_count")):
            delta = value - before.get(k, 0.0)
            if delta:
                moved[k] = delta
    return moved


def port_of(listening_service: Any) -> Deferred[Any]:
    """The listening port of a started listening service."""
    d: Deferred[Any] = listening_service.when_listening()
    return d


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (at most TIMEOUT seconds) for ``predicate`` to hold."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await deferLater(global_reactor, 0.02, lambda: None)


def tls_socket(certs: CertFiles, port: int) -> ssl.SSLSocket:
    context = websocket_client_tls(certs.ca_cert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


class RawSession:
    """A WebSocket client over TLS that does only what the test tells it."""

    def __init__(self, certs: CertFiles, port: int) -> None:
        self.sock = tls_socket(certs, port)
        self.buffer = b""

    def upgrade(self) -> int:
        nonce = base64.b64encode(os.urandom(16)).decode("ascii")
        self.sock.sendall(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n".encode("ascii"))
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1])

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        else:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def frame(self) -> tuple[int, bytes]:
        first, second = self._take(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._take(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._take(8))[0]
        return first & 0x0F, self._take(size)

    def until_close(self) -> tuple[list[bytes], int]:
        """
        The text messages before the server's close frame, and its code;
        pings are answered meanwhile, so that only a client that never
        reads (:meth:`wait_closed`) is a dead peer.
        """
        texts = []
        while True:
            opcode, payload = self.frame()
            if opcode == 0x8:
                return texts, struct.unpack("!H", payload[:2])[0]
            if opcode == 0x9:
                self.send(payload, opcode=0xA)
            elif opcode == 0x1:
                texts.append(payload)

    def answer_close(self, code: int) -> None:
        self.send(struct.pack("!H", code), opcode=0x8)

    def wait_closed(self) -> None:
        """Read (never answering) until the server ends TCP."""
        try:
            while self.sock.recv(65536):
                pass
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.sock.close()


@attrs.define
class Running:
    """A service from ``build_service`` on the real reactor, on loopback."""

    service: Any
    port: int
    admin_port: int

    @property
    def factory(self) -> Any:
        return self.service.factory


@pytest_twisted.async_yield_fixture
async def launch(certs: CertFiles) -> AsyncIterator[Callable[..., Any]]:
    """``await launch(**sections)``: build_service, started; stopped at teardown."""
    started: list[Any] = []

    async def start(**sections: Any) -> Running:
        sections.setdefault("origin", {"allowed": [ORIGIN]})
        server = {"listen": LOOPBACK, "shutdown_grace": 1, **sections.pop("server", {})}
        config = make_config(tls={"cert": str(certs.cert), "key": str(certs.key)},
                             server=server, admin={"listen": LOOPBACK}, **sections)
        service = build_service(config, global_reactor,
                                authenticator=AnonymousAuthenticator())
        service.startService()
        started.append(service)
        port = await port_of(service.listener)
        admin = await port_of(service.admin)
        return Running(service, port.getHost().port, admin.getHost().port)

    yield start
    for service in started:
        if service.running:
            await service.stopService()


# -- the scripted run -------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_scrape_after_scripted_run_shows_exact_counter_deltas(
    certs: CertFiles, launch: Any
) -> None:
    """Accepted, 403, 1009, 1008, ping timeout, TLS failure, dropped over the
    connect rate: exact deltas."""
    run = await launch(
        limits={"max_message_size": 1024, "max_frame_size": 1024,
                "ping_interval": 0.5, "ping_timeout": 1.0, "max_fragments": 3},
        ratelimit={"connect_burst": 6, "connect_rate": 0.01,
                   "message_burst": 3, "messages_per_second": 0.01},
    )
    before = await deferToThread(scrape, run.admin_port)
    context = websocket_client_tls(certs.ca_cert)
    url = f"wss://127.0.0.1:{run.port}/ws"

    def accepted() -> Samples:
        with ws_connect(url, ssl=context, origin=ORIGIN) as ws:  # type: ignore[arg-type]
            ws.send("hello")
            assert ws.recv(timeout=TIMEOUT) == "hello"
            return scrape(run.admin_port)

    def refused(origin: str) -> int:
        try:
            with ws_connect(url, ssl=context, origin=origin):  # type: ignore[arg-type]
                return 101
        except InvalidStatus as e:
            return int(e.response.status_code)

    def oversize() -> int:
        raw = RawSession(certs, run.port)
        try:
            assert raw.upgrade() == 101
            raw.send(b"x" * 2000)
            _, code = raw.until_close()
            raw.answer_close(code)
            raw.wait_closed()
            return code
        finally:
            raw.close()

    def flood() -> tuple[list[bytes], int]:
        raw = RawSession(certs, run.port)
        try:
            assert raw.upgrade() == 101
            for _ in range(4):
                raw.send(b"x")
            texts, code = raw.until_close()
            raw.answer_close(code)
            raw.wait_closed()
            return texts, code
        finally:
            raw.close()

    def silent() -> float:
        raw = RawSession(certs, run.port)
        try:
            assert raw.upgrade() == 101
            began = time.monotonic()
            raw.wait_closed()
            return time.monotonic() - began
        finally:
            raw.close()

    def over_the_connect_rate() -> str:
        try:
            with ws_connect(url, ssl=context, origin=ORIGIN):  # type: ignore[arg-type]
                return "101"
        except OSError as e:
            return type(e).__name__

    def plain_http() -> None:
        with socket.create_connection(("127.0.0.1", run.port), timeout=TIMEOUT) as s:
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n")
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass

    during = await deferToThread(accepted)
    assert during[key("securews_sessions_open")] == 1
    assert during[key("securews_connections_open")] == 1
    assert await deferToThread(refused, "https://evil.example") == 403
    assert await deferToThread(oversize) == 1009
    assert await deferToThread(flood) == ([b"x"] * 3, 1008)
    assert await deferToThread(silent) < TIMEOUT - 2
    await deferToThread(plain_http)
    # Closed unread at accept: a reset once the ClientHello is in, else an
    # end of file before any TLS.
    assert await deferToThread(over_the_connect_rate) in ("ConnectionResetError",
                                                          "SSLEOFError")
    await until(lambda: run.factory.connection_count == 0, "connections to end")
    after = await deferToThread(scrape, run.admin_port)

    handshakes, latency = "securews_handshakes_total", \
        "securews_handshake_duration_seconds_count"
    closes, ended = "securews_server_closes_total", "securews_session_closes_total"
    messages, octets = "securews_messages_total", "securews_message_bytes_total"
    assert counter_deltas(before, after) == {
        key(handshakes, outcome="accepted", status="101", reason="none"): 4,
        key(handshakes, outcome="refused", status="403", reason="origin"): 1,
        key(handshakes, outcome="dropped", status="0", reason="connect_rate"): 1,
        key(latency, outcome="accepted"): 4,
        key(latency, outcome="refused"): 1,
        key(closes, category="too_big"): 1,
        key(closes, category="rate_limited"): 1,
        key(closes, category="dead_peer"): 1,
        key(ended, code="1000", initiator="client"): 1,
        key(ended, code="1009", initiator="server"): 1,
        key(ended, code="1008", initiator="server"): 1,
        key(ended, code="1006", initiator="server"): 1,
        key("securews_ping_timeouts_total"): 1,
        key("securews_tls_handshake_failures_total"): 1,
        key("securews_connections_accepted_total"): 7,
        key("securews_connections_dropped_total", reason="connect_rate"): 1,
        key("securews_connections_dropped_total", reason="tls_failure"): 1,
        # The flood's fourth frame was refused from its header: no message.
        key(messages, direction="in"): 4,
        key(octets, direction="in"): len(b"hello") + 3,
        key(messages, direction="out"): 4,
        key(octets, direction="out"): len(b"hello") + 3,
    }
    assert after[key("securews_sessions_open")] == 0
    assert after[key("securews_connections_open")] == 0
    leaf = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    assert after[key("securews_tls_certificate_expiry_timestamp_seconds")] == (
        leaf.not_valid_after_utc.timestamp())
    text = (await deferToThread(http_request, run.admin_port, "/metrics"))[2]
    assert b"127.0.0.1" not in text
    assert b"evil" not in text


# -- health and readiness ---------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_readyz_is_503_while_draining_and_admin_stops_after_drain(
    certs: CertFiles, launch: Any
) -> None:
    """/readyz 200 while serving, 503 during the drain; the admin port closes last."""
    run = await launch(server={"shutdown_grace": 30}, limits={"close_timeout": 30})
    code, _, body = await deferToThread(http_request, run.admin_port, "/readyz")
    assert (code, body) == (200, b"ready\n")
    code, _, body = await deferToThread(http_request, run.admin_port, "/healthz")
    assert (code, body) == (200, b"ok\n")

    raw = await deferToThread(RawSession, certs, run.port)
    try:
        assert await deferToThread(raw.upgrade) == 101
        stopped = run.service.stopService()
        finished: list[object] = []
        stopped.addBoth(lambda result: finished.append(result) or result)
        code, _, body = await deferToThread(http_request, run.admin_port, "/readyz")
        assert (code, body) == (503, b"draining\n")
        code, _, _ = await deferToThread(http_request, run.admin_port, "/healthz")
        assert code == 200
        assert finished == []
        _, going_away = await deferToThread(raw.until_close)
        assert going_away == 1001
        await deferToThread(raw.answer_close, 1001)
        await stopped.addTimeout(TIMEOUT, global_reactor)
    finally:
        raw.close()
    with pytest.raises(ConnectionRefusedError):
        await deferToThread(http_request, run.admin_port, "/healthz")


# -- what the admin listener answers ----------------------------------------------

@pytest_twisted.async_yield_fixture
async def admin_port() -> AsyncIterator[int]:
    """An admin listener alone on loopback, over a fresh Metrics, not ready."""
    metrics = Metrics(connections=lambda: 0, sessions=lambda: 0)
    service = admin_service(AdminSettings(listen=LOOPBACK), metrics, Readiness(),
                            global_reactor)
    assert service is not None
    service.startService()
    port = await port_of(service)
    yield port.getHost().port
    await service.stopService()


@pytest.mark.parametrize(("host", "code"), [
    ("127.0.0.1", 200), ("127.0.0.1:9100", 200), ("LOCALHOST:9100", 200),
    ("[::1]:9100", 200), ("metrics.internal", 200),
    ("evil.example", 421), ("evil.example:9100", 421), ("localhost.evil.example", 421),
    ("", 400), ("[::1", 400), ("[::1]evil", 400), ("[::1]:evil.com", 400),
    ("localhost:abc", 400), ("localhost:19101 evil", 400),
    ("[fe80::1%25evil.com]", 400), ("localhost.", 421),
])
@pytest_twisted.ensureDeferred
async def test_only_hosts_naming_the_listener_are_answered(
    host: str, code: int
) -> None:
    """
    DNS rebinding: a page whose own name resolves to the admin address
    sends its name as Host, and gets 421; IP literals, localhost and
    admin.hosts are answered; no Host is 400.
    """
    metrics = Metrics(connections=lambda: 0, sessions=lambda: 0)
    service = admin_service(
        AdminSettings(listen=LOOPBACK, hosts=("metrics.internal",)), metrics,
        Readiness(), global_reactor)
    assert service is not None
    service.startService()
    try:
        port = (await port_of(service)).getHost().port
        got, _, body = await deferToThread(http_request, port, "/healthz", "GET",
                                           host)
        line = await deferToThread(status_line, port, host)
    finally:
        await service.stopService()
    assert got == code
    assert (body == b"ok\n") == (code == 200)
    if code == 421:
        assert line == b"HTTP/1.1 421 Misdirected Request"


@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_404_and_other_methods_405(admin_port: int) -> None:
    """Only GET/HEAD on the three pages; fixed bodies that echo nothing back."""
    for path in ("/", "/nope", "/metrics/x", "/metrics/", "/readyz/..", "/<b>"):
        code, _, body = await deferToThread(http_request, admin_port, path)
        assert (path, code, body) == (path, 404, b"404 Not Found\n")
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/metrics", "/healthz", "/readyz"):
            code, headers, body = await deferToThread(
                http_request, admin_port, path, method)
            assert (method, path, code) == (method, path, 405)
            assert headers["Allow"] == "GET, HEAD"
            assert body == b"405 Method Not Allowed\n"
    code, headers, body = await deferToThread(
        http_request, admin_port, "/metrics", "HEAD")
    assert (code, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0
    assert "Server" not in headers
    assert headers["Cache-Control"] == "no-store"


@pytest_twisted.ensureDeferred
async def test_readyz_is_503_before_the_public_listener_listens(
    admin_port: int
) -> None:
    """Not listening yet is not ready; /healthz is 200 regardless."""
    code, _, body = await deferToThread(http_request, admin_port, "/readyz")
    assert (code, body) == (503, b"not listening\n")
    code, _, body = await deferToThread(http_request, admin_port, "/healthz")
    assert (code, body) == (200, b"ok\n")


@pytest.mark.parametrize("listen", [
    "tcp:9100",
    "tcp:9100:interface=0.0.0.0",
    "tcp:9100:0.0.0.0",
    "tcp:9100:interface=192.0.2.10",
    "tcp:9100:interface=localhost",
    "tcp6:9100",
    r"tcp6:9100:interface=\:\:",
    r"tcp6:9100:interface=\:\:ffff\:127.0.0.1",
])
def test_admin_refuses_non_loopback_interface_unless_allowed(listen: str) -> None:
    """Every interface, a routable one or a name is ConfigError, unless allowed."""
    metrics = Metrics(connections=lambda: 0, sessions=lambda: 0, process=False)
    with pytest.raises(ConfigError) as caught:
        admin_service(AdminSettings(listen=listen), metrics, Readiness(),
                      MemoryReactor())
    assert caught.value.key == "admin.listen"
    assert "allow_non_loopback" in str(caught.value)
    allowed = AdminSettings(listen=listen, allow_non_loopback=True)
    assert admin_service(allowed, metrics, Readiness(), MemoryReactor()) is not None


@pytest.mark.parametrize("listen", [
    "tcp:9100:interface=127.0.0.1",
    "tcp:9100:interface=127.9.8.7",
    "tcp:9100:127.0.0.1",
    r"tcp6:9100:interface=\:\:1",
    "unix:/run/securews/admin.sock",
])
def test_admin_accepts_loopback_and_unix_sockets(listen: str) -> None:
    """127.0.0.0/8, ::1 (however written) and unix sockets need no opt-in."""
    metrics = Metrics(connections=lambda: 0, sessions=lambda: 0, process=False)
    service = admin_service(AdminSettings(listen=listen), metrics, Readiness(),
                            MemoryReactor())
    assert service is not None


def test_admin_refuses_tls_and_unknown_endpoints_and_is_off_when_empty() -> None:
    """ssl:/autobahn: endpoints are ConfigError under admin.listen; "" means none."""
    metrics = Metrics(connections=lambda: 0, sessions=lambda: 0, process=False)
    for listen in ("ssl:9100:interface=127.0.0.1", "autobahn:tcp\\:9100"):
        with pytest.raises(ConfigError) as caught:
            admin_service(AdminSettings(listen=listen, allow_non_loopback=True),
                          metrics, Readiness(), MemoryReactor())
        assert caught.value.key == "admin.listen"
    assert admin_service(AdminSettings(), metrics, Readiness(), MemoryReactor()) is None


def test_build_service_refuses_a_public_admin_listener(certs: CertFiles) -> None:
    """The check runs in build_service, i.e. before twistd listens anywhere."""
    config = make_config(tls={"cert": str(certs.cert), "key": str(certs.key)},
                         admin={"listen": "tcp:9100"})
    with pytest.raises(ConfigError) as caught:
        build_service(config, MemoryReactor(), authenticator=AnonymousAuthenticator())
    assert caught.value.key == "admin.listen"


def test_build_service_has_no_admin_listener_by_default(certs: CertFiles) -> None:
    """Without [admin] listen, the service has the public listener only."""
    config = make_config(tls={"cert": str(certs.cert), "key": str(certs.key)})
    service: Any = build_service(config, MemoryReactor(),
                                 authenticator=AnonymousAuthenticator())
    assert service.admin is None
    listeners = [c for c in service if isinstance(c, ListeningService)]
    assert listeners == [service.listener]


# -- hooks, in memory -------------------------------------------------------------

def exposition(factory: securews.SecureServerFactory) -> Samples:
    return samples(factory.metrics.exposition().decode("utf-8"))


def test_authenticator_reason_outside_the_fixed_set_is_other(clock: Clock) -> None:
    """An embedder's odd method and reason are counted as "other", never echoed."""
    weird = "<script>alert(1)</script> 203.0.113.7 token=abc"
    factory = make_factory(clock, FixedAuthenticator(
        AuthenticationFailed(weird, method=weird)))
    _, transport = handshake(factory)
    assert status(transport) == 401
    jwt_factory = make_factory(clock, FixedAuthenticator(
        AuthenticationFailed(weird, method="jwt")))
    handshake(jwt_factory)
    text = factory.metrics.exposition().decode("utf-8")
    got = samples(text)
    assert got[key("securews_auth_failures_total", method="other",
                   reason="other")] == 1
    assert got[key("securews_handshakes_total", outcome="refused", status="401",
                   reason="other")] == 1
    assert exposition(jwt_factory)[key("securews_auth_failures_total", method="jwt",
                                       reason="other")] == 1
    for fragment in ("<script", "alert(1)", "203.0.113.7", "token="):
        assert fragment not in text


def test_handshake_latency_runs_from_accept_to_the_answer(clock: Clock) -> None:
    """On the factory clock: 0.25 s between accept and the 403 is what is observed."""
    factory = make_factory(clock)
    proto, transport = connect(factory)
    clock.advance(0.25)
    proto.dataReceived(request(origin="https://evil.example"))
    assert status(transport) == 403
    got = exposition(factory)
    name = "securews_handshake_duration_seconds"
    assert got[key(f"{name}_count", outcome="refused")] == 1
    assert got[key(f"{name}_sum", outcome="refused")] == pytest.approx(0.25)
    assert got[key(f"{name}_bucket", outcome="refused", le="0.1")] == 0
    assert got[key(f"{name}_bucket", outcome="refused", le="0.25")] == 1


def test_handshake_timeout_is_counted_with_its_latency(clock: Clock) -> None:
    """A client silent past handshake_timeout is outcome "timeout", status 0."""
    factory = make_factory(clock, limits={"handshake_timeout": 3})
    proto, transport = connect(factory)
    clock.advance(3.5)
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionAborted()))
    got = exposition(factory)
    assert got[key("securews_handshakes_total", outcome="timeout", status="0",
                   reason="handshake_timeout")] == 1
    assert got[key("securews_handshake_duration_seconds_count",
                   outcome="timeout")] == 1


def test_tls_failure_is_an_openssl_error_before_any_request_byte(
    clock: Clock
) -> None:
    """SSL.Error with nothing decrypted counts; after request bytes it does not."""
    factory = make_factory(clock)
    proto, _ = connect(factory)
    proto.connectionLost(Failure(SSL.Error([("SSL", "", "wrong version number")])))
    late, _ = connect(factory)
    late.dataReceived(b"GET /ws HTTP/1.1\r\n")
    late.connectionLost(Failure(SSL.Error([("SSL", "", "bad record mac")])))
    plain, _ = connect(factory)
    plain.connectionLost(Failure(ConnectionAborted()))
    assert exposition(factory)[key("securews_tls_handshake_failures_total")] == 1


def test_session_close_codes_and_message_bytes_in_memory(clock: Clock) -> None:
    """Peer close 1000 is (1000, client); bytes are counted per message both ways."""
    factory = make_factory(clock, AnonymousAuthenticator())
    proto, _ = handshake(factory)
    proto.dataReceived(client_frame(b"abc"))
    proto.dataReceived(client_frame(struct.pack("!H", 1000), opcode=0x8))
    proto.connectionLost(Failure(ConnectionAborted()))
    got = exposition(factory)
    assert got[key("securews_session_closes_total", code="1000",
                   initiator="client")] == 1
    assert got[key("securews_messages_total", direction="in")] == 1
    assert got[key("securews_message_bytes_total", direction="in")] == 3
    assert got[key("securews_message_bytes_total", direction="out")] == 3


def test_ticket_store_size_is_read_at_scrape(clock: Clock) -> None:
    """The gauge follows the in-memory store; without a store there is no gauge."""
    store = InMemoryTicketStore(
        TicketBook(ttl=30, max_outstanding=5, bind_ip=True), clock)
    config = make_config(tls={"cert": "/unused/cert.pem", "key": "/unused/key.pem"},
                         auth={"methods": []})
    factory = securews.SecureServerFactory(
        config, authenticator=AnonymousAuthenticator(), ticket_store=store,
        ticket_issuer=AnonymousAuthenticator(), reactor=clock)
    assert exposition(factory)[key("securews_ticket_store_tickets")] == 0
    store.issue(Principal("alice", "cookie"), ORIGIN, "203.0.113.5")
    store.issue(Principal("bob", "cookie"), ORIGIN, "203.0.113.6")
    assert exposition(factory)[key("securews_ticket_store_tickets")] == 2
    without = make_factory(clock)
    assert key("securews_ticket_store_tickets") not in exposition(without)


# -- bounded labels ---------------------------------------------------------------

_SOURCE = Path(securews.__file__).parent


def _found(pattern: str, under: str = ".") -> set[str]:
    regex = re.compile(pattern)
    return {match for path in (_SOURCE / under).rglob("*.py")
            for match in regex.findall(path.read_text("utf-8"))}


def test_every_label_securews_emits_is_in_its_fixed_set() -> None:
    """A reason, outcome or category added to the code must join the allow-lists."""
    refusals = _found(r'Refusal\(\s*(\d{3}),\s*"(\w+)"')
    assert refusals, "the source scan found nothing"
    assert {reason for _, reason in refusals} <= HANDSHAKE_REASONS
    assert {code for code, _ in refusals} <= STATUSES
    auth = _found(r'(?:AuthenticationFailed|TicketRejected|_refuse)\(\s*"(\w+)"',
                  under="auth")
    assert auth
    assert auth <= AUTH_REASONS
    answered = _found(r'"(\w+)",\s*(\d{3})(?:, None)?\)')
    assert {"preflight", "ticket_issued"} <= {outcome for outcome, _ in answered}
    assert {outcome for outcome, _ in answered} <= OUTCOMES
    assert {code for _, code in answered} <= STATUSES
    counted = _found(r'\banswered\(\s*"(\w+)", \d+(?:, "(\w+)")?')
    assert {"accepted", "timeout"} <= {outcome for outcome, _ in counted}
    assert {outcome for outcome, _ in counted} <= OUTCOMES
    assert {reason for _, reason in counted if reason} <= HANDSHAKE_REASONS
    dropped = _found(r'DropUnread\("(\w+)"\)') | _found(r'dropped\("(\w+)"')
    assert {"connect_rate", "tls_failure", "untrusted_peer"} <= dropped
    assert dropped <= DROP_REASONS
    # A drop is also a handshake outcome, counted under its reason.
    assert dropped <= HANDSHAKE_REASONS | {"tls_failure"}
    categories = (_found(r'Close\([\w.]+,\s*"[^"]*",\s*"(\w+)"\)')
                  | _found(r'Drop\("(\w+)"\)')
                  | _found(r'count_close\("(\w+)"\)'))
    for names in _found(r"for category in \(([^)]*)\)"):
        categories |= set(re.findall(r'"(\w+)"', names))
    assert {"dead_peer", "rate_limited", "bad_utf8", "binary"} <= categories
    assert categories <= CLOSE_CATEGORIES
