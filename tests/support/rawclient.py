"""
A WebSocket client driven by hand, in the test's thread, for traffic no
well-behaved library sends: stalled or partial TLS, request heads byte by
byte, masked frames built by hand (:func:`frame`), peers that stop reading
or answering.  Shared by test_session_e2e.py and the attack suite
(tests/attacks/wire.py extends :class:`RawClient`).
"""

from __future__ import annotations

import base64
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from contextlib import suppress

import attrs

__all__ = [
    "BINARY", "CLOSE", "CONTINUATION", "PING", "PONG", "TEXT", "RawClient",
    "Response", "frame", "parse_head", "upgrade_request",
]

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
KiB = 2**10


def masked(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(payload: bytes = b"", opcode: int = TEXT, *, fin: bool = True,
          rsv1: bool = False, length: int | None = None) -> bytes:
    """A masked client frame; ``length`` announces a size without the payload."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 2**16:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + masked(payload, mask)


@attrs.frozen
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    head: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower(), [])
        assert len(values) <= 1, values
        return values[0] if values else None


def parse_head(head: bytes) -> tuple[int, dict[str, list[str]]]:
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = (lines[0] + " ").split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(status), headers


def upgrade_request(path: str = "/ws", headers: dict[str, str] | None = None,
                    origin: str | None = None) -> bytes:
    """A WebSocket opening handshake with a fresh key."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawClient:
    """
    One connection to ``127.0.0.1:port``: the socket and, unless
    ``use_tls`` is false, an ``ssl.SSLObject`` over memory buffers, so the
    test decides exactly what is written (TLS records included) and when.

    :param source: the local address to bind (any loopback address).
    :param rcvbuf: the socket's receive buffer, to make a reader slow.
    """

    def __init__(self, port: int, context: ssl.SSLContext, *, use_tls: bool = True,
                 source: str | None = None, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(10)
        self.started = time.monotonic()
        self.closed_at: float | None = None
        try:
            self.sock.connect(("127.0.0.1", port))
        except ConnectionResetError:  # accepted and dropped at once
            self.closed_at = time.monotonic()
        self.use_tls = use_tls
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname="127.0.0.1")
        self.secure = not use_tls
        self.raw = bytearray()  # every byte off the socket
        self.received = bytearray()  # what the application layer got
        self.opened_at = 0.0

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def client_hello(self) -> bytes:
        with suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def pump(self, timeout: float) -> None:
        """Take in what the server sent, waiting up to ``timeout`` for it."""
        if self.closed:
            return
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return
        try:
            data = self.sock.recv(256 * KiB)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_at = time.monotonic()
            return
        self.raw += data
        if not self.use_tls:
            self.received += data
            return
        self.incoming.write(data)
        while self.secure:
            try:
                chunk = self.tls.read(256 * KiB)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            self.received += chunk

    def start_tls(self) -> None:
        if not self.use_tls:
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self.pump(deadline - time.monotonic())
                assert not self.closed, "the server dropped the TLS handshake"
                assert time.monotonic() < deadline, "TLS handshake stalled"
        self._flush()
        self.secure = True

    def send(self, data: bytes) -> None:
        if self.use_tls:
            self.tls.write(data)
            self._flush()
        else:
            self.sock.sendall(data)

    def wait_for(self, done: Callable[[], bool], limit: float = 5) -> None:
        deadline = time.monotonic() + limit
        while not done() and not self.closed:
            assert time.monotonic() < deadline, bytes(self.received[:300])
            self.pump(deadline - time.monotonic())

    def response(self, limit: float = 5) -> Response:
        """The server's whole HTTP response (its head and Content-Length body)."""

        def complete() -> bool:
            head, found, rest = bytes(self.received).partition(b"\r\n\r\n")
            if not found:
                return False
            length = parse_head(head)[1].get("content-length", ["0"])[0]
            return len(rest) >= int(length)

        self.wait_for(complete, limit)
        head, found, rest = bytes(self.received).partition(b"\r\n\r\n")
        assert found, f"no HTTP response: {bytes(self.received)[:300]!r}"
        status, headers = parse_head(head)
        body = rest[:int(headers.get("content-length", ["0"])[0])]
        if status == 101:
            self.received = bytearray(rest)
            self.opened_at = time.monotonic()
        return Response(status, headers, body, head)

    def request(self, head: bytes, body: bytes = b"") -> Response:
        """TLS, then ``head`` and ``body``; the response."""
        self.start_tls()
        self.send(head + body)
        return self.response()

    def stream(self, chunks: Iterable[bytes], *, read: bool = True,
               until_close_frame: bool = False) -> int:
        """
        Send ``chunks`` as fast as the server takes them (reading what it
        sends in between unless ``read`` is false) and stop when the server
        closes the connection (or, with ``until_close_frame``, starts
        closing the session).  Returns the bytes sent.
        """
        sent = 0
        for chunk in chunks:
            if read:
                self.pump(0)
            if self.closed or (until_close_frame and self.close_frame()):
                break
            try:
                self.send(chunk)
            except TimeoutError:
                raise AssertionError("the server stopped reading") from None
            except OSError:  # reset or broken pipe: the server closed it
                break
            sent += len(chunk)
        return sent

    def tiny_records(self, data: bytes) -> bytes:
        """``data`` as TLS records of one byte each, encrypted, ready to push
        (the session's TLS must be up)."""
        assert self.use_tls
        assert self.secure
        for i in range(len(data)):
            self.tls.write(data[i:i + 1])
        return self.outgoing.read()

    def push(self, raw: bytes, limit: float) -> int:
        """
        Send bytes already encrypted (or plaintext without TLS), never
        blocking, until they are all sent, the server starts closing, or
        ``limit`` seconds pass.  Returns the bytes sent.
        """
        deadline = time.monotonic() + limit
        view, sent = memoryview(raw), 0
        while sent < len(raw) and time.monotonic() < deadline:
            self.pump(0)
            if self.closed or self.close_frame() is not None:
                break
            _, writable, _ = select.select([], [self.sock], [], 0.05)
            if not writable:
                continue
            try:
                sent += self.sock.send(view[sent:sent + 256 * KiB], socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                break
        return sent

    def flood(self, chunk: bytes, limit: float) -> int:
        """
        Send ``chunk`` over and over, never blocking, until the server
        starts closing the session or the connection (or ``limit`` s pass).

        Unlike :meth:`stream`, this keeps reading while the server has
        stopped reading: a flooder blocked in ``send`` would miss the close
        frame the server sent before it stopped.  Returns the bytes sent.
        """
        deadline = time.monotonic() + limit
        pending, sent = b"", 0
        while time.monotonic() < deadline:
            self.pump(0)
            if self.closed or self.close_frame() is not None:
                break
            if not pending:
                if self.use_tls:
                    self.tls.write(chunk)
                    pending = self.outgoing.read()
                else:
                    pending = chunk
            _, writable, _ = select.select([], [self.sock], [], 0.05)
            if not writable:
                continue
            try:
                n = self.sock.send(pending, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:  # reset: the server is gone
                break
            pending, sent = pending[n:], sent + n
        return sent

    def wait_closed(self, limit: float) -> float:
        """Read until the server closes TCP (at most ``limit`` s); when it did."""
        deadline = time.monotonic() + limit
        while not self.closed and time.monotonic() < deadline:
            self.pump(deadline - time.monotonic())
        assert self.closed_at is not None, f"still open after {limit} s"
        return self.closed_at

    def frames(self) -> list[tuple[int, bytes]]:
        """The complete (unmasked) frames the server sent, in order."""
        found, data, i = [], bytes(self.received), 0
        while len(data) - i >= 2:
            opcode, n, j = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
            if n >= 126:
                size = 2 if n == 126 else 8
                if len(data) < j + size:
                    break
                n = int.from_bytes(data[j:j + size], "big")
                j += size
            if len(data) < j + n:
                break
            found.append((opcode, data[j:j + n]))
            i = j + n
        return found

    def wait_frames(self, count: int, limit: float = 5) -> list[tuple[int, bytes]]:
        """The first ``count`` frames the server sends."""
        self.wait_for(lambda: len(self.frames()) >= count, limit)
        return self.frames()[:count]

    def close_frame(self) -> tuple[int, str] | None:
        for opcode, payload in self.frames():
            if opcode == CLOSE:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()
        return None

    def wait_close_frame(self, limit: float = 5) -> tuple[int, str]:
        self.wait_for(lambda: self.close_frame() is not None, limit)
        verdict = self.close_frame()
        assert verdict is not None, "closed without a close frame"
        return verdict

    def answer_close(self) -> None:
        """Finish the closing handshake the server started, TLS included,
        so that it can let go at once rather than at close_timeout."""
        code, _ = self.wait_close_frame()
        # The server may be gone already (it drops the connection as soon
        # as it has our close frame): then there is nothing left to finish.
        with suppress(OSError):  # ssl.SSLError included
            self.send(frame(code.to_bytes(2, "big"), CLOSE))
            if self.use_tls:
                self.tls.unwrap()
        with suppress(OSError):
            self._flush()

    def close(self) -> None:
        self.sock.close()
