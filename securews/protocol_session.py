"""
The open-session half of :class:`~securews.protocol.SecureServerProtocol`.

Once the upgrade is done, every byte from the client is untrusted and
everything it can make the server hold is bounded: frames and messages
by size (Autobahn, set by the factory) and count, the message and byte
rates by token buckets, time by one timer per session (heartbeat, idle,
lifetime; see :class:`~securews.session.SessionGuard`), and what the
server queues for a slow reader by ``max_write_buffer``.  Only messages
that pass reach the application's :meth:`onValidatedMessage`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from securews.backpressure import WriteGate, buffered_bytes
from securews.compression import exact_message_size, install_bounded_deflate
from securews.session import Close, Drop, Ping, SessionGuard

__all__ = ["SessionProtocol"]

_log = Logger(namespace="securews.session")
POLICY = 1008


class SessionProtocol(WebSocketServerProtocol):
    """Session limits and the application hooks."""

    subprotocols: ClassVar[tuple[str, ...]] = ()
    _opened = False
    _guard: SessionGuard | None = None
    _timer: IDelayedCall | None = None
    _gate: WriteGate | None = None

    # -- application hooks -------------------------------------------------

    def onSessionOpen(self) -> None:
        """Called once the session is authenticated and open."""

    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        """Called with each whole message that passed validation."""

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
        factory = self.factory
        # Before anything can be sent or inflated: Autobahn's own deflate
        # extension can overshoot the message budget (see compression.py).
        install_bounded_deflate(self, factory.config.limits.max_message_size)
        self._opened = True
        self._guard = SessionGuard(factory.config.limits, factory.config.ratelimit,
                                   factory.clock.seconds())
        self._gate = WriteGate(self)
        transport: Any = self.transport
        transport.registerProducer(self._gate, True)
        factory.session_opened(self)
        self._schedule()
        self.onSessionOpen()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self._opened:
            return
        self._opened = False
        self.factory.session_closed(self)
        self.onSessionClose(wasClean, code, reason)

    def dataReceived(self, data: bytes) -> None:
        if self._guard is not None:
            self._guard.traffic(self.factory.clock.seconds())
        super().dataReceived(data)

    # -- messages ----------------------------------------------------------

    def onMessageFrameBegin(self, length: int) -> None:
        with exact_message_size(self):
            super().onMessageFrameBegin(length)
        if self._guard is not None and self.state == WebSocketProtocol.STATE_OPEN:
            self._act(self._guard.frame())

    def onFrameData(self, payload: bytes) -> bool | None:
        with exact_message_size(self):
            return super().onFrameData(payload)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        guard = self._guard
        if guard is None or self.state != WebSocketProtocol.STATE_OPEN:
            return
        verdict = guard.message(len(payload), self.factory.clock.seconds())
        if verdict is not None:
            self._act(verdict)
            return
        refusal = self.factory.validator.validate(payload, isBinary).refusal
        if refusal is not None:
            self._act(Close(refusal.code, refusal.reason, refusal.category))
            return
        self.onValidatedMessage(payload, isBinary)

    def sendMessage(self, payload: bytes, isBinary: bool = False,
                    fragmentSize: int | None = None, sync: bool = False,
                    doNotCompress: bool = False) -> None:
        """Send a message; a peer that lets too much pile up is closed."""
        super().sendMessage(  # type: ignore[no-untyped-call]
            payload, isBinary, fragmentSize, sync, doNotCompress)
        if buffered_bytes(self.transport) > self.factory.config.limits.max_write_buffer:
            self._slow_consumer()

    def _slow_consumer(self) -> None:
        """Close 1008 and abort at once: the peer is not reading, so the
        close frame would only queue behind the rest; aborting frees the
        buffers now."""
        self._log_session("slow_consumer", POLICY)
        self.sendCloseFrame(code=POLICY, reasonUtf8=b"slow consumer", isReply=False)
        self.factory.count_close("slow_consumer")
        transport: Any = self.transport
        transport.abortConnection()

    # -- time --------------------------------------------------------------

    def _schedule(self) -> None:
        guard = self._guard
        if guard is None or self.state != WebSocketProtocol.STATE_OPEN:
            return
        clock = self.factory.clock
        delay = max(0.0, guard.next_deadline() - clock.seconds())
        self._timer = clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._guard is None or self.state != WebSocketProtocol.STATE_OPEN:
            return
        self._act(self._guard.tick(self.factory.clock.seconds()))
        if self._timer is None:
            self._schedule()

    def _act(self, verdict: Close | Drop | Ping | None) -> None:
        if verdict is None:
            return
        if isinstance(verdict, Ping):
            self.sendPing()
        elif isinstance(verdict, Drop):
            self._log_session(verdict.category, None)
            self.factory.count_close(verdict.category)
            self.dropConnection(abort=True)
        elif self.state == WebSocketProtocol.STATE_OPEN:
            self._log_session(verdict.category, verdict.code)
            self.factory.count_close(verdict.category)
            self.sendCloseFrame(code=verdict.code,
                                reasonUtf8=verdict.reason.encode("ascii"),
                                isReply=False)

    def _log_session(self, category: str, code: int | None) -> None:
        principal: Any = getattr(self, "principal", None)
        _log.info(
            "session closed by server ({reason}, code {code}) for {client}",
            event="session_closed", reason=category, code=code,
            client=getattr(self, "client", ""),
            principal=principal.id if principal is not None else None,
        )
