"""
Test a securews application in memory, as ``treq.testing`` tests HTTP
clients: the real protocol, policy and limits, over a ``StringTransport``
on a ``task.Clock``, with no socket, no TLS and no reactor.

::

    from securews.testing import MemorySession

    def test_echo():
        session = MemorySession.open(
            EchoApp, limits={"ping_interval": 5, "ping_timeout": 2})
        session.send("hello")
        assert session.received() == ["hello"]
        session.clock.advance(5)        # a ping...
        session.clock.advance(2)        # ... left unanswered for ping_timeout
        assert session.disconnected

Everything here is public API for embedders' own test suites, and is what
securews's own tests use.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, cast

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from securews.auth.interfaces import HandshakeRequest, IAuthenticator, Principal
from securews.policy import Policy, build_policy
from securews.rules.config import Config, from_mapping
from securews.wire.factory import SecureServerFactory
from securews.wire.protocol import SecureServerProtocol

__all__ = [
    "ORIGIN",
    "FixedAuthenticator",
    "Frame",
    "HTTPResponse",
    "MemorySession",
    "MemoryTransport",
    "client_frame",
    "make_config",
    "memory_policy",
    "read_frames",
    "read_response",
    "upgrade_request",
]

#: The Origin of the page :class:`MemorySession` connects from (allowed
#: by the configurations built here).
ORIGIN = "https://app.example"
#: Placeholder TLS settings: in memory no TLS context is ever built.
_NO_TLS = {"cert": "/in-memory/cert.pem", "key": "/in-memory/key.pem"}
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def make_config(*, dev: bool = False,
                **sections: Mapping[str, object]) -> Config:
    """
    Build a checked :class:`~securews.rules.config.Config` from keyword
    sections, e.g. ``make_config(tls={"cert": c, "key": k},
    origin={"allowed": ["https://app.example.com"]})``.

    The same validation as a TOML file applies.  With ``dev=True`` and no
    ``auth`` section, authentication is anonymous, as under ``--dev``.
    """
    if dev and "auth" not in sections:
        sections = {**sections, "auth": {"methods": ["anonymous"]}}
    return from_mapping(sections, source="make_config()", dev=dev)


@implementer(IAuthenticator)
class FixedAuthenticator:
    """
    Answers every handshake with a preset result: a
    :class:`~securews.auth.interfaces.Principal` (admitted), ``None`` (no
    credential: 401), an exception (raised: an
    :class:`~securews.auth.interfaces.AuthenticationFailed` is 401, others
    500) or a Deferred (answered when you fire it).

    :ivar requests: every :class:`HandshakeRequest` it was asked about.
    """

    method = "fixed"

    def __init__(self, result: Principal | BaseException | Deferred[Any] | None
                 ) -> None:
        self.result = result
        self.requests: list[HandshakeRequest] = []
        self._waiting: list[Deferred[Principal | None]] = []
        self._outcome: Any = _PENDING
        if isinstance(result, Deferred):
            result.addBoth(self._settle)

    def _settle(self, outcome: Any) -> None:
        """The preset Deferred fired: so do the requests waiting on it (a
        Deferred has one consumer, so each request has its own)."""
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            _fire(d, outcome)

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        self.requests.append(request)
        if isinstance(self.result, Deferred):
            own: Deferred[Principal | None] = Deferred()
            if self._outcome is _PENDING:
                self._waiting.append(own)
            else:
                _fire(own, self._outcome)
            return own
        if isinstance(self.result, BaseException):
            return fail(self.result)
        return succeed(self.result)


_PENDING = object()


def _fire(d: Deferred[Any], outcome: Any) -> None:
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


def _config(sections: dict[str, Mapping[str, object]]) -> Config:
    sections.setdefault("tls", _NO_TLS)
    sections.setdefault("origin", {"allowed": [ORIGIN]})
    return from_mapping(sections, source="memory_policy()")


def memory_policy(config: Config | None = None, *, clock: Clock | None = None,
                  authenticator: IAuthenticator | None = None,
                  **sections: Mapping[str, object]) -> Policy:
    """
    A :class:`~securews.policy.Policy` on a ``task.Clock`` (``policy.clock``):
    by default, placeholder TLS settings, :data:`ORIGIN` allowed and
    everyone admitted as principal ``"test"``.
    """
    if config is None:
        config = _config(sections)
    elif sections:
        raise TypeError("pass either a Config or settings sections, not both")
    if authenticator is None:
        authenticator = FixedAuthenticator(Principal("test", "fixed"))
    return build_policy(config, Clock() if clock is None else clock,
                        authenticator=authenticator)


def upgrade_request(path: str = "/ws", *, origin: str | None = ORIGIN,
                    headers: Sequence[str] = (), host: str = "ws.example") -> bytes:
    """A WebSocket upgrade request head, with ``headers`` (``"Name: value"``)
    added."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {_KEY}",
             "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += headers
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def client_frame(payload: bytes, opcode: int = 0x1, *, fin: bool = True,
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
class Frame:
    """One frame the server wrote (server frames are never masked)."""

    fin: bool
    rsv: int
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        """A close frame's status code, if it has one."""
        if self.opcode != 0x8 or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


def read_frames(data: bytes) -> tuple[list[Frame], bytes]:
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
        frames.append(Frame(bool(first & 0x80), (first >> 4) & 7,
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
        """Every value of header ``name`` (case-insensitive)."""
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


class MemoryTransport(StringTransport):
    """
    ``StringTransport`` that, like Twisted's TCP and TLS transports, accepts
    ``unregisterProducer()`` with no producer (Autobahn calls it on every
    drop).
    """

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class MemorySession:
    """
    A client connected to a securews application in memory.

    Open one with :meth:`open`; then :meth:`send` messages, read what the
    server sent with :meth:`received` and :meth:`frames`, and move time with
    ``clock.advance(seconds)`` (heartbeats, idle and lifetime limits,
    credential expiry all run on it).

    :ivar factory: the server's factory (``factory.policy``: its policy,
        metrics included).
    :ivar protocol: the application's protocol instance, or ``None`` when
        the connection was dropped at accept.
    :ivar transport: what the server wrote (``transport.value()``).
    :ivar response: the server's answer to the upgrade request, once there
        is a complete one.
    """

    def __init__(self, factory: SecureServerFactory, peer: str = "203.0.113.7"
                 ) -> None:
        kind = IPv6Address if ":" in peer else IPv4Address
        address = kind("TCP", peer, 40000)
        self.factory = factory
        self.transport: Any = cast(Any, MemoryTransport)(peerAddress=address)
        proto = factory.buildProtocol(address)
        self.protocol: Any = proto
        self.response: HTTPResponse | None = None
        self._read = 0
        if proto is None:
            self.transport.abortConnection()
        else:
            cast(Any, proto).makeConnection(self.transport)

    @classmethod
    def open(cls, app: type[SecureServerProtocol], *,
             principal: Principal | None = None, peer: str = "203.0.113.7",
             request: bytes | None = None, policy: Policy | None = None,
             **sections: Mapping[str, object]) -> MemorySession:
        """
        Connect to ``app`` and send an upgrade request.

        :param principal: whom the handshake authenticates as (by default
            ``Principal("test", "fixed")``); ignored with ``policy``.
        :param request: the request head to send (:func:`upgrade_request`
            by default).
        :param policy: the server's policy (:func:`memory_policy` by
            default, built from ``sections``).
        """
        if policy is None:
            authenticator = FixedAuthenticator(
                principal if principal is not None else Principal("test", "fixed"))
            policy = memory_policy(_config(sections), authenticator=authenticator)
        elif sections:
            raise TypeError("pass either a policy or settings sections, not both")
        session = cls(SecureServerFactory(policy=policy, protocol=app,
                                          reactor=policy.clock), peer)
        session.write(upgrade_request(policy.config.server.path)
                      if request is None else request)
        return session

    @property
    def clock(self) -> Clock:
        """The server's clock."""
        clock: Clock = self.factory.policy.clock  # type: ignore[assignment]
        return clock

    @property
    def status(self) -> int | None:
        """The HTTP status of the server's answer, if it answered."""
        self._parse()
        return None if self.response is None else self.response.status

    def write(self, data: bytes) -> None:
        """Bytes from the client, as they would arrive on the socket."""
        if self.protocol is not None:
            self.protocol.dataReceived(data)

    def send(self, message: str | bytes) -> None:
        """One message: text for ``str``, binary for ``bytes``."""
        if isinstance(message, str):
            self.write(client_frame(message.encode("utf-8"), 0x1))
        else:
            self.write(client_frame(message, 0x2))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake from the client."""
        self.write(client_frame(struct.pack("!H", code) + reason.encode("utf-8"),
                                0x8))

    def frames(self) -> list[Frame]:
        """Every whole frame the server sent after its 101."""
        self._parse()
        if self.response is None or self.response.status != 101:
            return []
        frames, _ = read_frames(self.transport.value()[self._read:])
        return frames

    def received(self) -> list[str | bytes]:
        """The messages the server sent: text as ``str``, binary as ``bytes``
        (fragmented messages reassembled)."""
        messages: list[str | bytes] = []
        parts: list[bytes] = []
        binary = False
        for frame in self.frames():
            if frame.opcode >= 0x8:
                continue
            if frame.opcode != 0x0:
                binary, parts = frame.opcode == 0x2, []
            parts.append(frame.payload)
            if frame.fin:
                whole = b"".join(parts)
                messages.append(whole if binary else whole.decode("utf-8"))
        return messages

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame, once it sent one."""
        for frame in self.frames():
            if frame.opcode == 0x8:
                return frame.close_code
        return None

    @property
    def disconnected(self) -> bool:
        """The server closed (or aborted) the connection."""
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def _parse(self) -> None:
        if self.response is None:
            data = self.transport.value()
            parsed = read_response(data)
            if parsed is not None:
                self.response, rest = parsed
                self._read = len(data) - len(rest)

    def __repr__(self) -> str:
        return f"<MemorySession status={self.status} peer={self.transport.getPeer()}>"
