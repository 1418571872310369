"""
The in-memory session counter under any sequence of acquisitions and
releases (hypothesis's rule-based state machine): the count is always the
number of leases held, never over the limit, and a lease given back twice
gives back one place.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from securews.limits.memory import MemorySessionCounter
from securews.rules.counters import Lease
from tests.support.memory import result_of

KEYS = st.sampled_from(["a", "b", "2001:db8::/64"])
LIMIT = 3


class Places(RuleBasedStateMachine):
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.counter = MemorySessionCounter(LIMIT)
        self.held: dict[str, int] = {}

    @rule(target=leases, key=KEYS)
    def acquire(self, key: str) -> tuple[str, Lease] | None:
        lease = result_of(self.counter.acquire(key))
        if self.held.get(key, 0) >= LIMIT:
            assert lease is None
            return None
        assert isinstance(lease, Lease)
        self.held[key] = self.held.get(key, 0) + 1
        return key, lease

    @rule(entry=consumes(leases))
    def release(self, entry: tuple[str, Lease] | None) -> None:
        if entry is None:
            return
        key, lease = entry
        lease.release()
        self.held[key] -= 1
        lease.release()  # twice: nothing more is given back
        assert lease.released

    @invariant()
    def counts_are_the_leases_held(self) -> None:
        for key in ("a", "b", "2001:db8::/64"):
            assert result_of(self.counter.count(key)) == self.held.get(key, 0)
            assert self.held.get(key, 0) <= LIMIT
        assert len(self.counter) == sum(1 for n in self.held.values() if n)


TestPlaces = Places.TestCase
TestPlaces.settings = settings(max_examples=200, stateful_step_count=40,
                               deadline=None)
