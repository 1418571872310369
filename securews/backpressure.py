"""
How much a connection has written that the peer has not yet taken.

Twisted buffers writes without limit: a client that asks for data and
never reads grows the server's memory forever.  securews measures what
is queued on the transport after each message it sends and closes a
connection whose queue passes ``limits.max_write_buffer``.  Twisted has
no public API for the queue length, so this reads the buffers of the
transports securews builds (``TLSMemoryBIOProtocol`` over a TCP
``FileDescriptor``) and is tested against real sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["WriteGate", "buffered_bytes"]

_MAX_LAYERS = 4


def _queued(transport: Any) -> int:
    # vars(), not getattr(): Twisted's TLS wrapper forwards unknown
    # attributes to the transport beneath, which would be counted twice.
    own = getattr(transport, "__dict__", {})
    total = 0
    data = own.get("dataBuffer")
    if isinstance(data, bytes | bytearray | memoryview):
        total += len(data) - int(own.get("offset", 0))
        total += int(own.get("_tempDataLen", 0))
    pending = own.get("_appSendBuffer")
    if isinstance(pending, list):
        total += sum(len(chunk) for chunk in pending)
    aggregator = own.get("_aggregator")
    if aggregator is not None:
        small = getattr(aggregator, "__dict__", {}).get("_buffer")
        if isinstance(small, list):
            total += sum(len(chunk) for chunk in small)
    return total


def buffered_bytes(transport: Any) -> int:
    """Bytes written to ``transport`` (and the transports under it) not yet sent."""
    total = 0
    for _ in range(_MAX_LAYERS):
        if transport is None:
            break
        total += _queued(transport)
        transport = getattr(transport, "transport", None)
    return total


@implementer(IPushProducer)
class WriteGate:
    """
    Registered on a session's transport, so the transport says when its
    buffer is full (pause) and drained (resume); the session turns that
    into its ``onWritePaused``/``onWriteResumed`` hooks.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.paused = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.session.onWritePaused()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.session.onWriteResumed()

    def stopProducing(self) -> None:
        self.paused = True
