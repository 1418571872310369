"""
PROXY protocol v1/v2 in front of TLS: the pure header reader, the
wrapper over StringTransport and a Clock, real loopback connections, and
the example HAProxy and nginx configurations.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from securews.auth.anonymous import AnonymousAuthenticator
from securews.testing import make_config
from securews.wire.factory import SecureServerFactory
from securews.wire.listening import listening_factory
from securews.wire.protocol import SecureServerProtocol
from securews.wire.proxy import ProxyProtocolFactory, proxied_by
from tests.support.common import CertFiles, unavailable
from tests.support.paths import CONF
from tests.support.proxyheaders import client_hello, v1, v2

ORIGIN = "https://app.example.com"

#: Seconds any socket operation in these tests may block.
WAIT = 10.0


def handshakes(factory: Any, outcome: str) -> float:
    """Connections counted with ``outcome`` and no HTTP status, any reason."""
    return sum(sample.value for family in factory.metrics.registry.collect()
               for sample in family.samples
               if sample.name == "securews_handshakes_total"
               and sample.labels.get("outcome") == outcome
               and sample.labels.get("status") == "0")


# -- building headers -----------------------------------------------------


# -- the wrapper over StringTransport ------------------------------------


class Recorder(Protocol):
    """The wrapped protocol: what it was told, and when."""

    peer: IAddress | None = None
    host: IAddress | None = None
    lost: Failure | None = None

    def __init__(self) -> None:
        self.received = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


PROXY_PEER = IPv4Address("TCP", "10.0.0.2", 40000)


def wrapper(clock: Clock, peer: IAddress = PROXY_PEER,
            timeout: float = 5.0) -> tuple[Any, Recorder, StringTransport, list[str]]:
    drops: list[str] = []
    factory = ProxyProtocolFactory(
        Factory.forProtocol(Recorder), trusted=[ipaddress.ip_network("10.0.0.0/24")],
        clock=clock, timeout=timeout,
        on_drop=lambda reason, host: drops.append(reason))
    proto = factory.buildProtocol(peer)
    assert proto is not None
    transport = StringTransport(peerAddress=peer,
                                hostAddress=IPv4Address("TCP", "10.0.0.9", 8443))
    proto.makeConnection(transport)
    return proto, proto.wrappedProtocol, transport, drops


def warnings(events: list[LogEvent]) -> list[LogEvent]:
    """Per-connection lines: none are written (see securews.ops.failures)."""
    return [e for e in events if e.get("log_namespace") == "securews.proxy"
            or e.get("event") == "connection"]


def summaries(factory: Any, events: list[LogEvent]) -> list[tuple[str, int]]:
    """The aggregate lines the failures so far produce (flushed now), after
    checking that nothing was logged per connection."""
    assert warnings(events) == []
    factory.policy.failures.stop()
    return [(e["reason"], e["count"]) for e in events
            if e.get("event") == "connection_failures"]


def test_untrusted_peer_is_dropped_before_reading(events: list[LogEvent]) -> None:
    """A peer outside trusted_proxies is aborted at connect and never reaches TLS."""
    clock = Clock()
    proto, inner, transport, drops = wrapper(
        clock, IPv4Address("TCP", "203.0.113.7", 1234))
    assert transport.disconnected
    assert drops == ["untrusted_proxy"]
    proto.dataReceived(v1("198.51.100.1") + b"GET / HTTP/1.1\r\n\r\n")
    assert inner.peer is None
    assert inner.received == b""
    assert clock.getDelayedCalls() == []
    # Counted by the caller, logged in aggregate: never a line per connection.
    assert warnings(events) == []


def test_header_then_data_reaches_the_wrapped_protocol() -> None:
    """After the header, the wrapped protocol connects and sees the client address."""
    clock = Clock()
    proto, inner, transport, drops = wrapper(clock)
    proto.dataReceived(b"PROXY TCP4 203.0.113.7 ")
    assert inner.peer is None
    proto.dataReceived(b"192.0.2.1 5555 443\r\nhello")
    proto.dataReceived(b" world")
    assert inner.peer == IPv4Address("TCP", "203.0.113.7", 5555)
    assert inner.host == IPv4Address("TCP", "192.0.2.1", 443)
    assert inner.received == b"hello world"
    assert not transport.disconnecting
    assert clock.getDelayedCalls() == []
    assert drops == []
    assert proxied_by(proto) == PROXY_PEER


def test_local_header_keeps_the_proxy_address() -> None:
    """A v2 LOCAL header (a health check) leaves the proxy as the peer."""
    proto, inner, _, _ = wrapper(Clock())
    proto.dataReceived(v2("203.0.113.7", command=0))
    assert inner.peer == PROXY_PEER
    assert inner.host == IPv4Address("TCP", "10.0.0.9", 8443)


def test_header_timeout_drops_at_the_deadline() -> None:
    """One ε before the timeout the connection is open; one ε after, aborted."""
    clock = Clock()
    proto, inner, transport, drops = wrapper(clock, timeout=5.0)
    proto.dataReceived(b"PROXY TCP4 203.0")
    clock.advance(5.0 - 0.001)
    assert not transport.disconnecting
    clock.advance(0.002)
    assert transport.disconnecting
    assert transport.disconnected
    assert drops == ["proxy_header_timeout"]
    assert inner.peer is None


def test_bad_header_drops_without_logging_it(events: list[LogEvent]) -> None:
    """Garbage is aborted, not forwarded, and its bytes are not logged."""
    clock = Clock()
    proto, inner, transport, drops = wrapper(clock)
    proto.dataReceived(b"PROXY TCP4 secret-token-in-header 1.2.3.4 1 2\r\nmore")
    proto.dataReceived(b"even more")
    assert transport.disconnected
    assert (inner.peer, inner.received) == (None, b"")
    assert drops == ["proxy_header_malformed"]
    assert clock.getDelayedCalls() == []
    assert warnings(events) == []
    assert "secret" not in repr(events)


def test_connection_lost_during_header_never_reaches_the_wrapped_protocol() -> None:
    """The wrapped protocol never connected, so it is not told of the loss."""
    clock = Clock()
    proto, inner, _, drops = wrapper(clock)
    proto.dataReceived(b"PROXY ")
    proto.connectionLost(Failure(ConnectionError()))
    assert inner.lost is None
    assert clock.getDelayedCalls() == []
    assert proto.factory.protocols == {}
    assert drops == []


def test_connection_lost_after_header_is_passed_on() -> None:
    """Once connected, the wrapped protocol hears about the loss."""
    proto, inner, _, _ = wrapper(Clock())
    proto.dataReceived(v2("2001:db8::7"))
    assert inner.peer == IPv6Address("TCP", "2001:db8::7", 56324)
    proto.connectionLost(Failure(ConnectionError()))
    assert inner.lost is not None


def test_data_is_not_forwarded_once_the_wrapped_protocol_aborted() -> None:
    """Bytes after the header are dropped if the wrapped side refused at connect."""

    class Refuses(Recorder):
        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]

    factory = ProxyProtocolFactory(
        Factory.forProtocol(Refuses), trusted=[ipaddress.ip_network("10.0.0.2/32")],
        clock=Clock(), timeout=5.0)
    proto = factory.buildProtocol(PROXY_PEER)
    assert proto is not None
    proto.makeConnection(StringTransport(peerAddress=PROXY_PEER))
    proto.dataReceived(v1("203.0.113.7") + b"GET / HTTP/1.1\r\n\r\n")
    assert proto.wrappedProtocol.received == b""


def test_proxied_by_is_none_for_direct_connections() -> None:
    """Transports that did not come through the PROXY layer are not vouched for."""
    assert proxied_by(StringTransport()) is None
    assert proxied_by(None) is None
    proto, _, _, _ = wrapper(Clock())
    assert proxied_by(proto) is None


def test_timeout_must_be_positive() -> None:
    """A zero timeout would drop every connection: refused at construction."""
    with pytest.raises(ValueError, match="timeout"):
        ProxyProtocolFactory(Factory(), trusted=[], clock=Clock(), timeout=0)


# -- listening_factory ----------------------------------------------------


def test_listening_factory_wraps_tls_only_when_asked(certs: CertFiles) -> None:
    """proxy_protocol puts the PROXY layer outside TLS; without it, nothing changes."""
    tls = {"cert": str(certs.cert), "key": str(certs.key)}
    plain = SecureServerFactory(make_config(tls=tls),
                                authenticator=AnonymousAuthenticator())
    assert isinstance(listening_factory(plain), TLSMemoryBIOFactory)
    proxied = SecureServerFactory(
        make_config(tls=tls, server={"proxy_protocol": True,
                                     "trusted_proxies": ["10.0.0.0/8"]},
                    limits={"handshake_timeout": 3.0}),
        authenticator=AnonymousAuthenticator())
    outer = listening_factory(proxied)
    assert isinstance(outer, ProxyProtocolFactory)
    assert isinstance(outer.wrappedFactory, TLSMemoryBIOFactory)
    assert outer.wrappedFactory.wrappedFactory is proxied
    assert outer.trusted == (ipaddress.ip_network("10.0.0.0/8"),)
    assert outer.timeout == 3.0


def test_listening_factory_wraps_the_plain_factory_without_tls() -> None:
    """Behind a TLS-terminating proxy the PROXY layer wraps securews directly."""
    factory = SecureServerFactory(
        make_config(tls={"enabled": False},
                    server={"proxy_protocol": True, "trusted_proxies": ["10.0.0.1"]}),
        authenticator=AnonymousAuthenticator())
    outer = listening_factory(factory)
    assert isinstance(outer, ProxyProtocolFactory)
    assert outer.wrappedFactory is factory


# -- real loopback connections -------------------------------------------


class WhoAmI(SecureServerProtocol):
    """Tells the client the address securews settled on."""

    def onSessionOpen(self) -> None:
        self.sendMessage(self.client.encode("ascii"))


class ProxiedBy(SecureServerProtocol):
    """Tells the client which proxy vouched for it, seen through TLS."""

    def onSessionOpen(self) -> None:
        proxy = proxied_by(self.transport)
        self.sendMessage(str(getattr(proxy, "host", None)).encode("ascii"))


def proxied_factory(certs: CertFiles | None, trusted: str = "127.0.0.1",
                    app: type[SecureServerProtocol] = WhoAmI,
                    **sections: Any) -> SecureServerFactory:
    server = {"proxy_protocol": True, "trusted_proxies": [trusted],
              **sections.pop("server", {})}
    tls = ({"cert": str(certs.cert), "key": str(certs.key)} if certs
           else {"enabled": False})
    config = make_config(tls=tls, server=server, origin={"allowed": [ORIGIN]},
                         **sections)
    return SecureServerFactory(config, protocol=app,
                               authenticator=AnonymousAuthenticator())


def send_in_pieces(sock: socket.socket, data: bytes, pieces: int) -> None:
    """Send ``data`` as ``pieces`` separate TCP segments."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    step = max(1, -(-len(data) // pieces))
    for start in range(0, len(data), step):
        sock.sendall(data[start:start + step])
        time.sleep(0.02)


