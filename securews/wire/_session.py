"""
The open-session half of :class:`~securews.wire.protocol.SecureServerProtocol`.

Once the upgrade is done, every byte from the client is untrusted and
everything it can make the server hold is bounded: frames and messages
by size (Autobahn, set by the factory) and count, the message and byte
rates by token buckets, time by one timer per session (heartbeat, idle,
lifetime; see :class:`~securews.rules.session.SessionGuard`), and what the
server queues for a slow reader by ``max_write_buffer``.  Only messages
that pass reach the application's :meth:`onValidatedMessage`.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, ClassVar

import attrs
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from securews.auth.interfaces import Principal
from securews.policy import Policy
from securews.rules.codes import FIXED_REASONS, Close, CloseCode
from securews.rules.session import CREDENTIAL_EXPIRED, Drop, Ping, Renew, SessionGuard
from securews.wire.backpressure import WriteGate, buffered_bytes
from securews.wire.deflate import exact_message_size, install_bounded_deflate

__all__ = ["PINNED_OPTIONS", "PinnedOptions", "SessionProtocol"]

_log = Logger(namespace="securews.session")
#: Twisted's FileDescriptor.bufferSize: past it the transport pauses us.
_TRANSPORT_BUFFER = 65536
_SLOW_CONSUMER = Close(CloseCode.POLICY_VIOLATION, "slow consumer", "slow_consumer")
_APP_ERROR = Close(CloseCode.INTERNAL_ERROR, "internal error", "app_error")


#: The Autobahn options a SecureServerFactory sets (limits, validation,
#: masking, timers, Origin and proxy trust, compression, the status page).
PINNED_OPTIONS = (
    "webStatus", "failByDrop", "maxFramePayloadSize", "maxMessagePayloadSize",
    "openHandshakeTimeout", "closeHandshakeTimeout", "allowedOrigins",
    "allowNullOrigin", "maxConnections", "trustXForwardedFor", "autoPingInterval",
    "autoPingTimeout", "serveFlashSocketPolicy", "perMessageCompressionAccept",
    "echoCloseCodeReason", "requireMaskedClientFrames", "utf8validateIncoming",
    "versions", "allowedOriginsPatterns",
)
#: A factory's values of :data:`PINNED_OPTIONS`, immutable.
PinnedOptions = attrs.make_class("PinnedOptions", list(PINNED_OPTIONS),
                                 frozen=True, slots=True)


def _pinned(name: str) -> Any:
    """
    A read-only view of the factory's pinned value of option ``name``.

    Autobahn copies each option from the factory onto a protocol that
    lacks the attribute, then reads it from the protocol.  A property
    means the copy never happens and ``self.maxMessagePayloadSize = 0``
    in application code raises (closing the session 1011) instead of
    lifting a limit.  The getter is C code: Autobahn reads some of these
    for every frame.
    """
    return property(attrgetter(f"factory.pinned_options.{name}"),
                    doc=f"Autobahn's ``{name}``, fixed by the settings.")


class SessionProtocol(WebSocketServerProtocol):
    """Session limits and the application hooks."""

    # Read-only: see _pinned.
    webStatus = _pinned("webStatus")
    failByDrop = _pinned("failByDrop")
    maxFramePayloadSize = _pinned("maxFramePayloadSize")
    maxMessagePayloadSize = _pinned("maxMessagePayloadSize")
    openHandshakeTimeout = _pinned("openHandshakeTimeout")
    closeHandshakeTimeout = _pinned("closeHandshakeTimeout")
    allowedOrigins = _pinned("allowedOrigins")
    allowNullOrigin = _pinned("allowNullOrigin")
    maxConnections = _pinned("maxConnections")
    trustXForwardedFor = _pinned("trustXForwardedFor")
    autoPingInterval = _pinned("autoPingInterval")
    autoPingTimeout = _pinned("autoPingTimeout")
    serveFlashSocketPolicy = _pinned("serveFlashSocketPolicy")
    perMessageCompressionAccept = _pinned("perMessageCompressionAccept")
    echoCloseCodeReason = _pinned("echoCloseCodeReason")
    requireMaskedClientFrames = _pinned("requireMaskedClientFrames")
    utf8validateIncoming = _pinned("utf8validateIncoming")
    versions = _pinned("versions")
    allowedOriginsPatterns = _pinned("allowedOriginsPatterns")

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
    logOctets: bool  # an Autobahn option, copied from the factory
    policy: Policy  # HandshakeProtocol's

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
        self._schedule()
        self._call_app(self.onSessionOpen)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        for timer in (self._timer, self._close_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._close_timer = None
        if not self._opened:
            return
        self._opened = False
        self.policy.open_sessions -= 1
        # The code the session ended with: ours when we started the close.
        by_server = self.closedByMe or (self.droppedByMe and not wasClean)
        self._metrics.session_closed(
            self.localCloseCode if self.closedByMe else code,
            "server" if by_server else "client")
        self.onSessionClose(wasClean, code, reason)

    def tlsRecordsReceived(self, count: int, size: int) -> None:
        """
        The TLS layer (:class:`securews._twisted.SecureTLSTransport`) is
        about to deliver ``size`` bytes that came in ``count`` records:
        records carrying little are charged (see
        :meth:`SessionGuard.records`), before the data is parsed.
        """
        guard = self._guard
        if guard is None or self._deaf or self.state != WebSocketProtocol.STATE_OPEN:
            return
        verdict = guard.records(count, size, self._now())
        if verdict is not None:
            self._act(verdict)
            self._stop_reading()

    def dataReceived(self, data: bytes) -> None:
        guard = self._guard
        if guard is None:
            super().dataReceived(data)
            return
        if self._deaf:
            return
        guard.traffic(self._now())
        if self.state != WebSocketProtocol.STATE_CLOSED:
            # Autobahn's Twisted dataReceived only adds a debug log call
            # whose arguments it formats eagerly, on every read.
            self._dataReceived(data)

    # -- messages ----------------------------------------------------------

    def onFrameBegin(self) -> None:
        """
        Every frame header, of every opcode, before its payload is read:
        the frame is charged to the session's buckets here (see
        :meth:`SessionGuard.frame`), so no kind of frame is free, while the
        session is open and while it closes.  The size limits (1009),
        which Autobahn checks first, take precedence.
        """
        state = self.state
        super().onFrameBegin()
        guard = self._guard
        if guard is None or self.state != state:
            # Not open yet, or this very frame broke a size limit (1009 is
            # on its way out; an abort now would cut it off).
            return
        frame = self.current_frame
        verdict = guard.frame(frame.opcode, frame.length, self._now())
        if verdict is None:
            return
        if state == WebSocketProtocol.STATE_OPEN:
            self._act(verdict)
            self._stop_reading()
        else:
            # Closing already (our close frame is out, whatever the reason):
            # a peer that keeps sending instead of answering it is charged
            # as before, and once its budget is gone, cut off.
            self._stop_reading()
            self.dropConnection(abort=True)

    def onMessageFrameBegin(self, length: int) -> None:
        if self._perMessageCompress is None:
            super().onMessageFrameBegin(length)
        else:
            with exact_message_size(self):
                super().onMessageFrameBegin(length)

    def onMessageEnd(self) -> None:
        """
        Autobahn's, minus its per-message Deferred: it fires the
        ``message`` event for listeners (``self.on("message", ...)``)
        even when there are none, and securews registers none.
        """
        if self._listeners is not None or self.trackedTimings:
            super().onMessageEnd()
            return
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        guard = self._guard
        if guard is None or self.state != WebSocketProtocol.STATE_OPEN:
            return
        size = len(payload)
        metrics = self._metrics
        metrics.messages_in += 1
        metrics.bytes_in += size
        verdict = guard.message(size, self._now())
        if verdict is not None:
            self._act(verdict)
            self._stop_reading()
            return
        checked = self._validate(payload, isBinary)
        if checked.refusal is not None:
            self._act(checked.refusal)
            return
        try:
            if self._wants_document:
                self.onValidatedMessage(  # type: ignore[call-arg]
                    payload, isBinary, document=checked.document)
            else:
                self.onValidatedMessage(payload, isBinary)
        except Exception as e:
            self._app_failed("onValidatedMessage", e)

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

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int,
                                   reason: str) -> None:
        """Autobahn found a frame or message over the limits (it closes 1009)."""
        if not self.failedByMe:
            self.policy.server_closed("too_big")
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    def sendMessage(self, payload: bytes, isBinary: bool = False,
                    fragmentSize: int | None = None, sync: bool = False,
                    doNotCompress: bool = False) -> None:
        """Send a message; a peer that lets too much pile up is closed."""
        super().sendMessage(  # type: ignore[no-untyped-call]
            payload, isBinary, fragmentSize, sync, doNotCompress)
        if self._guard is not None:
            metrics = self._metrics
            metrics.messages_out += 1
            metrics.bytes_out += len(payload)

    def sendData(self, data: bytes, sync: bool = False,
                 chopsize: int | None = None) -> None:
        """
        Every write (messages, prepared messages, pongs, pings, close
        frames) passes here, so the queue limit covers them all.
        """
        if sync or chopsize or self.send_queue or self.logOctets:
            super().sendData(data, sync, chopsize)
        else:
            # Autobahn's unqueued path, minus a debug log call whose
            # arguments it formats eagerly, on every write.
            self.transport.write(data)  # type: ignore[union-attr]
            if self.state == WebSocketProtocol.STATE_OPEN:
                self.trafficStats.outgoingOctetsWireLevel += len(data)
            elif self.state == WebSocketProtocol.STATE_CONNECTING:
                self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        gate = self._gate
        if gate is None or self._slow:
            return
        # Twisted pauses the producer (synchronously, inside write) once
        # its buffer passes 64 KiB; until then, with a limit at least that
        # large, the queue cannot be over the limit and needs no counting.
        limit = self._write_limit
        if gate.paused or self.send_queue or limit < _TRANSPORT_BUFFER:
            queued = buffered_bytes(self.transport) + sum(
                len(chunk) for chunk, _ in self.send_queue)
            if queued > limit:
                self._slow_consumer()

    def onPing(self, payload: bytes) -> None:
        """
        A ping (already charged, as every frame is, in :meth:`onFrameBegin`)
        is answered only while the session is open and the peer is reading.
        """
        if not self.write_paused and self.state == WebSocketProtocol.STATE_OPEN:
            super().onPing(payload)

    def onFrameData(self, payload: bytes) -> bool | None:
        # Once we have started closing, data frames are skipped unread: no
        # inflation, no assembly, nothing charged or delivered.
        frame = self.current_frame
        if (self.state != WebSocketProtocol.STATE_OPEN and frame is not None
                and frame.opcode < 8):
            return None
        if self._perMessageCompress is None:
            return super().onFrameData(payload)
        with exact_message_size(self):
            return super().onFrameData(payload)

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

    def _stop_reading(self) -> None:
        """
        After a rate-limit close, read nothing more: what is buffered is
        dropped, the transport stops reading, and what TLS had already
        decrypted is ignored, so a flooder's next frames cost nothing; the
        close timer aborts the connection ``close_timeout`` later.
        """
        self._deaf = True
        self.data = b""
        transport: Any = self.transport
        transport.pauseProducing()

    def _protocol_violation(self, reason: str) -> bool:
        """Close 1002 and stop reading: the rest of a bad frame (say, a
        control frame announcing gigabytes) is never buffered."""
        self._fail_connection(CloseCode.PROTOCOL_ERROR, reason)
        self.dropConnection(abort=False)
        self.data = b""
        return True

    def _invalid_payload(self, reason: str) -> bool:
        self._fail_connection(CloseCode.INVALID_PAYLOAD, reason)
        self.dropConnection(abort=False)
        self.data = b""
        return True

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        """Autobahn's reasons name the library and its limits: send a fixed
        text per close code instead."""
        super()._fail_connection(code, FIXED_REASONS.get(code, "connection failed"))

    def _slow_consumer(self) -> None:
        """Close 1008 and abort at once: the peer is not reading, so the
        close frame would only queue behind the rest; aborting frees the
        buffers now."""
        self._slow = True
        verdict = _SLOW_CONSUMER
        self._log_session(verdict.category, verdict.code)
        self.sendCloseFrame(code=verdict.code,
                            reasonUtf8=verdict.reason.encode("ascii"), isReply=False)
        self.policy.server_closed(verdict.category)
        transport: Any = self.transport
        transport.abortConnection()

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
