"""
The rules of an open session, without I/O: throttling, fragment counts,
heartbeats, idleness and lifetime.

A session is a handful of numbers updated in O(1) per frame.  Time is
an argument: the protocol passes ``now`` and acts on the verdicts.  The
timed checks share one deadline (:meth:`SessionGuard.next_deadline`), so
a connection needs a single timer, rescheduled only when it fires, never
per message.

Throttling is charged per frame, as each frame header is read and
before its payload is: every frame of every opcode (data, continuation,
ping, pong, close) costs one token of the message bucket and its payload
length in the byte bucket.  A control frame is as much work for the
server as a small message, so a flood of pongs (which need no answer)
or of tiny fragments is a flood like any other.  A compressed message
is charged its wire size frame by frame, then whatever it inflated to
beyond that once it is whole.
"""

from __future__ import annotations

import attrs

from securews.rules.buckets import TokenBucket
from securews.rules.codes import Close, CloseCode
from securews.rules.settings import LimitsSettings, RateLimitSettings

__all__ = ["CREDENTIAL_EXPIRED", "RECORD_COST", "Close", "Drop", "Ping", "Renew",
           "SessionGuard"]



@attrs.frozen
class Drop:
    """Drop the TCP connection without a close handshake."""

    category: str


@attrs.frozen
class Ping:
    """Send a ping now."""


@attrs.frozen
class Renew:
    """The credential's time is up: ask whether it is still good
    (:attr:`~securews.auth.interfaces.Principal.renew`), then call
    :meth:`SessionGuard.renewed` or close with :data:`CREDENTIAL_EXPIRED`."""


#: The least a TLS record costs in the byte bucket (see
#: :meth:`SessionGuard.records`).
RECORD_COST = 256

_RATE_LIMITED = Close(CloseCode.POLICY_VIOLATION, "rate limit exceeded", "rate_limited")
_TOO_MANY_FRAGMENTS = Close(CloseCode.MESSAGE_TOO_BIG, "too many fragments",
                            "fragments")
_LIFETIME = Close(CloseCode.GOING_AWAY, "session lifetime", "lifetime")
_IDLE = Close(CloseCode.NORMAL, "idle timeout", "idle")
#: What a session whose credential ran out (or was refused when asked
#: about again) is closed with.
CREDENTIAL_EXPIRED = Close(CloseCode.CREDENTIAL, "credential expired",
                           "credential_expired")


class SessionGuard:
    """
    One session's limits.

    :param opened_at: when the session opened (the clock's seconds).
    :param expires_at: when the session's credential stops being valid
        (``Principal.expires_at``), or ``None``.
    :param renewable: whether the credential can be asked about again at
        that moment (``Principal.renew``) rather than end the session.
    """

    __slots__ = (
        "_expires_at",
        "_fragments",
        "_last_data",
        "_last_traffic",
        "_next_ping",
        "_ping_sent",
        "_renewable",
        "_renewing",
        "_wire",
        "bytes",
        "limits",
        "messages",
        "opened_at",
    )

    def __init__(self, limits: LimitsSettings, rates: RateLimitSettings,
                 opened_at: float, *, expires_at: float | None = None,
                 renewable: bool = False) -> None:
        self.limits = limits
        self._expires_at = expires_at
        self._renewable = renewable
        self._renewing = False
        self.opened_at = opened_at
        self.messages = TokenBucket(rates.messages_per_second, rates.message_burst)
        self.bytes = TokenBucket(rates.bytes_per_second, rates.bytes_burst)
        self._fragments = 0
        self._wire = 0
        self._last_data = opened_at
        self._last_traffic = opened_at
        self._ping_sent: float | None = None
        self._next_ping = opened_at + limits.ping_interval

    # -- events ------------------------------------------------------------

    def traffic(self, now: float) -> None:
        """Bytes arrived from the peer: it is alive."""
        self._last_traffic = now

    def frame(self, opcode: int, length: int, now: float) -> Close | None:
        """
        A frame header was read: ``opcode`` and payload ``length``.

        It costs one message token and ``length`` byte tokens, whatever
        its opcode.  A data frame also counts towards the current
        message's fragments (1009 past ``max_fragments``).
        """
        if opcode < 8:
            self._fragments += 1
            if self._fragments > self.limits.max_fragments:
                return _TOO_MANY_FRAGMENTS
            self._wire += length
        taken = self.messages.take(now)
        if not (self.bytes.take(now, length) and taken):
            return _RATE_LIMITED
        return None

    def records(self, count: int, size: int, now: float) -> Close | None:
        """
        ``count`` TLS records carrying ``size`` bytes arrived.

        Every record costs the server work of its own (decryption, a read
        through the WebSocket parser), so a record carrying less than
        :data:`RECORD_COST` bytes is charged that much anyway: the shortfall
        is taken from the byte bucket (the bytes themselves are charged by
        the frames they form).  Full records cost nothing more.
        """
        shortfall = count * RECORD_COST - size
        if shortfall > 0 and not self.bytes.take(now, shortfall):
            return _RATE_LIMITED
        return None

    def message(self, size: int, now: float) -> Close | None:
        """
        A whole data message of ``size`` bytes arrived (inflated, if it
        was compressed).

        Its frames were charged as they came; only what it inflated to
        beyond their wire size is charged now.
        """
        extra = size - self._wire
        self._fragments = 0
        self._wire = 0
        self._last_data = now
        self._last_traffic = now
        if extra > 0 and not self.bytes.take(now, extra):
            return _RATE_LIMITED
        return None

    def renewed(self, expires_at: float | None, renewable: bool) -> None:
        """The credential was vouched for again, until ``expires_at``."""
        self._expires_at = expires_at
        self._renewable = renewable
        self._renewing = False

    # -- time --------------------------------------------------------------

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do."""
        deadlines = [self._last_data + self.limits.idle_timeout]
        if self._expires_at is not None and not self._renewing:
            deadlines.append(self._expires_at)
        if self.limits.max_lifetime:
            deadlines.append(self.opened_at + self.limits.max_lifetime)
        if self._ping_sent is None:
            deadlines.append(self._next_ping)
        else:
            deadlines.append(self._ping_sent + self.limits.ping_timeout)
        return min(deadlines)

    def tick(self, now: float) -> Close | Drop | Ping | Renew | None:
        """
        What the time demands, most severe first: a peer silent since our
        ping is dropped; a credential whose time is up closes the session
        with 4401, or is asked about again when it can be (one renewal at
        a time; no expiry verdict meanwhile); an expired lifetime closes
        with 1001; an idle session (no data message, pongs do not count)
        closes with 1000; a due heartbeat is a ping.
        """
        if self._ping_sent is not None:
            if self._last_traffic >= self._ping_sent:
                self._ping_sent = None
            elif now >= self._ping_sent + self.limits.ping_timeout:
                return Drop("dead_peer")
        expires_at = self._expires_at
        if expires_at is not None and not self._renewing and now >= expires_at:
            if not self._renewable:
                return CREDENTIAL_EXPIRED
            self._renewing = True
            return Renew()
        lifetime = self.limits.max_lifetime
        if lifetime and now >= self.opened_at + lifetime:
            return _LIFETIME
        if now >= self._last_data + self.limits.idle_timeout:
            return _IDLE
        if self._ping_sent is None and now >= self._next_ping:
            self._ping_sent = now
            self._next_ping = now + self.limits.ping_interval
            return Ping()
        return None
