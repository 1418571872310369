"""
The hardened server protocol: a thin adapter between Autobahn and
securews's decisions.

Autobahn stays the wire engine (framing, masking, UTF-8, the close
handshake).  Everything a security reviewer cares about in the opening
handshake happens here first: the request head is read with bounds, the
path, method and upgrade are routed, the Origin is checked and the client
is authenticated, each by pure code; this class only turns those
decisions into bytes on the transport.

Applications subclass :class:`SecureServerProtocol` and implement the
``onSession*`` / ``onValidatedMessage`` hooks.  The Autobahn callbacks
that carry the security path (``onConnect``, ``onMessage``, ...) are
sealed: a subclass that overrides one fails at class creation.

No tunnelling: nothing here hands a client a byte pipe to another
service, and the server opens no outbound connection on a client's
behalf.  Messages reach the application as whole, validated payloads.
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar, NoReturn

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from securews.auth.interfaces import HandshakeRequest, Principal
from securews.handshake import Refusal, RequestHead, read_head, route
from securews.logs import WireLogger
from securews.origin import origin_allowed
from securews.refusal import render_refusal
from securews.tls import peer_subject

__all__ = ["SecureServerProtocol"]

GOING_AWAY = 1001
_log = Logger(namespace="securews.handshake")
_SEALED = frozenset({
    "connectionMade", "connectionLost", "dataReceived",
    "processHandshake", "failHandshake", "succeedHandshake",
    "onConnect", "onOpen", "onMessage", "onClose",
})


class _Denied(ConnectionDeny):
    """A refusal decided by securews, carrying its log category."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.status)  # type: ignore[no-untyped-call]
        self.refusal = refusal


