"""
The Redis broker: the broker contract with two nodes on one real Redis,
and what pub/sub alone would lose.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from securews.channels.interfaces import IBroker
from securews.cluster.broker import RedisBroker
from securews.cluster.engine import Engine
from tests.channels.contract import BrokerContract, Received
from tests.cluster.engines import make_engine, started, unique_prefix
from tests.support.redis import RedisServer

_names = itertools.count()


@pytest_twisted.async_yield_fixture
async def two_engines(
    redis_server: RedisServer
) -> AsyncIterator[tuple[Engine, Engine]]:
    prefix = unique_prefix()
    a = await started(make_engine(redis_server, node="node-a", prefix=prefix))
    b = await started(make_engine(redis_server, node="node-b", prefix=prefix))
    yield a, b
    await a.stop()
    await b.stop()


class TestRedisBroker(BrokerContract):
    @pytest.fixture(autouse=True)
    def _engines(self, two_engines: tuple[Engine, Engine]) -> AsyncIterator[None]:
        self.engines = two_engines
        self.brokers: list[RedisBroker] = []
        yield  # type: ignore[misc]
        for broker in self.brokers:
            broker.stop()

    def make_brokers(self, *, history_size: int = 100,
                     history_ttl: float = 300.0) -> tuple[IBroker, IBroker]:
        made = [RedisBroker(engine, history_size=history_size,
                            history_ttl=history_ttl, probe_interval=1.0)
                for engine in self.engines]
        for broker in made:
            broker.start()
        self.brokers += made
        return made[0], made[1]

    def channel(self, name: str) -> str:
        return f"{name}-{next(_names)}"


@pytest_twisted.ensureDeferred
async def test_a_lost_subscription_loses_no_message(
    redis_server: RedisServer, two_engines: tuple[Engine, Engine]
) -> None:
    """
    The listening node's subscriber connection is killed (CLIENT KILL TYPE
    pubsub) and messages are published meanwhile: it subscribes again and
    reads what it missed from the history, in order, each once.
    """
    a, b = (RedisBroker(e, history_size=100, history_ttl=300, probe_interval=1.0)
            for e in two_engines)
    a.start()
    b.start()
    try:
        heard = Received()
        await b.listen("wire", heard)
        await a.publish("wire", "1")
        await heard.until(1)
        assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        for n in range(2, 7):
            await a.publish("wire", str(n))
        await heard.until(6)
        await deferLater(reactor, 0.2)  # type: ignore[arg-type]
        assert [(p.offset, d) for _, p, d in heard.items] == [
            (n, str(n)) for n in range(1, 7)]
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_what_the_history_no_longer_holds_is_reported_lost(
    redis_server: RedisServer, two_engines: tuple[Engine, Engine]
) -> None:
    """More messages than the history keeps while the subscription was
    gone: the listener is told they are lost (never a silent gap)."""
    a, b = (RedisBroker(e, history_size=3, history_ttl=300, probe_interval=1.0)
            for e in two_engines)
    a.start()
    b.start()
    try:
        heard = Received()
        await b.listen("narrow", heard)
        await a.publish("narrow", "1")
        await heard.until(1)
        redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
        for n in range(2, 10):
            await a.publish("narrow", str(n))
        await heard.until(2)
        await deferLater(reactor, 0.3)  # type: ignore[arg-type]
        lost = [(p.offset, d) for _, p, d in heard.items][1]
        assert lost == (9, None)
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_checks_its_own_subscription(
    redis_server: RedisServer, two_engines: tuple[Engine, Engine]
) -> None:
    broker = RedisBroker(two_engines[0], history_size=10, history_ttl=300,
                         probe_interval=0.3)
    broker.start()
    try:
        for _ in range(100):
            if broker.ready():
                break
            await deferLater(reactor, 0.02)  # type: ignore[arg-type]
        assert broker.ready()
    finally:
        await broker.stop()