def handshake(certs: CertFiles | None, port: int, header: bytes, pieces: int = 1,
              headers: dict[str, str] | None = None, host: str = "127.0.0.1",
              target: str = "/ws") -> tuple[socket.socket, int, str | None]:
    """
    Send ``header``, then (over TLS unless ``certs`` is None) a WebSocket
    handshake written by hand: the open socket, the status, and after a
    101 the application's first text message.

    One thread reads and writes, unlike the ``websockets`` sync client,
    whose reader thread can be inside OpenSSL (taking a TLS 1.3 session
    ticket) while the handshake request is written, which now and then
    loses the request.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    if header:
        send_in_pieces(sock, header, pieces)
    if certs is not None:
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        sock = context.wrap_socket(sock, server_hostname=host)
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13", f"Origin: {ORIGIN}",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    sock.sendall("\r\n".join([*lines, "", ""]).encode("ascii"))
    received = b""

    def read() -> None:
        nonlocal received
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError(f"closed after {received!r}")
        received += chunk

    while b"\r\n\r\n" not in received:
        read()
    head, _, received = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        return sock, status, None
    while len(received) < 2 or len(received) < 2 + received[1]:
        read()
    assert received[0] == 0x81, received
    assert received[1] < 126, received
    return sock, status, received[2:2 + received[1]].decode("ascii")


def whoami(certs: CertFiles | None, port: int, header: bytes, pieces: int = 1,
           headers: dict[str, str] | None = None) -> str:
    """The address the application saw, after ``header`` and a handshake."""
    sock, status, message = handshake(certs, port, header, pieces, headers)
    sock.close()
    assert status == 101
    assert message is not None
    return message


def status_of(certs: CertFiles, port: int, header: bytes) -> int:
    sock, status, _ = handshake(certs, port, header)
    sock.close()
    return status


def until_closed(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` raw; everything the server answers until it closes, and when."""
    began = time.monotonic()
    received = b""
    try:
        # A peer dropped at connect may see the reset in connect() itself.
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return received, time.monotonic() - began