class SecureServerProtocol(WebSocketServerProtocol):
    """
    Base class for securews applications.

    Implement :meth:`onSessionOpen`, :meth:`onValidatedMessage` and
    :meth:`onSessionClose`; send with ``self.sendMessage(payload,
    isBinary)``.

    :cvar subprotocols: the WebSocket subprotocols this application
        speaks, in order of preference.  When the client offers some and
        none match, the session opens without one.
    :ivar principal: who authenticated the session (set before
        :meth:`onSessionOpen`).
    :ivar tls_client_subject: the verified client-certificate subject
        under mutual TLS, else ``None``.
    :ivar client: the client's IP address, as used for limits and logs.
    """

    subprotocols: ClassVar[tuple[str, ...]] = ()
    principal: Principal | None = None
    tls_client_subject: tuple[tuple[str, str], ...] | None = None
    client: str = ""

    log = WireLogger()
    _head: RequestHead | None = None
    _handed_over = False
    _pending_denial: Refusal | None = None
    _opened = False
    _admitted = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = sorted(_SEALED & set(vars(cls)))
        if overridden:
            raise TypeError(
                f"{cls.__qualname__} overrides {', '.join(overridden)}: securews "
                "applications implement onSessionOpen, onValidatedMessage and "
                "onSessionClose instead"
            )

    # -- application hooks -------------------------------------------------

    def onSessionOpen(self) -> None:
        """Called once the session is authenticated and open."""

    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        """Called with each whole message that passed validation."""

    def onSessionClose(self, wasClean: bool, code: int | None,
                       reason: str | None) -> None:
        """Called once when an opened session ends."""

    # -- transport events --------------------------------------------------

    @property
    def _transport(self) -> ITCPTransport:
        assert self.transport is not None
        return self.transport  # type: ignore[return-value]

    def connectionMade(self) -> None:
        peer = self._transport.getPeer()
        self.client = getattr(peer, "host", "") or "unix"
        factory = self.factory
        factory.connection_made(self)
        super().connectionMade()
        if not factory.config.tls.enabled and not self._from_trusted_proxy():
            _log.warn(
                "plaintext connection from {client} refused: not a trusted proxy",
                event="connection", client=self.client, outcome="refused",
                reason="untrusted_peer",
            )
            self._transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            if self._admitted:
                self._admitted = False
                self.factory.release(self)
            self.factory.connection_lost(self)

    def _from_trusted_proxy(self) -> bool:
        try:
            address = ipaddress.ip_address(self.client)
        except ValueError:
            return False
        return any(address in net for net in self.factory.trusted_networks)

    # -- opening handshake -------------------------------------------------

    def processHandshake(self) -> None:
        if self._handed_over:
            # Autobahn is waiting for onConnect; bytes that arrive early
            # wait too, but only up to one frame's worth.
            if len(self.data) > self.factory.config.limits.max_frame_size + 14:
                self._refuse(Refusal(400, "early_data"))
            return
        decision = read_head(
            self.data,
            max_bytes=self.factory.config.limits.max_header_bytes,
            max_headers=self.factory.config.limits.max_headers,
        )
        if decision is None:
            return
        if isinstance(decision, Refusal):
            self._refuse(decision)
            return
        self._head = decision
        refusal = route(decision, websocket_path=self.factory.config.server.path)
        refusal = refusal or self._admit(decision)
        if refusal is not None:
            self._refuse(refusal)
            return
        self._handed_over = True
        super().processHandshake()

    def _admit(self, head: RequestHead) -> Refusal | None:
        """Checks that need no credentials: Origin, then capacity."""
        try:
            origin = head.get("origin")
        except ValueError:
            return Refusal(403, "origin")
        if not origin_allowed(origin, self.factory.origin_allow_list,
                              allow_missing=self.factory.allow_missing_origin):
            return Refusal(403, "origin")
        if not self.factory.admit(self):
            return Refusal(503, "server_full", (("Retry-After", "5"),))
        self._admitted = True
        return None

    def onConnect(  # type: ignore[override]
        self, request: ConnectionRequest
    ) -> Deferred[str | None]:
        head = self._head
        assert head is not None
        self.tls_client_subject = peer_subject(self.transport)
        handshake = HandshakeRequest(
            head=head, client=self.client, origin=head.get("origin"),
            tls_client_subject=self.tls_client_subject,
        )
        authenticator = self.factory.authenticator
        d: Deferred[Principal | None] = maybeDeferred(
            authenticator.authenticate, handshake
        )

        def decided(principal: Principal | None) -> str | None:
            if principal is None:
                self._deny(Refusal(401, "no_credentials"))
            self.principal = principal
            return self._choose_subprotocol(request.protocols)

        def crashed(failure: Failure) -> None:
            if failure.check(_Denied):
                failure.raiseException()
            # The exception text may quote a credential: log its type only.
            _log.error(
                "authenticator {method} failed with {error}; handshake refused",
                event="handshake", method=getattr(authenticator, "method", "?"),
                error=failure.type.__name__ if failure.type else "?",
            )
            self._deny(Refusal(500, "auth_error"))

        return d.addCallbacks(decided, crashed)

    def _deny(self, refusal: Refusal) -> NoReturn:
        self._pending_denial = refusal
        raise _Denied(refusal)

    def _choose_subprotocol(self, offered: list[str]) -> str | None:
        for name in self.subprotocols:
            if name in offered:
                return name
        return None

    def succeedHandshake(self, res: Any) -> None:
        if self.state != WebSocketProtocol.STATE_CONNECTING:
            return
        self._log_handshake("accepted", None, 101)
        super().succeedHandshake(res)

    def failHandshake(self, reason: str, code: int = 400,
                      responseHeaders: Any = None) -> None:
        # ``reason`` is Autobahn's text and may quote client input: it is
        # neither logged nor sent.
        self._refuse(self._pending_denial or Refusal(code, "bad_handshake"))

    def _refuse(self, refusal: Refusal) -> None:
        if self.state == WebSocketProtocol.STATE_CLOSED:
            return
        self._log_handshake("refused", refusal.reason, refusal.status)
        self.factory.handshake_refused(refusal)
        # A deliberate refusal, not a failure: keeps Autobahn from logging
        # a second, warning-level line about the drop.
        self.wasClean = True
        self._transport.write(render_refusal(refusal.status, refusal.headers))
        self.dropConnection(abort=False)

    def _log_handshake(self, outcome: str, reason: str | None, status: int) -> None:
        head = self._head
        origin = None
        if head is not None:
            values = head.values("origin")
            origin = values[0][:256] if len(values) == 1 else None
        _log.info(
            "handshake {outcome} {status} from {client} path={path} "
            "origin={origin} reason={reason}",
            event="handshake", outcome=outcome, status=status,
            client=self.client, path=head.path[:256] if head else None,
            origin=origin, reason=reason,
            method=self.principal.method if self.principal else None,
        )

    # -- session -----------------------------------------------------------

    def onOpen(self) -> None:
        self._opened = True
        self.factory.session_opened(self)
        self.onSessionOpen()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.onValidatedMessage(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self._opened:
            return
        self._opened = False
        self.factory.session_closed(self)
        self.onSessionClose(wasClean, code, reason)

    def go_away(self, reason: str = "server shutting down") -> None:
        """Start the close handshake with 1001 (Going Away)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=GOING_AWAY, reasonUtf8=reason.encode("utf-8"),
                                isReply=False)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self._transport.abortConnection()

    def abort(self) -> None:
        """Drop the TCP connection now, without a close handshake."""
        self._transport.abortConnection()
