"""
Token buckets: one per client network for connection attempts, and one per
connection for messages or bytes.

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens a second;
an action that costs ``cost`` tokens is admitted only if that many are
there.  Over any interval ``[t0, t]`` of non-decreasing times a bucket
therefore admits at most ``burst + rate * (t - t0)`` tokens' worth.

Time is an argument (``now``, in seconds).  Time that goes backwards (a
stepped wall clock) never adds tokens: a bucket refills only once ``now``
passes the latest time it has seen, so a step back by ``d`` seconds pauses
refilling for ``d`` seconds.  That fails closed; pass a monotonic clock to
avoid it.

Pure code: no I/O, no reactor.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from itertools import islice

__all__ = ["BucketTable", "TokenBucket"]


def _check_rate(rate: float, burst: float) -> None:
    if not (0 < rate < math.inf and 0 < burst < math.inf):
        raise ValueError(f"rate and burst must be finite and positive, got "
                         f"{rate!r}, {burst!r}")


def _check_cost(cost: float) -> None:
    if not 0 <= cost < math.inf:
        raise ValueError(f"cost must be finite and not negative, got {cost!r}")


class TokenBucket:
    """
    A token bucket; it starts full.

    :ivar tokens: the tokens held at time ``last``.
    :ivar last: the latest ``now`` seen (``-inf`` before the first use).
    """

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        """
        :param rate: tokens gained per second.
        :param burst: the most tokens the bucket holds.
        :raises ValueError: unless both are finite and positive.
        """
        _check_rate(rate, burst)
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = -math.inf

    def level(self, now: float) -> float:
        """The tokens the bucket holds at ``now``; nothing changes."""
        if now > self.last:
            return min(self.burst, self.tokens + (now - self.last) * self.rate)
        return self.tokens

    def is_full(self, now: float) -> bool:
        """Whether the bucket holds ``burst`` tokens at ``now``."""
        return self.level(now) >= self.burst

    def take(self, now: float, cost: float = 1.0) -> bool:
        """
        Refill up to ``now``, then take ``cost`` tokens if there are enough.

        :returns: whether the action is admitted.  A cost above ``burst``
            is never admitted; a cost of 0 always is.
        :raises ValueError: for a negative, infinite or NaN cost.
        """
        if not 0 <= cost < math.inf:
            _check_cost(cost)
        last = self.last
        if now > last:
            refilled = self.tokens + (now - last) * self.rate
            self.tokens = refilled if refilled < self.burst else self.burst
            self.last = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """
        Seconds from ``now`` until ``take(now + s, cost)`` would succeed.

        :returns: 0 if it would succeed now, ``inf`` if ``cost > burst``.
            Exact up to floating-point rounding; round up for the HTTP
            ``Retry-After`` header.  Nothing changes.
        """
        _check_cost(cost)
        if cost > self.burst:
            return math.inf
        missing = cost - self.level(now)
        if missing <= 0:
            return 0.0
        # With a deficit the bucket has been used, so ``last`` is finite.
        return max(self.last - now, 0.0) + missing / self.rate

    def __repr__(self) -> str:
        return (f"TokenBucket(rate={self.rate!r}, burst={self.burst!r}, "
                f"tokens={self.tokens!r}, last={self.last!r})")


#: How many least recently used entries one call looks at when it sweeps
#: idle buckets away or picks a bucket to evict.
_SCAN = 8
#: How many idle (full) buckets one call drops at most.
_SWEEP = 2


class BucketTable:
    """
    A bounded map from client-network keys to token buckets.

    An absent key behaves as a full bucket.  Dropping a bucket that is full
    is therefore safe: for non-decreasing times it is indistinguishable
    from the fresh bucket that replaces it on the key's next use.  Each
    call drops up to two full buckets among the least recently used, so
    the table tracks clients active within about ``burst / rate`` seconds.

    When the table holds ``max_entries`` buckets a new key evicts one:
    the first full bucket among the eight least recently used, or else the
    least recently used one.  Evicting a bucket that is not full resets
    that key to full, which is unsafe, so it is bounded and counted in
    :attr:`resets`: a key can be reset only after ``max_entries`` other
    keys were used since its own last use, and each of those keys had a
    fresh bucket of its own.  Size ``max_entries`` above the number of
    client networks that can be active within ``burst / rate`` seconds;
    a non-zero :attr:`resets` says the table is too small.

    :ivar resets: how many buckets that were not full have been evicted.
    """

    def __init__(self, rate: float, burst: float, max_entries: int) -> None:
        """
        :raises ValueError: unless rate and burst are finite and positive
            and ``max_entries`` is at least 1.
        """
        _check_rate(rate, burst)
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries!r}")
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self.resets = 0
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def __iter__(self) -> Iterator[Hashable]:
        """The keys, least recently used first."""
        return iter(self._buckets)

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        """
        Take ``cost`` tokens from ``key``'s bucket (see :meth:`TokenBucket.take`).
        """
        _check_cost(cost)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self._evict(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst)
        else:
            self._buckets.move_to_end(key)
        admitted = bucket.take(now, cost)
        self._sweep(now)
        return admitted

    def retry_after(self, key: Hashable, now: float, cost: float = 1.0) -> float:
        """
        Seconds until ``key`` could take ``cost`` tokens (see
        :meth:`TokenBucket.retry_after`).  Nothing changes, not even the
        order of use.
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst)
        return bucket.retry_after(now, cost)

    def _sweep(self, now: float) -> None:
        for _ in range(_SWEEP):
            key = next(iter(self._buckets), None)
            if key is None or not self._buckets[key].is_full(now):
                return
            del self._buckets[key]

    def _evict(self, now: float) -> None:
        for key, bucket in islice(self._buckets.items(), _SCAN):
            if bucket.is_full(now):
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)
        self.resets += 1