@pytest.mark.parametrize(("header", "client"), [
    (v1("203.0.113.7"), "203.0.113.7"),
    (v1("2001:db8:0:0:0:0:0:7"), "2001:db8::7"),
    (v1("::ffff:203.0.113.8"), "203.0.113.8"),
    (v2("203.0.113.9"), "203.0.113.9"),
    (v2("2001:db8::9", tlvs=b"\x04\x00\x03abc"), "2001:db8::9"),
    (v2("203.0.113.9", command=0), "127.0.0.1"),
    (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
])
@pytest_twisted.ensureDeferred
async def test_carried_address_reaches_the_application(
    certs: CertFiles, serve: Any, header: bytes, client: str
) -> None:
    """PROXY v1/v2 then TLS then WebSocket: the app sees the carried client."""
    server = await serve(proxied_factory(certs))
    assert await deferToThread(whoami, certs, server.port_number, header) == client


@pytest_twisted.ensureDeferred
async def test_proxy_is_known_beneath_the_tls_layer(
    certs: CertFiles, serve: Any
) -> None:
    """proxied_by finds the PROXY layer under TLS: the proxy's own address."""
    server = await serve(proxied_factory(certs, app=ProxiedBy))
    seen = await deferToThread(whoami, certs, server.port_number, v1("203.0.113.7"))
    assert seen == "127.0.0.1"


@pytest_twisted.ensureDeferred
async def test_header_split_across_segments_works(certs: CertFiles, serve: Any) -> None:
    """A header (and the ClientHello after it) may arrive a few bytes at a time."""
    server = await serve(proxied_factory(certs))
    for header in (v1("203.0.113.7"), v2("2001:db8::7")):
        seen = await deferToThread(whoami, certs, server.port_number, header,
                                   len(header))
        assert seen in ("203.0.113.7", "2001:db8::7")


@pytest_twisted.ensureDeferred
async def test_carried_address_drives_the_per_client_limit(
    certs: CertFiles, serve: Any
) -> None:
    """connections_per_ip = 1 counts carried addresses, not the proxy's."""
    server = await serve(proxied_factory(
        certs, ratelimit={"connections_per_ip": 1}))
    port = server.port_number

    def run() -> list[int]:
        first, status, _ = handshake(certs, port, v2("198.51.100.1"))
        with first:
            return [status,
                    status_of(certs, port, v1("198.51.100.1")),
                    status_of(certs, port, v2("198.51.100.2")),
                    status_of(certs, port, v1("2001:db8:1::1"))]

    assert await deferToThread(run) == [101, 429, 101, 101]


@pytest_twisted.ensureDeferred
async def test_forwarded_for_is_ignored_from_an_untrusted_carried_client(
    certs: CertFiles, serve: Any
) -> None:
    """Through TLS passthrough the client writes X-Forwarded-For itself: not read."""
    server = await serve(proxied_factory(certs))
    seen = await deferToThread(whoami, certs, server.port_number, v1("203.0.113.7"),
                               1, {"X-Forwarded-For": "198.51.100.99"})
    assert seen == "203.0.113.7"


@pytest_twisted.ensureDeferred
async def test_forwarded_for_is_never_read_after_a_proxy_header(
    certs: CertFiles, serve: Any
) -> None:
    """
    A carried address inside trusted_proxies is still the client: the
    header rode inside TLS that securews terminates, so only the end
    client can have written it.
    """
    server = await serve(proxied_factory(
        certs, server={"trusted_proxies": ["127.0.0.1", "10.0.0.0/8"]}))
    seen = await deferToThread(whoami, certs, server.port_number, v1("10.1.2.3"),
                               1, {"X-Forwarded-For": "198.51.100.99"})
    assert seen == "10.1.2.3"


@pytest_twisted.ensureDeferred
async def test_untrusted_peer_gets_no_answer(
    certs: CertFiles, serve: Any, events: list[LogEvent]
) -> None:
    """A valid header from a peer outside trusted_proxies: dropped, nothing sent."""
    factory = proxied_factory(certs, trusted="10.9.9.9")
    server = await serve(factory)
    received, _ = await deferToThread(until_closed, server.port_number,
                                      v1("203.0.113.7") + client_hello())
    assert received == b""
    assert factory.connection_count == 0
    assert handshakes(factory, "dropped") == 1
    assert summaries(factory, events) == [("untrusted_proxy", 1)]


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "proxy_header_missing"),
    (b"GARBAGE-SECRET\r\n\r\n", "proxy_header_missing"),
    (b"PROXY TCP4 GARBAGE-SECRET 192.0.2.1 1 2\r\n", "proxy_header_malformed"),
    (b"PROXY " + b"x" * 200, "proxy_header_too_long"),
])
@pytest_twisted.ensureDeferred
async def test_trusted_peer_without_a_valid_header_gets_no_answer(
    certs: CertFiles, serve: Any, events: list[LogEvent], data: bytes, reason: str
) -> None:
    """A bare ClientHello, garbage or an oversized header: dropped, no TLS answer."""
    server = await serve(proxied_factory(certs))
    received, _ = await deferToThread(until_closed, server.port_number,
                                      data + client_hello())
    assert received == b""
    assert summaries(server.factory, events) == [(reason, 1)]
    assert "GARBAGE" not in repr(events)


