"""The in-memory implementations pass the contracts, on a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from securews.auth.interfaces import ITicketStore
from securews.auth.tickets import InMemoryTicketStore, TicketBook
from securews.limits.gate import ComposedGate
from securews.limits.interfaces import (
    IGate,
    IRateLimiter,
    IRevocations,
    ISessionCounter,
)
from securews.limits.memory import (
    MemoryRateLimiter,
    MemoryRevocations,
    MemorySessionCounter,
    RevocationsFull,
)
from tests.limits.contracts import (
    GateContract,
    RateLimiterContract,
    RevocationsContract,
    SessionCounterContract,
    TicketStoreContract,
)
from tests.support.memory import result_of


class OnAClock:
    clock: Clock

    @pytest.fixture(autouse=True)
    def _clock(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def now(self) -> float:
        return self.clock.seconds()

    def advance(self, seconds: float) -> Deferred[None]:  # type: ignore[override]
        self.clock.advance(seconds)
        return succeed(None)


class TestMemorySessionCounter(OnAClock, SessionCounterContract):
    def make_counter(self, limit: int) -> ISessionCounter:
        return MemorySessionCounter(limit)


class TestMemoryRateLimiter(OnAClock, RateLimiterContract):
    def make_limiter(self, rate: float, burst: int) -> IRateLimiter:
        return MemoryRateLimiter(rate, burst, self.clock)


class TestMemoryRevocations(OnAClock, RevocationsContract):
    def make_revocations(self) -> IRevocations:
        return MemoryRevocations(self.clock)


class TestComposedGate(OnAClock, GateContract):
    def make_gate(self, *, per_client: int, per_principal: int, rate: float = 1.0,
                  burst: int = 1) -> tuple[IGate, IRevocations]:
        revocations = MemoryRevocations(self.clock)
        gate = ComposedGate(per_client=MemorySessionCounter(per_client),
                            per_principal=MemorySessionCounter(per_principal),
                            revocations=revocations,
                            rate=MemoryRateLimiter(rate, burst, self.clock))
        return gate, revocations


class TestInMemoryTicketStore(OnAClock, TicketStoreContract):
    def make_store(self, *, ttl: float, max_outstanding: int,
                   bind_ip: bool = True) -> ITicketStore:
        return InMemoryTicketStore(
            TicketBook(ttl=ttl, max_outstanding=max_outstanding, bind_ip=bind_ip),
            self.clock)


def test_memory_answers_without_a_reactor_turn() -> None:
    """Already-fired Deferreds: admission goes on in the same call."""
    assert MemorySessionCounter(1).acquire("k").called
    assert MemoryRateLimiter(1, 1, Clock()).take("k").called
    assert MemoryRevocations(Clock()).revoked("a").called


def test_a_full_revocation_table_refuses_rather_than_forgets() -> None:
    """Never is a revocation dropped before it lapses to make room."""
    clock = Clock()
    revocations = MemoryRevocations(clock, max_entries=2)
    result_of(revocations.revoke(jti="a", until=10))
    result_of(revocations.revoke(jti="b", until=20))
    with pytest.raises(RevocationsFull):
        result_of(revocations.revoke(jti="c", until=30))
    assert result_of(revocations.revoked("x", "a"))
    clock.advance(10)
    result_of(revocations.revoke(jti="c", until=30))  # a lapsed: room again
    assert result_of(revocations.revoked("x", "c"))
