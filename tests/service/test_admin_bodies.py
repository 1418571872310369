"""
The admin listener bounds request bodies as they arrive: twisted.web
would otherwise read any body whole (to a temporary file past 100 kB)
before a resource, and its token check, ever saw it.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.threads import deferToThread

from securews.ops.metrics import Metrics
from securews.rules.settings import AdminSettings
from securews.service.admin import Readiness, admin_service
from securews.service.admin_actions import MAX_BODY, RevokeResource

TOKEN = b"an-admin-token-of-enough-length"
HEAD = (b"POST /revoke HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n")


@pytest_twisted.async_yield_fixture
async def port() -> AsyncIterator[int]:
    """An admin listener with POST /revoke; its policy is never reached
    (no request below is authorised)."""
    metrics = Metrics(connections=lambda: 0, sessions=lambda: 0)
    service = admin_service(AdminSettings(listen="tcp:0:interface=127.0.0.1"),
                            metrics, Readiness(), global_reactor,
                            {b"revoke": RevokeResource(object(), TOKEN)})  # type: ignore[arg-type]
    assert service is not None
    service.startService()
    listening = await service.when_listening()  # type: ignore[attr-defined]
    yield listening.getHost().port
    await service.stopService()


def exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` (and ``body``), then read everything until the server
    closes (or 3 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(head + body)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
        return answer


@pytest_twisted.ensureDeferred
async def test_an_announced_body_over_the_bound_is_413_before_it_is_sent(
    port: int
) -> None:
    answer = await deferToThread(
        exchange, port, HEAD + b"Content-Length: %d\r\n\r\n" % (1 << 30))
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert answer.endswith(b'{"error": "body too large"}\r\n')


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_413_once_it_passes_the_bound(port: int) -> None:
    chunk = b"x" * 1024
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk)
                    for _ in range(MAX_BODY // len(chunk) + 1))
    answer = await deferToThread(
        exchange, port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer


@pytest_twisted.ensureDeferred
async def test_a_sender_of_a_large_body_reads_the_answer_not_a_reset(port: int) -> None:
    """The 413 comes at once; the client goes on sending 512 KiB it had
    queued and still reads the answer."""
    answer = await deferToThread(
        exchange, port, HEAD + b"Content-Length: %d\r\n\r\n" % (1 << 20),
        b"x" * (512 << 10))
    assert answer.startswith(b"HTTP/1.1 413 "), answer


@pytest_twisted.ensureDeferred
async def test_a_body_within_the_bound_reaches_the_endpoint(port: int) -> None:
    body = b" " * (MAX_BODY - 2) + b"{}"
    head = HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = await deferToThread(exchange, port, head, body)
    assert answer.startswith(b"HTTP/1.1 401 "), answer
