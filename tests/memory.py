"""
Driving the real securews protocol in memory: a factory on a
``task.Clock``, ``StringTransport`` connections, request and frame
builders.  Shared by the in-memory test modules.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from securews.auth.interfaces import HandshakeRequest, IAuthenticator, Principal
from securews.factory import SecureServerFactory
from securews.protocol import SecureServerProtocol
from securews.testing import make_config

TLS = {"cert": "/unused/cert.pem", "key": "/unused/key.pem"}
ORIGIN = "https://app.example.com"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SECRET = "s3cr3t-token-value-0123456789"


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
            peer: str = "203.0.113.7") -> tuple[SecureServerProtocol, StringTransport]:
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
