"""
Attacks from inside an authenticated session: messages too big (declared,
fragmented, compressed), too many fragments, too many messages, and
peers that stop answering, stop sending, or stop reading.
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import subprocess
import threading
import time
import zlib
from contextlib import suppress
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.support.common import unavailable
from tests.support.rawclient import BINARY, CONTINUATION, PING, PONG, TEXT, frame

from .harness import (
    CLOSE_TIMEOUT,
    IDLE_TIMEOUT,
    MAX_FRAGMENTS,
    MAX_FRAME,
    MAX_MESSAGE,
    MESSAGE_BURST,
    MESSAGES_PER_SECOND,
    PING_INTERVAL,
    PING_TIMEOUT,
    SEND_BUFFER,
    SESSION_BOUND,
    SLOW_READER_BOUND,
    Addresses,
    KiB,
    MiB,
    Target,
    attack,
    bearer,
    client,
)
from .wire import Wire, Wires

JUNK = os.urandom(64 * KiB)
#: What the kernel may queue for a peer that does not read: twice
#: send_buffer (Linux doubles SO_SNDBUF), and one segment (64 KiB on
#: loopback) that a write may queue past that limit.
KERNEL_BOUND = 2 * SEND_BUFFER + 64 * KiB


def closed_by_server(target: Target, since: int, category: str,
                     code: int | None) -> None:
    """The server logged closing a session for ``category`` with ``code``."""
    target.wait_event(since, event="session_closed", reason=category, code=code)


@pytest.mark.parametrize("announced", [MAX_FRAME + 1, 2**40],
                         ids=["just-over-frame-limit", "one-TiB"])
def test_oversized_frame_closes_1009_from_its_header(
    tls_server: Target, who: Addresses, wires: Wires, announced: int
) -> None:
    """
    A frame header announcing more than max_frame_size: 1009 "message too
    big" on the header alone; the payload pushed anyway (up to 64 MiB) is
    not buffered.
    """
    target = tls_server
    with attack(target, who, f"frame of {announced} bytes", SESSION_BOUND) as bystander:
        wire = wires(target, who.attacker)
        wire.open_session(who.attacker)
        wire.send(frame(length=announced))
        assert wire.wait_close_frame() == (1009, "message too big")
        bystander.during()
        wire.stream(itertools.repeat(JUNK, 1024))
        wire.wait_closed(CLOSE_TIMEOUT + 1)


def test_oversized_fragmented_message_closes_1009(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """Fragments each within max_frame_size, together over max_message_size: 1009."""
    size = 250_000
    fragments = [frame(b"a" * size, TEXT if i == 0 else CONTINUATION, fin=i == 4)
                 for i in range(5)]
    assert size <= MAX_FRAME
    assert 5 * size > MAX_MESSAGE
    target = tls_server
    with attack(target, who, "fragmented 1.25 MB message", SESSION_BOUND) as bystander:
        wire = wires(target, who.attacker)
        wire.open_session(who.attacker)
        wire.stream(fragments[:2])
        bystander.during()
        wire.stream(fragments[2:], until_close_frame=True)
        assert wire.wait_close_frame() == (1009, "message too big")
        wire.answer_close()
        wire.wait_closed(CLOSE_TIMEOUT + 1)


# A raw-deflate stream (window 2**12, as the server asks) of 200 MiB of
# zeros: one flushed segment of 1 MiB of zeros, repeated.  About 200 kB.
_deflate = zlib.compressobj(9, zlib.DEFLATED, -12)
BOMB_SEGMENT = _deflate.compress(bytes(MiB)) + _deflate.flush(zlib.Z_FULL_FLUSH)
BOMB = BOMB_SEGMENT * 200


def test_decompression_bomb_closes_1009(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """200 MiB deflated into 200 kB frames: 1009, inflating at most the limit."""
    assert zlib.decompressobj(-12).decompress(BOMB_SEGMENT) == bytes(MiB)
    assert len(BOMB) < MAX_FRAME  # only the inflated size can be too big
    target = tls_server
    with attack(target, who, "200 MiB deflate bomb", SESSION_BOUND) as bystander:
        wire = wires(target, who.attacker)
        head = wire.open_session(who.attacker,
                                 "permessage-deflate; client_max_window_bits")
        assert head.header("sec-websocket-extensions") == (
            "permessage-deflate; server_no_context_takeover; "
            "client_no_context_takeover; server_max_window_bits=12; "
            "client_max_window_bits=12")
        wire.stream([frame(BOMB, TEXT, fin=False, rsv1=True)])
        bystander.during()
        wire.stream([frame(BOMB, CONTINUATION)], until_close_frame=True)
        # A corrupt deflate stream would be 1007: 1009 is the inflated size.
        assert wire.wait_close_frame() == (1009, "message too big")
        wire.answer_close()
        wire.wait_closed(CLOSE_TIMEOUT + 1)


def test_tiny_fragment_flood_closes_1009(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """One message in 20,000 one-byte frames: 1009 "too many fragments"."""
    count = 20_000
    fragments = [frame(b"[", TEXT, fin=False)] + [
        frame(b" ", CONTINUATION, fin=False) for _ in range(count)]
    target = tls_server
    since = target.mark()
    with attack(target, who, f"{count} tiny fragments", SESSION_BOUND) as bystander:
        wire = wires(target, who.attacker)
        wire.open_session(who.attacker)
        wire.stream(fragments[:MAX_FRAGMENTS])
        bystander.during()
        wire.stream(fragments[MAX_FRAGMENTS:], until_close_frame=True)
        assert wire.wait_close_frame() == (1009, "too many fragments")
        wire.answer_close()
        wire.wait_closed(CLOSE_TIMEOUT + 1)
    closed_by_server(target, since, "fragments", 1009)


def test_message_flood_closes_1008(tls_server: Target, who: Addresses) -> None:
    """
    Tiny messages as fast as the client can send: the burst plus what the
    bucket refills is echoed, then 1008 "rate limit exceeded".
    """
    target = tls_server
    since = target.mark()
    echoes = 0
    with attack(target, who, "message flood", SESSION_BOUND) as bystander, \
            client(target, who.attacker) as ws:
        began = time.monotonic()
        with suppress(ConnectionClosed):
            for i in range(10 * MESSAGE_BURST):
                ws.send("x")
                if i == MESSAGE_BURST // 2:
                    bystander.during()
        while True:
            try:
                got = ws.recv(timeout=5)
            except ConnectionClosed as e:
                closed = e
                break
            assert got == "x"
            echoes += 1
        lasted = time.monotonic() - began
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "rate limit exceeded")
    assert MESSAGE_BURST <= echoes <= MESSAGE_BURST + MESSAGES_PER_SECOND * lasted + 1
    closed_by_server(target, since, "rate_limited", 1008)


def test_ping_flood_closes_1008(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """Pings cost a message token each: a ping flood is closed like a message flood."""
    target = tls_server
    since = target.mark()
    with attack(target, who, "ping flood", SESSION_BOUND) as bystander:
        wire = wires(target, who.attacker)
        wire.open_session(who.attacker)
        wire.stream([frame(b"p", PING)] * (MESSAGE_BURST // 2))
        bystander.during()
        wire.stream(itertools.repeat(frame(b"p", PING), 100 * MESSAGE_BURST),
                    until_close_frame=True)
        assert wire.wait_close_frame() == (1008, "rate limit exceeded")
        wire.answer_close()
        wire.wait_closed(CLOSE_TIMEOUT + 1)
    closed_by_server(target, since, "rate_limited", 1008)


def test_dead_peer_is_dropped_after_ping_timeout(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    A peer that goes silent (no pong, no data; only reads) is dropped
    without a close handshake at ping_interval + ping_timeout.
    """
    target = tls_server
    since = target.mark()
    deadline = PING_INTERVAL + PING_TIMEOUT
    with attack(target, who, "dead peer", SESSION_BOUND) as bystander:
        wire = wires(target, who.attacker)
        wire.open_session(who.attacker)
        bystander.during()
        lasted = wire.wait_closed(deadline + 3) - wire.opened_at
    print(f"dead peer dropped {lasted:.2f} s after the upgrade")
    assert PING in [opcode for opcode, _ in wire.frames()]
    assert wire.close_frame() is None
    assert deadline - 0.25 <= lasted <= deadline + 1
    closed_by_server(target, since, "dead_peer", None)


