"""
Driving the real securews protocol in memory: a factory on a
``task.Clock``, ``StringTransport`` connections, request and frame
builders.  Shared by the in-memory test modules.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import txaio
from hypothesis import HealthCheck, settings
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from securews.auth.interfaces import HandshakeRequest, IAuthenticator, Principal
from securews.rules.peer import network_key
from securews.testing import make_config
from securews.wire.factory import SecureServerFactory
from securews.wire.protocol import SecureServerProtocol

TLS = {"cert": "/unused/cert.pem", "key": "/unused/key.pem"}
ORIGIN = "https://app.example.com"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SECRET = "s3cr3t-token-value-0123456789"
#: Where :func:`connect` connects from by default.
PEER = "203.0.113.7"


@implementer(IAuthenticator)
class FixedAuthenticator:
    """Answers every handshake with a preset result."""

    method = "fixed"

    def __init__(self, result: Any) -> None:
        self.result = result
        self.requests: list[HandshakeRequest] = []

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        self.requests.append(request)
        if isinstance(self.result, Deferred):
            return self.result
        if isinstance(self.result, Exception):
            return fail(self.result)
        return succeed(self.result)


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
                 **sections: dict[str, object]) -> SecureServerFactory:
    sections.setdefault("tls", TLS)
    sections.setdefault("origin", {"allowed": [ORIGIN]})
    if not dev:
        sections.setdefault("auth", {"methods": []})
    factory = SecureServerFactory(make_config(dev=dev, **sections), protocol=Recorder,
                                  authenticator=authenticator, reactor=clock)
    factory.calls = []
    return factory


class Transport(StringTransport):
    """
    StringTransport that, like Twisted's TCP and TLS transports, accepts
    unregisterProducer() with no producer (Autobahn calls it on every drop).
    """

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


def connect(factory: SecureServerFactory,
            peer: str = PEER) -> tuple[SecureServerProtocol, StringTransport]:
    kind = IPv6Address if ":" in peer else IPv4Address
    address = kind("TCP", peer, 40000)
    proto = factory.buildProtocol(address)
    transport = Transport(peerAddress=address)
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


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked, final client frame (all-zero mask, so payload is plain)."""
    assert len(payload) < 126
    header = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    return header + b"\0\0\0\0" + payload


def handshake(factory: SecureServerFactory, **kw: Any) -> tuple[Any, StringTransport]:
    proto, transport = connect(factory)
    proto.dataReceived(request(**kw))
    return proto, transport


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
    assert factory.admitted == 0
    assert factory.open_sessions == 0
    assert factory.per_client.count(key) == 0
    # The failure log's one timer summarises a window; it is not the
    # connection's.
    assert [c for c in clock.getDelayedCalls()
            if c.active() and c is not factory.failures.timer] == []


def frame_bytes(payload: bytes, opcode: int = 0x1, *, fin: bool = True,
                rsv: int = 0, mask: bytes | None = b"\0\0\0\0",
                length_form: int | None = None,
                declared: int | None = None) -> bytes:
    """
    Any client frame, well-formed or not.

    :param mask: the masking key; ``None`` sends the frame unmasked.
    :param length_form: 7, 16 or 64 (bits of the length field); by default
        the minimal one for the declared length.
    :param declared: the length written in the header; by default the
        payload's (a different one makes a frame that lies).
    """
    n = len(payload) if declared is None else declared
    if length_form is None:
        length_form = 7 if n < 126 else 16 if n < 65536 else 64
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)
    bit = 0x80 if mask is not None else 0
    if length_form == 7:
        header = struct.pack("!BB", first, bit | (n & 0x7F))
    elif length_form == 16:
        header = struct.pack("!BBH", first, bit | 126, n & 0xFFFF)
    else:
        header = struct.pack("!BBQ", first, bit | 127, n & 0xFFFFFFFFFFFFFFFF)
    if mask is None:
        return header + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


@attrs.frozen
class ServerFrame:
    """One frame the server wrote (server frames are never masked)."""

    fin: bool
    rsv: int
    opcode: int
    payload: bytes


def read_server_frames(data: bytes) -> tuple[list[ServerFrame], bytes]:
    """
    Split what the server wrote after its 101 into frames.

    :returns: the frames and whatever bytes do not make a whole frame
        (for a well-behaved server: nothing).
    """
    frames = []
    i = 0
    while i + 2 <= len(data):
        first, second = data[i], data[i + 1]
        n, j = second & 0x7F, i + 2
        if second & 0x80:
            break
        if n == 126:
            if j + 2 > len(data):
                break
            n, j = struct.unpack("!H", data[j:j + 2])[0], j + 2
        elif n == 127:
            if j + 8 > len(data):
                break
            n, j = struct.unpack("!Q", data[j:j + 8])[0], j + 8
        if j + n > len(data):
            break
        frames.append(ServerFrame(bool(first & 0x80), (first >> 4) & 7,
                                  first & 0xF, data[j:j + n]))
        i = j + n
    return frames, data[i:]


@attrs.frozen
class HTTPResponse:
    """An HTTP response at the start of what the server wrote."""

    status: int
    status_line: bytes
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def read_response(data: bytes) -> tuple[HTTPResponse, bytes] | None:
    """
    The HTTP response the server wrote first and the bytes after it (for a
    101: the frames), or ``None`` if there is no complete head.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("ascii").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = tuple((n, v.strip()) for n, _, v in
                    (line.partition(":") for line in lines[1:]))
    rest = data[end + 4:]
    length = [int(v) for n, v in headers if n.lower() == "content-length"]
    body = rest[:length[0]] if length else b""
    return (HTTPResponse(status, lines[0].encode("ascii"), headers, body),
            rest[len(body):])
