"""
A WebSocket client for people, not programs: what ``securews client``
connects with, to talk to a server without writing code.

It verifies the server's certificate (against ``cafile`` or the system's
trust store; there is no switch to skip it), sends a token as
``Authorization: Bearer`` (never in the URL, which servers and proxies
log), an ``Origin`` only when asked, and bounds what it accepts like a
server would.  Autobahn does the WebSocket work (only the wire layer
touches it); the caller gets three callbacks and a way to send.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)

__all__ = ["MAX_MESSAGE", "ClientError", "ClientHandlers", "connect_client",
           "trust_root"]

#: Largest message the client accepts (a server's is far smaller by default).
MAX_MESSAGE = 16 * 2**20
_PEM_END = b"-----END CERTIFICATE-----"
_REFUSED = re.compile(r"upgrade failed \[(\d{3})\]: ([\w ]+)")
_TLS = re.compile(r"SSL error: ([^(\n]+?) *(?:\(in [^)]*\))?\"?\)?$")


class ClientError(Exception):
    """A problem with what the user asked for (URL, CA file): one line."""


class ClientHandlers:
    """
    What the client reports.  Override the ones you need.

    ``opened(send, close)`` gets functions to send a message (``str`` as
    text, ``bytes`` as binary) and to close (normal closure, 1000).
    """

    def opened(self, send: Callable[[str | bytes], None],
               close: Callable[[], None]) -> None:
        """The session is open."""

    def received(self, message: str | bytes) -> None:
        """One whole message from the server."""

    def closed(self, opened: bool, clean: bool, code: int | None,
               reason: str) -> None:
        """
        The connection ended.

        :param opened: a session had been open (else the handshake, TLS or
            the connection failed, and ``reason`` says how).
        :param clean: the closing handshake completed.
        """


class _Factory(WebSocketClientFactory):
    handlers: ClientHandlers


class _Protocol(WebSocketClientProtocol):
    _was_open = False

    @property
    def _handlers(self) -> ClientHandlers:
        handlers: ClientHandlers = self.factory.handlers
        return handlers

    def onOpen(self) -> None:
        self._was_open = True

        def send(message: str | bytes) -> None:
            binary = isinstance(message, bytes)
            payload = message if isinstance(message, bytes) else message.encode()
            self.sendMessage(payload, isBinary=binary)  # type: ignore[no-untyped-call]

        self._handlers.opened(send, lambda: self.sendClose(1000))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._handlers.received(payload)
        else:
            self._handlers.received(payload.decode("utf-8"))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self._was_open:
            reason = _failure(getattr(self, "wasNotCleanReason", None) or reason)
        self._handlers.closed(self._was_open, wasClean, code, reason or "")


def _failure(reason: str | None) -> str:
    """Why a connection never became a session, in a user's words."""
    text = reason or "the connection closed"
    if refused := _REFUSED.search(text):
        return f"the server refused the handshake: {refused[1]} {refused[2]}"
    if tls := _TLS.search(text):
        hint = (" (trust the server's certificate or its CA with --cafile)"
                if "verify failed" in tls[1] else "")
        return f"TLS failed: {tls[1]}{hint}"
    return text


def trust_root(cafile: str) -> Any:
    """
    The certificates of a PEM file (one or a bundle) as a trust root.

    :raises ClientError: when the file cannot be read or holds none.
    """
    try:
        with open(cafile, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise ClientError(f"{cafile}: cannot read: {e.strerror}") from None
    blocks = [part + _PEM_END for part in data.split(_PEM_END)[:-1]]
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception:
        certificates = []
    if not certificates:
        raise ClientError(f"{cafile}: holds no PEM certificate")
    return trustRootFromCertificates(certificates)


def connect_client(reactor: Any, url: str, handlers: ClientHandlers, *,
                   cafile: str | None = None, token: str | None = None,
                   origin: str | None = None) -> Deferred[Any]:
    """
    Connect to ``url`` (``wss://`` or ``ws://``).

    :param cafile: PEM file of the CA (or the self-signed certificate) to
        trust; by default the system's trust store.
    :param token: sent as ``Authorization: Bearer``.
    :param origin: sent as ``Origin`` (what a browser page would send).
    :returns: fires once connected (the handshake goes on), fails when
        the connection cannot be made.
    :raises ClientError: for a URL that is not ``ws(s)://host[:port]/...``
        or an unusable ``cafile``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ClientError(f"{url!r} is not a ws:// or wss:// URL")
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:
        raise ClientError(f"{url!r} has a bad port") from None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    factory = _Factory(url, origin=origin,  # type: ignore[no-untyped-call]
                       headers=headers)
    factory.protocol = _Protocol
    factory.handlers = handlers
    factory.setProtocolOptions(  # type: ignore[no-untyped-call]
        maxMessagePayloadSize=MAX_MESSAGE, maxFramePayloadSize=MAX_MESSAGE,
        openHandshakeTimeout=10, closeHandshakeTimeout=2)
    endpoint: Any = HostnameEndpoint(reactor, parts.hostname, port)
    if parts.scheme == "wss":
        trust = trust_root(cafile) if cafile else None
        options = optionsForClientTLS(parts.hostname, trustRoot=trust,
                                      acceptableProtocols=[b"http/1.1"])
        endpoint = wrapClientTLS(options, endpoint)
    elif cafile:
        raise ClientError("--cafile applies to wss:// URLs only")
    d: Deferred[Any] = endpoint.connect(factory)
    return d
