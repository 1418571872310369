"""
Concurrent connections per client network.

A key's entry exists only while it holds at least one connection, so the
table never has more entries than there are live connections (which
``server.max_connections`` bounds).

Pure code: no I/O, no reactor.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["ConnectionCounter"]


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
