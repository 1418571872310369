"""
Handshake behaviour over real TLS on loopback, with clients of other
implementations: the ``websockets`` library and raw ``ssl`` sockets.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from securews.auth.anonymous import AnonymousAuthenticator
from securews.testing import make_config
from securews.wire.factory import SecureServerFactory
from tests.support.common import CertFiles, websocket_client_tls

ORIGIN = "https://app.example.com"


def factory_for(certs: CertFiles, **sections: Any) -> SecureServerFactory:
    sections.setdefault("origin", {"allowed": [ORIGIN]})
    config = make_config(tls={"cert": str(certs.cert), "key": str(certs.key)},
                         **sections)
    return SecureServerFactory(config, authenticator=AnonymousAuthenticator())


def tls_socket(certs: CertFiles, port: int) -> ssl.SSLSocket:
    context = websocket_client_tls(certs.ca_cert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def read_until_closed(sock: ssl.SSLSocket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes TCP; and how long it took."""
    began = time.monotonic()
    received = b""
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ssl.SSLError, ConnectionResetError):
        pass
    return received, time.monotonic() - began


@pytest_twisted.ensureDeferred
async def test_websockets_client_from_foreign_origin_gets_403(
    certs: CertFiles, serve: Any
) -> None:
    """A browser-like client from another site is refused before the upgrade."""
    server = await serve(factory_for(certs))
    context = websocket_client_tls(certs.ca_cert)

    def attempt(origin: str) -> int:
        try:
            with connect(server.url(), ssl=context, origin=origin):  # type: ignore[arg-type]
                return 101
        except InvalidStatus as e:
            return int(e.response.status_code)

    assert await deferToThread(attempt, "https://evil.example") == 403
    assert await deferToThread(attempt, ORIGIN) == 101


@pytest_twisted.ensureDeferred
async def test_raw_requests_get_documented_statuses(
    certs: CertFiles, serve: Any
) -> None:
    """404, 405, 426 and 431 over real TLS, each then closed by the server."""
    server = await serve(factory_for(certs, limits={"max_header_bytes": 2048}))
    requests = {
        404: b"GET /nope HTTP/1.1\r\nHost: h\r\n\r\n",
        405: b"POST /ws HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        426: b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n",
        431: b"GET /ws HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 4000 + b"\r\n\r\n",
    }

    def send(data: bytes) -> bytes:
        with tls_socket(certs, server.port_number) as sock:
            sock.sendall(data)
            return read_until_closed(sock, 10)[0]

    for code, data in requests.items():
        response = await deferToThread(send, data)
        assert response.split(b"\r\n", 1)[0].split(b" ")[1] == str(code).encode()


@pytest_twisted.ensureDeferred
async def test_peer_that_never_closes_tls_is_dropped(
    certs: CertFiles, serve: Any
) -> None:
    """After a refusal, a client that keeps TLS open loses TCP at close_timeout."""
    factory = factory_for(certs, limits={"close_timeout": 0.5},
                          server={"max_connections": 1})
    server = await serve(factory)

    def linger() -> tuple[bytes, float]:
        """Read the refusal, keep talking, never send close_notify."""
        sock = tls_socket(certs, server.port_number)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                     b"Origin: https://evil.example\r\n\r\n")
        response = sock.recv(4096)
        began = time.monotonic()
        for _ in range(20):
            try:
                sock.sendall(b"x" * 1024)
            except OSError:
                break
            time.sleep(0.05)
        read_until_closed(sock, 10)
        sock.close()
        return response, time.monotonic() - began

    response, elapsed = await deferToThread(linger)
    assert response.startswith(b"HTTP/1.1 403 ")
    assert elapsed < 5
    assert factory.connection_count == 0
    assert len(factory.policy.capacity) == 0


@pytest_twisted.ensureDeferred
async def test_second_connection_from_one_client_gets_429(
    certs: CertFiles, serve: Any
) -> None:
    """Per-client limits over real sockets: 429 with Retry-After, then 101
    again; past connect_burst, the connection is dropped before TLS."""
    server = await serve(factory_for(
        certs, ratelimit={"connections_per_ip": 1, "connect_burst": 3,
                          "connect_rate": 0.01}))
    context = websocket_client_tls(certs.ca_cert)

    def run() -> list[object]:
        seen: list[object] = []
        with connect(server.url(), ssl=context, origin=ORIGIN):  # type: ignore[arg-type]
            try:
                connect(server.url(), ssl=context, origin=ORIGIN)  # type: ignore[arg-type]
            except InvalidStatus as e:
                seen += [e.response.status_code, e.response.headers["Retry-After"]]
        with connect(server.url(), ssl=context, origin=ORIGIN):  # type: ignore[arg-type]
            seen.append(101)
        try:
            connect(server.url(), ssl=context, origin=ORIGIN)  # type: ignore[arg-type]
        except (ConnectionError, ssl.SSLError) as e:
            # Past connect_burst: dropped as it was accepted, before TLS.
            seen.append(type(e).__name__)
        return seen

    seen = await deferToThread(run)
    assert seen[:3] == [429, "1", 101]
    # The socket was closed unread: a reset if the ClientHello was in
    # already, else an end of file before any TLS.
    assert seen[3:] in (["ConnectionResetError"], ["SSLEOFError"])