@pytest_twisted.ensureDeferred
async def test_valid_header_gets_a_tls_answer(certs: CertFiles, serve: Any) -> None:
    """The control for the tests above: after a header, a ServerHello comes back."""
    server = await serve(proxied_factory(certs))

    def hello() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port_number),
                                      timeout=WAIT) as sock:
            sock.sendall(v1("203.0.113.7") + client_hello())
            return sock.recv(5)

    assert (await deferToThread(hello))[:1] == b"\x16"


@pytest_twisted.ensureDeferred
async def test_slow_header_is_dropped_at_the_timeout(
    certs: CertFiles, serve: Any, events: list[LogEvent]
) -> None:
    """Half a header, then silence: dropped at limits.handshake_timeout."""
    factory = proxied_factory(certs, limits={"handshake_timeout": 0.5})
    server = await serve(factory)
    received, elapsed = await deferToThread(until_closed, server.port_number,
                                            b"PROXY TCP4 203.0")
    assert received == b""
    assert 0.4 < elapsed < 5
    assert handshakes(factory, "timeout") == 1
    assert summaries(factory, events) == [("proxy_header_timeout", 1)]


@pytest_twisted.ensureDeferred
async def test_plaintext_behind_a_proxy_protocol_proxy(serve: Any) -> None:
    """TLS terminated upstream, PROXY header from the trusted proxy: served."""
    server = await serve(proxied_factory(None))
    seen = await deferToThread(whoami, None, server.port_number, v2("203.0.113.7"))
    assert seen == "203.0.113.7"


