"""
Attacks from inside an authenticated session: messages too big (declared,
fragmented, compressed), too many fragments, too many messages, and
peers that stop answering, stop sending, or stop reading.
"""

from __future__ import annotations

import itertools
import os
import time
import zlib
from contextlib import suppress

import pytest
from rawclient import BINARY, CONTINUATION, PING, TEXT, frame
from websockets.exceptions import ConnectionClosed

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
    SESSION_BOUND,
    SLOW_READER_BOUND,
    Addresses,
    KiB,
    MiB,
    Target,
    attack,
    client,
)
from .wire import Wires

JUNK = os.urandom(64 * KiB)


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
        # Half a MB of echoes cannot pass the 1 MiB queue limit yet.
        sent = wire.stream([message, message], read=False)
        assert not wire.closed
        bystander.during()
        sent += wire.stream(itertools.repeat(message, 200), read=False)
        wire.wait_closed(5)
    print(f"non-reading peer sent {sent / MiB:.1f} MiB before the drop")
    assert sent < 200 * len(message)
    closed_by_server(target, since, "slow_consumer", 1008)
