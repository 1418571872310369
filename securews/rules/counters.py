"""
Concurrent connections per client network.

A key's entry exists only while it holds at least one connection, so the
table never has more entries than there are live connections (which
``server.max_connections`` bounds).

Pure code: no I/O, no reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

__all__ = ["ConnectionCounter", "Lease"]


class Lease:
    """
    One place held in a counter, given back by :meth:`release`.

    Releasing twice (a refusal path and ``connectionLost`` both cleaning up,
    say) gives the place back once: no path can leak a place, and none can
    give back a place it does not hold.
    """

    __slots__ = ("_give_back",)

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Callable[[], None] | None = give_back

    @property
    def released(self) -> bool:
        return self._give_back is None

    def release(self) -> None:
        """Give the place back; any later call does nothing."""
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


class ConnectionCounter:
    """
    Count connections per key; refuse the ``limit_per_key + 1``-th.

    :ivar total: connections held over all keys.
    """

    def __init__(self, limit_per_key: int) -> None:
        """
        :raises ValueError: unless ``limit_per_key`` is at least 1.
        """
        if limit_per_key < 1:
            raise ValueError(f"limit_per_key must be at least 1, got {limit_per_key!r}")
        self.limit_per_key = limit_per_key
        self.total = 0
        self._counts: dict[Hashable, int] = {}

    def try_acquire(self, key: Hashable) -> bool:
        """
        Hold one more connection for ``key`` if it is under the limit.

        :returns: whether it was acquired; a refusal changes nothing.
        """
        held = self._counts.get(key, 0)
        if held >= self.limit_per_key:
            return False
        self._counts[key] = held + 1
        self.total += 1
        return True

    def lease(self, key: Hashable) -> Lease | None:
        """A place for ``key`` as a :class:`Lease`, or ``None`` when full."""
        if not self.try_acquire(key):
            return None
        return Lease(lambda: self.release(key))

    def release(self, key: Hashable) -> None:
        """
        Give back one connection acquired for ``key``.

        :raises KeyError: if ``key`` holds none: releasing twice is a bug
            in the caller, never something a client can cause.
        """
        held = self._counts.get(key, 0)
        if held <= 0:
            raise KeyError(f"release of {key!r}, which holds no connection")
        if held == 1:
            del self._counts[key]
        else:
            self._counts[key] = held - 1
        self.total -= 1

    def count(self, key: Hashable) -> int:
        """The connections ``key`` holds."""
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        """The number of keys holding at least one connection."""
        return len(self._counts)