@pytest_twisted.ensureDeferred
async def test_plaintext_from_an_untrusted_peer_is_still_dropped(serve: Any) -> None:
    """With TLS off, a peer outside trusted_proxies still gets nothing."""
    server = await serve(proxied_factory(None, trusted="10.9.9.9"))
    received, _ = await deferToThread(
        until_closed, server.port_number,
        v1("203.0.113.7") + b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n")
    assert received == b""


# -- the example proxy configurations -------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        unavailable(f"{name} not installed (Debian package '{name}'; CI installs it)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rewrite(text: str, replacements: dict[str, str]) -> str:
    """The example with deployment-specific values swapped for test ones."""
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    if os.geteuid() != 0:
        text = "\n".join(line for line in text.splitlines()
                         if line.split()[:1] not in (["chroot"], ["user"], ["group"]))
    return text


def haproxy_config(tmp_path: Path, certs: CertFiles, port: int, upstream: int) -> Path:
    config = tmp_path / "haproxy.cfg"
    config.write_text(rewrite((CONF / "haproxy.cfg").read_text(), {
        "bind :::443 v4v6": f"bind 127.0.0.1:{port}",
        "server ws1 10.0.0.11:8443": f"server ws1 127.0.0.1:{upstream}",
        "    server ws2 10.0.0.12:8443\n": "",
        "ca-file @system-ca": f"ca-file {certs.ca_cert}",
        "check-sni ws.example.com": "check-sni localhost",
        "log /dev/log local0": "log stderr format raw local0",
        # Two descriptors a connection: more than a test machine may allow.
        "maxconn 20000": "maxconn 1000",
    }))
    return config


def nginx_config(tmp_path: Path, certs: CertFiles, port: int, upstream: int) -> Path:
    config = tmp_path / "nginx.conf"
    config.write_text(rewrite((CONF / "nginx.conf").read_text(), {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "        listen [::]:443 ssl;\n": "",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream};",
        "/etc/nginx/tls/ws.example.com/fullchain.pem": str(certs.chain),
        "/etc/nginx/tls/ws.example.com/privkey.pem": str(certs.key),
        "/var/log/nginx/": f"{tmp_path}/",
        "/run/nginx.pid": f"{tmp_path}/nginx.pid",
    }))
    return config


