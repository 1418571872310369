"""
The engine's implementations pass the same contract suites as the
in-memory ones, on a real ``redis-server`` (time is real here: the
scripts read the engine's clock).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from securews.auth.interfaces import ITicketStore
from securews.cluster.engine import Engine
from securews.cluster.places import (
    LeaseBook,
    RedisGate,
    RedisRateLimiter,
    RedisSessionCounter,
)
from securews.cluster.revocations import RedisRevocations
from securews.cluster.tickets import RedisTicketStore
from securews.limits.interfaces import (
    IGate,
    IRateLimiter,
    IRevocations,
    ISessionCounter,
)
from tests.cluster.engines import make_engine, started
from tests.limits.contracts import (
    GateContract,
    RateLimiterContract,
    RevocationsContract,
    SessionCounterContract,
    TicketStoreContract,
)
from tests.support.redis import RedisServer


@pytest_twisted.async_yield_fixture
async def engine(redis_server: RedisServer) -> AsyncIterator[Engine]:
    running = await started(make_engine(redis_server))
    yield running
    await running.stop()


class OnRedis:
    engine: Engine

    @pytest.fixture(autouse=True)
    def _engine(self, engine: Engine) -> None:
        self.engine = engine

    def now(self) -> float:
        return time.time()

    async def advance(self, seconds: float) -> None:
        await deferLater(reactor, seconds)  # type: ignore[arg-type]


class TestRedisSessionCounter(OnRedis, SessionCounterContract):
    def make_counter(self, limit: int) -> ISessionCounter:
        return RedisSessionCounter(LeaseBook(self.engine), "network", limit)


class TestRedisRateLimiter(OnRedis, RateLimiterContract):
    def make_limiter(self, rate: float, burst: int) -> IRateLimiter:
        return RedisRateLimiter(self.engine, rate, burst)


class TestRedisRevocations(OnRedis, RevocationsContract):
    def make_revocations(self) -> IRevocations:
        return RedisRevocations(self.engine)


class TestRedisGate(OnRedis, GateContract):
    def make_gate(self, *, per_client: int, per_principal: int, rate: float = 1.0,
                  burst: int = 1) -> tuple[IGate, IRevocations]:
        gate = RedisGate(LeaseBook(self.engine), per_client=per_client,
                         per_principal=per_principal, rate=rate, burst=burst)
        return gate, RedisRevocations(self.engine)


class TestRedisTicketStore(OnRedis, TicketStoreContract):
    def make_store(self, *, ttl: float, max_outstanding: int,
                   bind_ip: bool = True) -> ITicketStore:
        return RedisTicketStore(self.engine, ttl=ttl, max_outstanding=max_outstanding,
                                bind_ip=bind_ip)
