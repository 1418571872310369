"""
Driving the real securews protocol in memory: a factory on a
``task.Clock``, ``StringTransport`` connections, request and frame
builders.  Shared by the in-memory test modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import txaio
from hypothesis import HealthCheck, settings
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from securews.auth.interfaces import Principal
from securews.rules.peer import network_key
from securews.testing import (
    FixedAuthenticator,
    Frame,
    HTTPResponse,
    client_frame,
    make_config,
    read_frames,
    read_response,
)
from securews.testing import MemoryTransport as Transport
from securews.wire.factory import SecureServerFactory
from securews.wire.protocol import SecureServerProtocol

#: securews.testing's builders, under the names the tests use.
frame_bytes = client_frame
ServerFrame = Frame
read_server_frames = read_frames
__all__ = ["FixedAuthenticator", "HTTPResponse", "ServerFrame", "Transport",
           "client_frame", "frame_bytes", "read_response", "read_server_frames"]

TLS = {"cert": "/unused/cert.pem", "key": "/unused/key.pem"}
ORIGIN = "https://app.example.com"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SECRET = "s3cr3t-token-value-0123456789"
#: Where :func:`connect` connects from by default.
PEER = "203.0.113.7"


class Recorder(SecureServerProtocol):
    """Records the application hooks."""

    subprotocols = ("chat.v2", "chat.v1")

    def onSessionOpen(self) -> None:
        self.factory.calls.append(("open", self.principal))

    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.calls.append(("message", payload, isBinary))
        self.sendMessage(payload, isBinary)

    def onSessionClose(self, wasClean: bool, code: int | None,
                       reason: str | None) -> None:
        self.factory.calls.append(("close", code))


def make_factory(clock: Clock, authenticator: Any = None, *, dev: bool = False,
                 ticket_store: Any = None, ticket_issuer: Any = None,
                 **sections: dict[str, object]) -> SecureServerFactory:
    sections.setdefault("tls", TLS)
    sections.setdefault("origin", {"allowed": [ORIGIN]})
    if not dev:
        sections.setdefault("auth", {"methods": []})
    factory = SecureServerFactory(make_config(dev=dev, **sections), protocol=Recorder,
                                  authenticator=authenticator,
                                  ticket_store=ticket_store,
                                  ticket_issuer=ticket_issuer, reactor=clock)
    factory.calls = []
    return factory


def connect(factory: SecureServerFactory,
            peer: str = PEER) -> tuple[Any, StringTransport]:
    """
    A connection from ``peer``.  A connection the factory drops at accept
    gets no protocol (``None``), and its transport is closed unread, as
    Twisted closes the socket.
    """
    kind = IPv6Address if ":" in peer else IPv4Address
    address = kind("TCP", peer, 40000)
    transport = Transport(peerAddress=address)
    proto = factory.buildProtocol(address)
    if proto is None:
        transport.abortConnection()
        return None, transport
    proto.makeConnection(transport)
    return proto, transport


def request(path: str = "/ws", *, method: str = "GET", origin: str | None = ORIGIN,
            upgrade: bool = True, version: str = "HTTP/1.1",
            extra: tuple[str, ...] = ()) -> bytes:
    lines = [f"{method} {path} {version}", "Host: ws.example.com"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade",
                  f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def status(transport: StringTransport) -> int:
    line = transport.value().split(b"\r\n", 1)[0]
    return int(line.split(b" ")[1])


def handshake(factory: SecureServerFactory, **kw: Any) -> tuple[Any, StringTransport]:
    proto, transport = connect(factory)
    if proto is not None:
        proto.dataReceived(request(**kw))
    return proto, transport


def metric(factory: SecureServerFactory, name: str, **labels: str) -> float:
    """A sample of the factory's metrics (0 when never counted)."""
    value = factory.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def result_of(d: Deferred[Any]) -> Any:
    """The result of an already-fired Deferred; its failure is raised."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


# -- fuzzing helpers -------------------------------------------------------------
# Used by the hypothesis tests, which cannot take function-scoped fixtures:
# each example gets its own Clock and log capture.

#: The fuzzers' settings: examples run in memory on a Clock, so no deadline.
FUZZ = settings(max_examples=150, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])
#: Whom the fuzzers' :class:`FixedAuthenticator` admits.
ALICE = Principal("alice", "fixed")


@contextmanager
def txaio_clock() -> Iterator[Clock]:
    """A fresh Clock that Autobahn's timers (txaio's loop) run on meanwhile."""
    clock = Clock()
    saved = txaio.config.loop
    txaio.config.loop = clock
    try:
        yield clock
    finally:
        txaio.config.loop = saved


@contextmanager
def captured_events() -> Iterator[list[LogEvent]]:
    """Every log event emitted inside the block."""
    captured: list[LogEvent] = []
    globalLogPublisher.addObserver(captured.append)
    try:
        yield captured
    finally:
        globalLogPublisher.removeObserver(captured.append)


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (out-of-range ones ignored), as the
    successive reads a TCP peer could cause; never an empty piece."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)],
                                      strict=True) if b > a]


def segment(data: bytes, cuts: list[int], dribble: int) -> list[bytes]:
    """``data`` as a TCP peer could deliver it: cut at ``cuts``, or
    (``dribble`` > 0) that many bytes at a time."""
    if dribble:
        return split_at(data, range(dribble, len(data), dribble))
    return split_at(data, cuts)


def assert_clean_log(events: list[LogEvent], marker: str) -> None:
    """No error, no traceback, and nothing the client wrote (``marker``)."""
    for logged in events:
        assert logged.get("log_level") not in (LogLevel.error, LogLevel.critical), \
            formatEvent(logged)
        assert "log_failure" not in logged, formatEvent(logged)
        text = formatEvent(logged) + repr(
            {k: v for k, v in logged.items() if k not in ("log_source", "log_logger")})
        assert marker not in text, text


def assert_released(factory: SecureServerFactory, clock: Clock) -> None:
    """The connection from :data:`PEER` gave back its connection, session
    and per-client places, and left no timer running."""
    key = network_key(PEER, 64)
    assert factory.connection_count == 0
    policy = factory.policy
    assert len(policy.capacity) == 0
    assert policy.open_sessions == 0
    assert result_of(policy.per_client.count(key)) == 0
    # The failure log's one timer summarises a window; it is not the
    # connection's.
    assert [c for c in clock.getDelayedCalls()
            if c.active() and c is not factory.policy.failures.timer] == []