def check(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_haproxy_example_is_valid() -> None:
    """conf/haproxy.cfg passes haproxy -c as shipped."""
    check(tool("haproxy"), "-c", "-f", str(CONF / "haproxy.cfg"))


def test_nginx_example_is_valid(tmp_path: Path, certs: CertFiles) -> None:
    """conf/nginx.conf passes nginx -t with its certificate and log paths filled in."""
    config = nginx_config(tmp_path, certs, 443, 8080)
    check(tool("nginx"), "-t", "-q", "-e", "stderr", "-p", str(tmp_path),
          "-c", str(config))


def test_examples_keep_their_promises() -> None:
    """Passthrough with PROXY v2; X-Forwarded-For replaced; no query string logged."""
    haproxy = (CONF / "haproxy.cfg").read_text()
    assert "mode tcp" in haproxy
    assert "send-proxy-v2" in haproxy
    assert "mode http" not in haproxy
    nginx = (CONF / "nginx.conf").read_text()
    directives = [line.split("#")[0].strip() for line in nginx.splitlines()]
    assert directives.count("proxy_set_header X-Forwarded-For $remote_addr;") == 2
    logged = " ".join(d for d in directives if d)
    for leak in ("$request ", "$request\"", "$request_uri", "$args", "$query_string",
                 "$arg_", "$http_referer", " combined"):
        assert leak not in logged, leak
    assert "proxy_read_timeout 60s;" in directives


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test, stopped (and reaped) afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)


