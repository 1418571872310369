"""
How much a connection has written that the peer has not yet taken, and
how much of that the kernel may hold.

Twisted buffers writes without limit: a client that asks for data and
never reads grows the server's memory forever.  securews measures what
is queued on the transport after each message it sends and closes a
connection whose queue passes ``limits.max_write_buffer``.  Twisted has
no public API for the queue length, so this reads the buffers of the
transports securews builds (``TLSMemoryBIOProtocol`` over a TCP
``FileDescriptor``) and is tested against real sockets.

Below user space, the kernel queues what the peer has not acknowledged
in the socket's send buffer, which Linux grows by itself up to
``net.ipv4.tcp_wmem`` (4 MiB by default) and which no process counts: a
client that never reads would make every connection hold megabytes
outside the server's RSS.  :func:`limit_send_buffer` fixes the buffer at
accept time (``limits.send_buffer``; Linux doubles the value for its own
bookkeeping), so what a non-reading client can make the server hold is
at most ``max_write_buffer`` in user space plus twice ``send_buffer`` in
the kernel, and one TCP segment (64 KiB on loopback) that Linux lets a
write queue past the buffer's limit.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from securews._twisted import queued_bytes

__all__ = ["WriteGate", "buffered_bytes", "limit_send_buffer"]

_MAX_LAYERS = 4


def buffered_bytes(transport: Any) -> int:
    """Bytes written to ``transport`` (and the transports under it) not yet sent."""
    total = 0
    for _ in range(_MAX_LAYERS):
        if transport is None:
            break
        total += queued_bytes(transport)
        transport = getattr(transport, "transport", None)
    return total


def limit_send_buffer(transport: Any, size: int) -> bool:
    """
    Fix the kernel send buffer of the socket under ``transport`` (through
    TLS and PROXY layers) at ``size`` bytes.

    :returns: whether it was set; a transport without a socket (in-memory
        tests) is left alone.
    """
    for _ in range(_MAX_LAYERS):
        # Wrapping layers (TLS, PROXY) hold the next one in ``transport``;
        # the TLS layer's own getHandle would be its OpenSSL connection.
        below = getattr(transport, "__dict__", {}).get("transport")
        if below is None:
            break
        transport = below
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return False
    try:
        handle = get_handle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except (OSError, AttributeError, TypeError):
        return False
    return True


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

    def release(self) -> None:
        """
        The session ended: it is let go of.  A transport keeps its
        producer after a connection is lost; through this gate it would
        keep the session, and the session its transport, alive for the
        cyclic garbage collector to find.
        """
        self.session = None

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            if self.session is not None:
                self.session.onWritePaused()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            if self.session is not None:
                self.session.onWriteResumed()

    def stopProducing(self) -> None:
        self.paused = True
