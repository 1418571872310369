"""
One node's shared state, in its own memory: the default without a
cluster.

Every answer is an already-fired Deferred: the admission path goes on in
the same call, with no reactor turn and no cost to measure.
"""

from __future__ import annotations

import math

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from securews.limits.interfaces import (
    IRateLimiter,
    IRevocations,
    ISessionCounter,
    RateVerdict,
)
from securews.rules.buckets import BucketTable
from securews.rules.counters import ConnectionCounter, Lease

__all__ = ["MAX_REVOCATIONS", "MAX_TRACKED_CLIENTS", "MemoryRateLimiter",
           "MemoryRevocations", "MemorySessionCounter", "RevocationsFull"]

#: Most client networks whose connection rate is tracked at once (LRU).
MAX_TRACKED_CLIENTS = 100_000
#: Most revocations held at once; beyond, a new one is refused (never is
#: an older one forgotten before it lapses, which would lift it).
MAX_REVOCATIONS = 100_000


@implementer(IRateLimiter)
class MemoryRateLimiter:
    """Token buckets per key in a bounded table (see :class:`BucketTable`)."""

    def __init__(self, rate: float, burst: float, clock: IReactorTime, *,
                 max_entries: int = MAX_TRACKED_CLIENTS) -> None:
        self.rate = rate
        self.burst = burst
        self.table = BucketTable(rate, burst, max_entries=max_entries)
        self._clock = clock

    def take_now(self, key: str) -> RateVerdict:
        """:meth:`take`, answered directly (for callers that must decide at
        once, such as the accept-time check)."""
        now = self._clock.seconds()
        if self.table.take(key, now):
            return RateVerdict(True)
        return RateVerdict(False, self.table.retry_after(key, now))

    def take(self, key: str) -> Deferred[RateVerdict]:
        return succeed(self.take_now(key))


@implementer(ISessionCounter)
class MemorySessionCounter:
    """Places per key (:class:`ConnectionCounter`), handed out as leases."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counter = ConnectionCounter(limit)

    def acquire_now(self, key: str) -> Lease | None:
        """:meth:`acquire`, answered directly."""
        return self.counter.lease(key)

    def acquire(self, key: str) -> Deferred[Lease | None]:
        return succeed(self.acquire_now(key))

    def count(self, key: str) -> Deferred[int]:
        return succeed(self.counter.count(key))

    def __len__(self) -> int:
        """How many keys hold a place."""
        return len(self.counter)


class RevocationsFull(Exception):
    """The revocation table is full of entries that have not lapsed."""


@implementer(IRevocations)
class MemoryRevocations:
    """
    Revocations held until they lapse, bounded by ``max_entries``.

    :param clock: tells when entries lapse and when a principal was revoked.
    """

    def __init__(self, clock: IReactorTime, *,
                 max_entries: int = MAX_REVOCATIONS) -> None:
        self._clock = clock
        self._max = max_entries
        #: principal -> (revoked at, until)
        self._principals: dict[str, tuple[float, float]] = {}
        #: jti -> until
        self._tokens: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._principals) + len(self._tokens)

    def _sweep(self, now: float) -> None:
        for key in [k for k, (_, until) in self._principals.items() if until <= now]:
            del self._principals[key]
        for key in [k for k, until in self._tokens.items() if until <= now]:
            del self._tokens[key]

    def revoke(self, principal: str | None = None, jti: str | None = None, *,
               until: float) -> Deferred[None]:
        if (principal is None) == (jti is None):
            return fail(ValueError("revoke a principal or a token (jti), one"))
        if not math.isfinite(until):
            return fail(ValueError("until must be a finite time"))
        now = self._clock.seconds()
        if until <= now:
            return succeed(None)  # over already: nothing to hold
        if len(self) >= self._max:
            self._sweep(now)
            if len(self) >= self._max:
                return fail(RevocationsFull())
        if principal is not None:
            _, held = self._principals.get(principal, (now, until))
            self._principals[principal] = (now, max(held, until))
        else:
            assert jti is not None
            self._tokens[jti] = max(self._tokens.get(jti, until), until)
        return succeed(None)

    def revoked(self, principal: str, jti: str | None = None,
                issued_at: float | None = None) -> Deferred[bool]:
        now = self._clock.seconds()
        if jti is not None and self._tokens.get(jti, -math.inf) > now:
            return succeed(True)
        entry = self._principals.get(principal)
        if entry is None or entry[1] <= now:
            return succeed(False)
        return succeed(issued_at is None or issued_at <= entry[0])