def test_idle_peer_closes_1000_at_idle_timeout(
    tls_server: Target, who: Addresses
) -> None:
    """A peer that answers pings but sends no message: 1000 "idle timeout"."""
    target = tls_server
    since = target.mark()
    with attack(target, who, "idle peer", SESSION_BOUND) as bystander, \
            client(target, who.attacker) as ws:
        began = time.monotonic()
        bystander.during()
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=IDLE_TIMEOUT + 3)
        lasted = time.monotonic() - began
    print(f"idle peer closed after {lasted:.2f} s")
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1000, "idle timeout")
    assert IDLE_TIMEOUT - 0.25 <= lasted <= IDLE_TIMEOUT + 1
    closed_by_server(target, since, "idle", 1000)


def test_non_reading_peer_is_dropped_past_max_write_buffer(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    Echo requests from a peer that never reads: the session is closed
    (1008 "slow consumer") and its TCP connection aborted once
    max_write_buffer is queued; the server's memory stays bounded.
    """
    message = frame(b"a" * 250_000, BINARY)
    target = tls_server
    since = target.mark()
    with attack(target, who, "non-reading peer", SLOW_READER_BOUND) as bystander:
        wire = wires(target, who.attacker, rcvbuf=64 * KiB)
        wire.open_session(who.attacker)
        with SendQueue(target.port, wire.sock.getsockname()) as kernel:
            # Half a MB of echoes cannot pass the 1 MiB queue limit yet.
            sent = wire.stream([message, message], read=False)
            assert not wire.closed
            assert kernel.wait_queued(5), "nothing queued for a peer that reads nothing"
            bystander.during()
            sent += wire.stream(itertools.repeat(message, 200), read=False)
            wire.wait_closed(5)
    print(f"non-reading peer sent {sent / MiB:.1f} MiB before the drop; the "
          f"server socket's kernel send queue peaked at {kernel.peak / KiB:.0f} "
          f"KiB in {kernel.samples} samples (bound 2 x send_buffer + one "
          f"segment = {KERNEL_BOUND / KiB:.0f} KiB)")
    assert sent < 200 * len(message)
    assert kernel.samples >= 1
    assert 0 < kernel.peak <= KERNEL_BOUND
    closed_by_server(target, since, "slow_consumer", 1008)


class SendQueue:
    """
    Samples, with ``ss``, the kernel send queue (Send-Q: bytes the peer has
    not acknowledged) of the server's socket for one connection, every
    10 ms while the block runs: memory the server's RSS does not show.
    """

    def __init__(self, port: int, client: tuple[str, int]) -> None:
        if shutil.which("ss") is None:
            unavailable("ss (Debian package iproute2) is not installed")
        self._filter = (f"( sport = :{port} and dst {client[0]} "
                        f"and dport = :{client[1]} )")
        self.peak = self.samples = 0
        self._stop = threading.Event()
        self._queued = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            out = subprocess.run(["ss", "-tnH", "state", "established",
                                  self._filter], capture_output=True, text=True,
                                 check=True).stdout.split()
            if len(out) >= 2:
                self.samples += 1
                self.peak = max(self.peak, int(out[1]))
                if self.peak > 0:
                    self._queued.set()
            if self._stop.wait(0.01):
                return

    def wait_queued(self, timeout: float) -> bool:
        """Whether a sample saw bytes queued within ``timeout`` seconds: the
        attack goes on only once one has, or a fast drop could end the
        connection before ``ss`` ever looked at it."""
        return self._queued.wait(timeout)

    def __enter__(self) -> SendQueue:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _fragmented(count: int) -> bytes:
    """One text message in ``count`` one-byte frames."""
    return (frame(b"f", TEXT, fin=False)
            + b"".join(frame(b"f", CONTINUATION, fin=False) for _ in range(count - 2))
            + frame(b"f", CONTINUATION))


#: What six sessions flood with, 1,000 frames per write.
FRAME_FLOODS = {
    "empty-pongs": b"".join(frame(b"", PONG) for _ in range(1000)),
    "125-byte-pongs": b"".join(frame(b"p" * 125, PONG) for _ in range(1000)),
    "pings": b"".join(frame(b"", PING) for _ in range(1000)),
    "messages": b"".join(frame(b"m", TEXT) for _ in range(1000)),
    "fragments": _fragmented(MAX_FRAGMENTS) * (1000 // MAX_FRAGMENTS),
}
FLOODERS = 6
FLOOD_SECONDS = 2.0


class Prober:
    """Back-to-back echoes on one session, each round trip timed."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.samples: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        # One probe every 30 ms: within the session's own message rate.
        while not self._stop.wait(0.03):
            n += 1
            began = time.monotonic()
            try:
                self.ws.send(f"probe {n}")
                got = self.ws.recv(timeout=5)
            except Exception as e:
                self.errors.append(repr(e))
                return
            if got != f"probe {n}":
                self.errors.append(f"probe {n} got {got!r}")
            self.samples.append((began, time.monotonic() - began))

    def p50(self, start: float, end: float) -> tuple[float, int]:
        """Median round trip (ms) of the probes begun within ``[start, end)``."""
        within = [rtt for at, rtt in self.samples if start <= at < end]
        return (statistics.median(within) * 1000 if within else float("nan"),
                len(within))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _flood(target: Target, source: str, chunk: bytes, until: float,
           verdicts: list[tuple[int, str] | None], errors: list[str]) -> None:
    """Open sessions from ``source`` and flood each with ``chunk`` until the
    server closes it; again and again until ``until``.  A refused handshake
    (429 once the address's places are taken, or dropped at accept once its
    connect budget is spent) is retried."""

    try:
        while time.monotonic() < until:
            wire = Wire(target, source)
            try:
                try:
                    response = wire.upgrade(headers=bearer(target, source))
                except (AssertionError, OSError):  # dropped at accept
                    time.sleep(0.05)
                    continue
                if response.status != 101:
                    assert response.status == 429, response
                    time.sleep(0.05)
                    continue
                wire.flood(chunk, 10)
                verdicts.append(wire.close_frame())
            finally:
                wire.close()
    except Exception as e:
        errors.append(repr(e))


@pytest.mark.parametrize("kind", list(FRAME_FLOODS))
def test_frame_floods_of_every_kind_close_1008(
    tls_server: Target, who: Addresses, kind: str
) -> None:
    """
    Six sessions at once flood frames of one kind (empty or 125-byte
    unsolicited pongs, pings, one-byte messages, one-byte fragments),
    reconnecting whenever they are closed: every flooding session is
    closed with 1008 "rate limit exceeded" (each frame costs a message
    token and its bytes), the bystander is served throughout, and its
    median round trip during the flood is printed beside its quiet one.
    """
    target = tls_server
    since = target.mark()
    verdicts: list[tuple[int, str] | None] = []
    errors: list[str] = []
    with attack(target, who, f"{kind} flood", SESSION_BOUND) as bystander, \
            client(target, who.good, forwarded_for=who.good_v6) as probe_ws:
        prober = Prober(probe_ws)
        try:
            time.sleep(1.0)
            quiet_end = flood_start = time.monotonic()
            until = flood_start + FLOOD_SECONDS
            threads = [threading.Thread(target=_flood, args=(
                target, source, FRAME_FLOODS[kind], until, verdicts, errors))
                for source in who.flooders(FLOODERS)]
            for thread in threads:
                thread.start()
            bystander.during()
            for thread in threads:
                thread.join(FLOOD_SECONDS + 30)
            flood_end = time.monotonic()
        finally:
            prober.stop()
    assert not errors, errors
    assert not prober.errors, prober.errors
    quiet, n_quiet = prober.p50(quiet_end - 1.0, quiet_end)
    during, n_during = prober.p50(flood_start, flood_end)
    print(f"{kind} flood: {len(verdicts)} flooding sessions; bystander p50 "
          f"{quiet:.2f} ms quiet ({n_quiet} probes), {during:.2f} ms during the "
          f"flood ({n_during} probes): {during / quiet:.1f}x")
    assert len(verdicts) >= FLOODERS
    assert set(verdicts) == {(1008, "rate limit exceeded")}
    closed_by_server(target, since, "rate_limited", 1008)


def server_cpu(pid: int) -> float:
    """The server's CPU time so far (user + system), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_one_byte_tls_records_are_charged_and_closed_1008(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    A session whose frames come as TLS records of one byte each: each
    record costs the server work whatever it carries, so the byte budget
    charges it as at least RECORD_COST bytes and the session is closed 1008
    "rate limit exceeded" long before its millions of records are read.
    """
    target = tls_server
    since = target.mark()
    with attack(target, who, "one-byte TLS records", SESSION_BOUND) as bystander:
        wire = wires(target, who.attacker)
        wire.open_session(who.attacker)
        raw = wire.tiny_records(frame(b"r" * 60_000, BINARY) * 5)
        before = server_cpu(target.pid)
        sent = wire.push(raw, 20)
        assert wire.wait_close_frame(10) == (1008, "rate limit exceeded")
        spent = server_cpu(target.pid) - before
        bystander.during()
    print(f"one-byte records: {sent / len(raw):.0%} of {len(raw) / MiB:.1f} MiB "
          f"pushed before the close; server CPU {spent:.2f} s")
    closed_by_server(target, since, "rate_limited", 1008)
