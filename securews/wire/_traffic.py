"""
Every byte of an open session, in and out (the session's lifecycle, hooks
and timer are :mod:`securews.wire._session`'s).

In: TLS records and frames are charged to the session's buckets from
their headers, before their payload is read (see
:class:`~securews.rules.session.SessionGuard`); messages are counted,
validated and only then delivered to ``onValidatedMessage``; after a
protocol error or a rate-limit close nothing more is read.  Out: every
write (messages, pongs, close frames) counts against
``max_write_buffer``, and a peer that lets more pile up is cut off.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.logger import Logger

from securews.rules.codes import FIXED_REASONS, Close, CloseCode
from securews.wire._session import SessionProtocol
from securews.wire.backpressure import buffered_bytes
from securews.wire.deflate import exact_message_size

__all__ = ["TrafficProtocol"]

_log = Logger(namespace="securews.session")
#: Twisted's FileDescriptor.bufferSize: past it the transport pauses us.
_TRANSPORT_BUFFER = 65536
_SLOW_CONSUMER = Close(CloseCode.POLICY_VIOLATION, "slow consumer", "slow_consumer")


class TrafficProtocol(SessionProtocol):
    """The session's reading and writing paths."""

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
