"""
The rules of an open session, without I/O: throttling, fragment counts,
heartbeats, idleness and lifetime.

A session is a handful of numbers updated in O(1) per message.  Time is
an argument: the protocol passes ``now`` and acts on the verdicts.  The
timed checks share one deadline (:meth:`SessionGuard.next_deadline`), so
a connection needs a single timer, rescheduled only when it fires, never
per message.
"""

from __future__ import annotations

import attrs

from securews.ratelimit import TokenBucket
from securews.settings import LimitsSettings, RateLimitSettings

__all__ = ["Close", "Drop", "Ping", "SessionGuard"]

NORMAL, GOING_AWAY, POLICY, TOO_BIG = 1000, 1001, 1008, 1009


@attrs.frozen
class Close:
    """Start the close handshake with ``code`` and a fixed ``reason``."""

    code: int
    reason: str
    category: str


@attrs.frozen
class Drop:
    """Drop the TCP connection without a close handshake."""

    category: str


@attrs.frozen
class Ping:
    """Send a ping now."""


class SessionGuard:
    """
    One session's limits.

    :param opened_at: when the session opened (the clock's seconds).
    """

    __slots__ = (
        "_fragments",
        "_last_data",
        "_last_traffic",
        "_next_ping",
        "_ping_sent",
        "bytes",
        "limits",
        "messages",
        "opened_at",
    )

    def __init__(self, limits: LimitsSettings, rates: RateLimitSettings,
                 opened_at: float) -> None:
        self.limits = limits
        self.opened_at = opened_at
        self.messages = TokenBucket(rates.messages_per_second, rates.message_burst)
        self.bytes = TokenBucket(rates.bytes_per_second, rates.bytes_burst)
        self._fragments = 0
        self._last_data = opened_at
        self._last_traffic = opened_at
        self._ping_sent: float | None = None
        self._next_ping = opened_at + limits.ping_interval

    # -- events ------------------------------------------------------------

    def traffic(self, now: float) -> None:
        """Bytes arrived from the peer: it is alive."""
        self._last_traffic = now

    def frame(self) -> Close | None:
        """A data frame of the current message began."""
        self._fragments += 1
        if self._fragments > self.limits.max_fragments:
            return Close(TOO_BIG, "too many fragments", "fragments")
        return None

    def message(self, size: int, now: float) -> Close | None:
        """
        A whole message of ``size`` bytes arrived.

        Both buckets are charged; a client over either rate is closed
        with 1008.
        """
        self._fragments = 0
        self._last_data = now
        self._last_traffic = now
        taken = self.messages.take(now)
        if not (self.bytes.take(now, size) and taken):
            return Close(POLICY, "rate limit exceeded", "rate_limited")
        return None

    def control(self, now: float) -> Close | None:
        """A ping arrived: it costs one message token, like a message."""
        self._last_traffic = now
        if not self.messages.take(now):
            return Close(POLICY, "rate limit exceeded", "rate_limited")
        return None

    # -- time --------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do."""
        deadlines = [self._last_data + self.limits.idle_timeout]
        if self.limits.max_lifetime:
            deadlines.append(self.opened_at + self.limits.max_lifetime)
        if self._ping_sent is None:
            deadlines.append(self._next_ping)
        else:
            deadlines.append(self._ping_sent + self.limits.ping_timeout)
        return min(deadlines)

    def tick(self, now: float) -> Close | Drop | Ping | None:
        """
        What the time demands, most severe first: a peer silent since our
        ping is dropped; an expired lifetime closes with 1001; an idle
        session (no data message, pongs do not count) closes with 1000; a
        due heartbeat is a ping.
        """
        if self._ping_sent is not None:
            if self._last_traffic >= self._ping_sent:
                self._ping_sent = None
            elif now >= self._ping_sent + self.limits.ping_timeout:
                return Drop("dead_peer")
        lifetime = self.limits.max_lifetime
        if lifetime and now >= self.opened_at + lifetime:
            return Close(GOING_AWAY, "session lifetime", "lifetime")
        if now >= self._last_data + self.limits.idle_timeout:
            return Close(NORMAL, "idle timeout", "idle")
        if self._ping_sent is None and now >= self._next_ping:
            self._ping_sent = now
            self._next_ping = now + self.limits.ping_interval
            return Ping()
        return None
