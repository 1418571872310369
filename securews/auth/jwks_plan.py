"""
When to fetch the JWKS again: a pure decision, every method takes ``now``.

The rules, all here (the reactor code only runs a timer for :attr:`due`):

1. One fetch at a time.
2. After a fetch that worked, the next is due :func:`refresh_interval`
   later.
3. After a failed one, the next is due ``cooldown * 2**(failures - 1)``
   later, at most ``refresh`` (backoff): a provider that is down is not
   hammered, one that comes back is used again soon, and the last good
   keys stay in use meanwhile.
4. A token naming an unknown ``kid`` brings the next fetch forward to
   ``cooldown`` after the last one started (or now, if that has passed),
   never later than it was due; during a fetch it changes nothing.

So two fetches always start at least ``cooldown`` apart (``cooldown`` is
at most :data:`MIN_REFRESH`), whatever tokens arrive: a flood of random
``kid`` values costs the provider one request per ``cooldown``.
"""

from __future__ import annotations

import attrs

__all__ = ["MIN_REFRESH", "RefreshPlan", "refresh_interval"]

#: Shortest time a fetched set is kept, whatever ``max-age`` says.
MIN_REFRESH = 60.0


def refresh_interval(fresh_for: float | None, refresh: float) -> float:
    """
    How long to keep a set before fetching it again.

    ``refresh`` (``jwks_refresh``) when the provider gives no ``max-age``;
    else ``max-age`` within [:data:`MIN_REFRESH`, ``refresh``]: a provider
    can ask for earlier refreshes (never more often than once a minute)
    but cannot make the server keep a removed key longer than the
    operator allows.
    """
    if fresh_for is None:
        return refresh
    return min(max(fresh_for, MIN_REFRESH), refresh)


@attrs.define
class RefreshPlan:
    """
    The refresh schedule of one JWKS.

    :ivar refresh: ``jwks_refresh``, seconds.
    :ivar cooldown: ``jwks_cooldown``, seconds (at most :data:`MIN_REFRESH`).
    :ivar last_start: when the last fetch started.
    :ivar due: when the next fetch should start.
    :ivar failures: failed fetches since the last one that worked.
    :ivar fetching: whether a fetch is running.
    """

    refresh: float
    cooldown: float
    last_start: float
    due: float
    failures: int = 0
    fetching: bool = False

    @classmethod
    def after(cls, fetched_at: float, fresh_for: float | None, *, refresh: float,
              cooldown: float) -> RefreshPlan:
        """The plan after a first fetch that worked, started at ``fetched_at``."""
        return cls(refresh, cooldown, fetched_at,
                   fetched_at + refresh_interval(fresh_for, refresh))

    def start(self, now: float) -> None:
        """A fetch starts (the timer for :attr:`due` fired)."""
        self.fetching = True
        self.last_start = now

    def succeeded(self, now: float, fresh_for: float | None) -> None:
        """The fetch worked; the provider said ``fresh_for`` (max-age)."""
        self.fetching = False
        self.failures = 0
        self.due = now + refresh_interval(fresh_for, self.refresh)

    def failed(self, now: float) -> None:
        """The fetch failed; retry with backoff."""
        self.fetching = False
        self.failures += 1
        self.due = now + self.backoff()

    def backoff(self) -> float:
        """The wait after the current run of :attr:`failures`."""
        return min(self.refresh, self.cooldown * float(2 ** min(self.failures - 1, 32)))

    def unknown_kid(self, now: float) -> bool:
        """
        A token named a ``kid`` the set lacks: fetch within one cooldown,
        unless the provider is failing (then its backoff stands: made-up
        ``kid`` values must not turn a retry schedule into a hammer).

        :returns: whether :attr:`due` moved (earlier).
        """
        if self.fetching or self.failures:
            return False
        earliest = max(now, self.last_start + self.cooldown)
        if earliest >= self.due:
            return False
        self.due = earliest
        return True
