"""
The open-session half of :class:`~securews.wire.protocol.SecureServerProtocol`:
the application hooks, the session's lifecycle and its one timer.

Once the upgrade is done, every byte from the client is untrusted and
everything it can make the server hold is bounded: frames and messages
by size (Autobahn, set by the factory) and count, the message and byte
rates by token buckets, time by one timer per session (heartbeat, idle,
lifetime, credential expiry; see
:class:`~securews.rules.session.SessionGuard`), and what the server queues
for a slow reader by ``max_write_buffer``.  The reading and writing paths
are :mod:`securews.wire._traffic`'s; only messages that pass reach the
application's :meth:`onValidatedMessage`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from securews.auth.interfaces import Principal
from securews.channels.membership import Membership
from securews.policy import Policy
from securews.rules.channels import grants_of
from securews.rules.codes import Close, CloseCode
from securews.rules.session import CREDENTIAL_EXPIRED, Drop, Ping, Renew, SessionGuard
from securews.wire._options import PinnedOptionsProtocol
from securews.wire.backpressure import WriteGate
from securews.wire.deflate import install_bounded_deflate

__all__ = ["SessionProtocol"]

_log = Logger(namespace="securews.session")
_APP_ERROR = Close(CloseCode.INTERNAL_ERROR, "internal error", "app_error")


class SessionProtocol(PinnedOptionsProtocol):
    """The application hooks, the session's lifecycle and its timer."""

    subprotocols: ClassVar[tuple[str, ...]] = ()
    #: Whether this class's ``onValidatedMessage`` takes ``document`` (set
    #: once per class, see :meth:`SecureServerProtocol.__init_subclass__`).
    _wants_document: ClassVar[bool] = False
    _opened = False
    _guard: SessionGuard | None = None
    _timer: IDelayedCall | None = None
    _gate: WriteGate | None = None
    _slow = False
    _deaf = False
    _close_timer: IDelayedCall | None = None
    _write_limit = 0
    _membership: Membership | None = None
    logOctets: bool  # an Autobahn option, copied from the factory
    policy: Policy  # HandshakeProtocol's
    release_handshake: Callable[[], None]  # HandshakeProtocol's

    # -- application hooks -------------------------------------------------

    def onSessionOpen(self) -> None:
        """Called once the session is authenticated and open."""

    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Called with each whole message that passed validation.

        An application may declare a third, keyword parameter ``document``
        (``def onValidatedMessage(self, payload, isBinary, document=None)``):
        with ``format = "json"`` it then receives the parsed JSON document
        of each text message, so nothing parses it twice (``None``
        otherwise, and for binary messages).
        """

    def onSessionClose(self, wasClean: bool, code: int | None,
                       reason: str | None) -> None:
        """Called once when an opened session ends."""

    def onWritePaused(self) -> None:
        """
        The transport's buffer is full: the peer reads slower than the
        application sends.  Stop producing until :meth:`onWriteResumed`;
        a session that keeps sending regardless is closed once
        ``limits.max_write_buffer`` bytes are queued.
        """

    def onWriteResumed(self) -> None:
        """The transport drained its buffer; sending may resume."""

    def join_channels(self) -> Membership:
        """
        This session's channels (:class:`~securews.channels.Membership`):
        subscribe it to channels and publish, within what its principal's
        ``channels`` claim grants, with recovery; on every node of a
        cluster.  Made at the first call, closed with the session.
        """
        if self._membership is None:
            principal: Any = getattr(self, "principal", None)
            claims = getattr(principal, "claims", {}) or {}
            policy = self.policy
            self._membership = Membership(
                policy.broker, grants_of(claims, getattr(principal, "id", "")),
                self._send_text,
                max_subscriptions=policy.config.channels.max_subscriptions)
            if self.state == WebSocketProtocol.STATE_CLOSED:
                # Joined after the close (a late callback): closed at once,
                # or its subscriptions would outlive the session.
                self._membership.close()
        return self._membership

    def _send_text(self, text: str) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(text.encode("utf-8"), False)  # type: ignore[no-untyped-call]

    @property
    def write_paused(self) -> bool:
        """Whether the transport has asked the session to stop sending."""
        return self._gate is not None and self._gate.paused

    # -- lifecycle ---------------------------------------------------------

    def _choose_subprotocol(self, offered: list[str]) -> str | None:
        for name in self.subprotocols:
            if name in offered:
                return name
        return None

    def onOpen(self) -> None:
        policy = self.policy
        config = policy.config
        # Before anything can be sent or inflated: Autobahn's own deflate
        # extension can overshoot the message budget (see wire/deflate.py).
        install_bounded_deflate(self, config.limits.max_message_size)
        self._opened = True
        # Looked up once: the per-message path reads them on every message.
        self._now = policy.clock.seconds
        self._metrics = policy.metrics
        self._validate = policy.validator.validate
        self._write_limit = config.limits.max_write_buffer
        principal: Any = getattr(self, "principal", None)
        self._guard = SessionGuard(
            config.limits, config.ratelimit, self._now(),
            expires_at=getattr(principal, "expires_at", None),
            renewable=getattr(principal, "renew", None) is not None)
        self._gate = WriteGate(self)
        transport: Any = self.transport
        transport.registerProducer(self._gate, True)
        policy.open_sessions += 1
        if principal is not None:
            policy.sessions.opened(self, principal)
        self._schedule()
        self._call_app(self.onSessionOpen)
        self.release_handshake()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        for timer in (self._timer, self._close_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._close_timer = None
        # The gate and the session would keep each other alive for the
        # cyclic garbage collector; nothing is written once the connection
        # is lost.
        if self._gate is not None:
            self._gate.release()
        if not self._opened:
            return
        self._opened = False
        self.policy.open_sessions -= 1
        self.policy.sessions.closed(self)
        if self._membership is not None:
            self._membership.close()
        # The code the session ended with: ours when we started the close.
        by_server = self.closedByMe or (self.droppedByMe and not wasClean)
        self._metrics.session_closed(
            self.localCloseCode if self.closedByMe else code,
            "server" if by_server else "client")
        self.onSessionClose(wasClean, code, reason)

    # -- application calls -------------------------------------------------

    def _call_app(self, hook: Any, *args: Any) -> None:
        """Run an application hook; if it raises, close 1011 rather than go
        on with a half-set-up session.  Only the exception type is logged."""
        try:
            hook(*args)
        except Exception as e:
            self._app_failed(hook.__name__, e)

    def _app_failed(self, hook: str, error: Exception) -> None:
        _log.error("application {hook} raised {error}; session closed",
                   event="session_closed", hook=hook,
                   error=type(error).__name__, reason="app_error")
        self.policy.server_closed(_APP_ERROR.category)
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=_APP_ERROR.code,
                                reasonUtf8=_APP_ERROR.reason.encode("ascii"),
                                isReply=False)

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        """Send a close frame; a peer that does not answer within
        close_timeout loses its TCP connection (securews's timer: Autobahn's
        rounds to whole seconds)."""
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if (self._close_timer is None and not isReply
                and self.state == WebSocketProtocol.STATE_CLOSING):
            policy = self.policy
            self._close_timer = policy.clock.callLater(
                policy.config.limits.close_timeout, self._close_expired)

    def _close_expired(self) -> None:
        self._close_timer = None
        if self.state != WebSocketProtocol.STATE_CLOSED:
            self.wasServerConnectionDropTimeout = True
            self.dropConnection(abort=True)

    # -- time --------------------------------------------------------------

    def _schedule(self) -> None:
        guard = self._guard
        if guard is None or self.state != WebSocketProtocol.STATE_OPEN:
            return
        clock = self.policy.clock
        delay = max(0.0, guard.next_deadline() - clock.seconds())
        self._timer = clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._guard is None or self.state != WebSocketProtocol.STATE_OPEN:
            return
        self._act(self._guard.tick(self._now()))
        if self._timer is None:
            self._schedule()

    def _act(self, verdict: Close | Drop | Ping | Renew | None) -> None:
        if verdict is None:
            return
        if isinstance(verdict, Ping):
            self.sendPing()
        elif isinstance(verdict, Renew):
            self._renew()
        elif isinstance(verdict, Drop):
            self._log_session(verdict.category, None)
            self.policy.server_closed(verdict.category)
            self.dropConnection(abort=True)
        elif self.state == WebSocketProtocol.STATE_OPEN:
            self._log_session(verdict.category, verdict.code)
            self.policy.server_closed(verdict.category)
            self.sendCloseFrame(code=verdict.code,
                                reasonUtf8=verdict.reason.encode("ascii"),
                                isReply=False)

    def end_session(self, close: Close) -> None:
        """
        Close the session with ``close`` (logged and counted) if it is
        open: its credential was revoked, or this node is cut off from its
        cluster.
        """
        self._act(close)

    def _renew(self) -> None:
        """
        Ask whether the session's credential is still good (an introspected
        cookie asks the web application again).  Yes: the session goes on
        until the new expiry, ``self.principal`` is the renewed principal.
        No, or no answer (fail closed): 4401 "credential expired".
        """
        principal: Any = getattr(self, "principal", None)
        renew = getattr(principal, "renew", None)
        d: Deferred[Any] = maybeDeferred(renew) if renew is not None else fail(
            RuntimeError("not renewable"))

        def renewed(new: object) -> None:
            guard = self._guard
            if guard is None or self.state != WebSocketProtocol.STATE_OPEN:
                return
            if (not isinstance(new, Principal) or new.id != principal.id
                    or (new.expires_at is not None and new.expires_at <= self._now())):
                # Someone else, or a credential that is over already: a
                # renewal that did not renew (never a loop of re-checks).
                self._act(CREDENTIAL_EXPIRED)
                return
            self.principal = new
            guard.renewed(new.expires_at, new.renew is not None)
            self._reschedule()

        def refused(failure: Failure) -> None:
            if self._guard is not None and self.state == WebSocketProtocol.STATE_OPEN:
                self._act(CREDENTIAL_EXPIRED)

        d.addCallbacks(renewed, refused)

    def _reschedule(self) -> None:
        """The deadline moved outside a tick: restart the session's timer."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._schedule()

    def _log_session(self, category: str, code: int | None) -> None:
        principal: Any = getattr(self, "principal", None)
        _log.info(
            "session closed by server ({reason}, code {code}) for {client}",
            event="session_closed", reason=category, code=code,
            client=getattr(self, "client", ""),
            principal=principal.id if principal is not None else None,
        )