def start(running: list[subprocess.Popen[bytes]], log: Path, *command: str
          ) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    running.append(proc)
    return proc


def retry(attempt: Any, proc: subprocess.Popen[bytes], log: Path) -> Any:
    """Run ``attempt`` until the proxy in front of it has started (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return attempt()
        except (ConnectionRefusedError, ConnectionResetError):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


@pytest_twisted.ensureDeferred
async def test_haproxy_example_passes_clients_through(
    certs: CertFiles, serve: Any, tmp_path: Path, events: list[LogEvent],
    running: list[subprocess.Popen[bytes]],
) -> None:
    """Through conf/haproxy.cfg: securews's own TLS, HAProxy's PROXY v2 accepted."""
    haproxy = tool("haproxy")
    server = await serve(proxied_factory(certs))
    port = free_port()
    config = haproxy_config(tmp_path, certs, port, server.port_number)
    log = tmp_path / "haproxy.log"
    proc = start(running, log, haproxy, "-db", "-f", str(config))

    def attempt() -> str | None:
        sock, status, message = handshake(certs, port, b"", host="localhost")
        sock.close()
        assert status == 101
        return message

    seen = await deferToThread(retry, attempt, proc, log)
    assert seen == "127.0.0.1"
    assert warnings(events) == [], log.read_text()


@pytest_twisted.ensureDeferred
async def test_nginx_example_terminates_tls_and_hides_queries(
    certs: CertFiles, serve: Any, tmp_path: Path,
    running: list[subprocess.Popen[bytes]],
) -> None:
    """Through conf/nginx.conf: X-Forwarded-For replaced, no query string logged."""
    nginx = tool("nginx")
    factory = SecureServerFactory(
        make_config(tls={"enabled": False},
                    server={"trusted_proxies": ["127.0.0.1"]},
                    origin={"allowed": [ORIGIN]}),
        protocol=WhoAmI, authenticator=AnonymousAuthenticator())
    server = await serve(factory)
    port = free_port()
    config = nginx_config(tmp_path, certs, port, server.port_number)
    log = tmp_path / "nginx.log"
    proc = start(running, log, nginx, "-e", "stderr", "-p", str(tmp_path), "-c",
                 str(config), "-g", "daemon off;")

    def attempt() -> str | None:
        sock, status, message = handshake(
            certs, port, b"", host="localhost", target="/ws?ticket=QUERY-SECRET",
            headers={"X-Forwarded-For": "198.51.100.66"})
        sock.close()
        assert status == 101
        return message

    seen = await deferToThread(retry, attempt, proc, log)
    assert seen == "127.0.0.1"
    access = tmp_path / "securews-access.log"

    def logged() -> str:
        """nginx writes the line once the WebSocket connection has ended."""
        deadline = time.monotonic() + WAIT
        while '" 101 ' not in access.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        return access.read_text()

    assert '"GET /ws HTTP/1.1" 101 ' in await deferToThread(logged)
    for path in tmp_path.glob("*.log"):
        assert "QUERY-SECRET" not in path.read_text(), path


def test_a_lost_proxied_connection_is_freed_without_the_cyclic_collector() -> None:
    """The wrapper lets go of its protocol once it has passed the loss on
    (as Twisted's ProtocolWrapper does): the two do not wait for the
    cyclic garbage collector."""
    import gc
    import weakref

    clock = Clock()
    gc.collect()
    gc.disable()
    try:
        proto, inner, transport, _drops = wrapper(clock)
        proto.dataReceived(b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 443\r\nhello")
        proto.connectionLost(connectionDone)
        assert inner.lost is connectionDone
        refs = [weakref.ref(proto), weakref.ref(inner)]
        del proto, inner, transport
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()
