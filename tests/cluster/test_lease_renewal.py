"""
The shared counts: places the engine could forget while a node still
holds them (a renewal racing an acquisition, a shorter lease shortening a
longer one, an engine restart, one node id in two processes), so that
another node would admit beyond a limit.  In-process engines on a real
``redis-server``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import LogEvent
from twisted.python.failure import Failure

from securews.cluster.engine import Engine, EngineUnavailable
from securews.cluster.places import (
    RENEW_BATCH,
    LeaseBook,
    RedisGate,
    RedisSessionCounter,
)
from tests.cluster.engines import make_engine, started, unique_prefix
from tests.support.redis import RedisServer, restart, running_redis


async def outcome(d: Deferred[Any]) -> Any:
    """The Deferred's result, or its Failure (not raised)."""
    box: list[Any] = []
    d.addBoth(box.append)
    while not box:
        await deferLater(reactor, 0.01)  # type: ignore[arg-type]
    return box[0]


@pytest_twisted.async_yield_fixture
async def two_nodes(redis_server: RedisServer) -> AsyncIterator[tuple[Engine, Engine]]:
    prefix = unique_prefix()
    a = await started(make_engine(redis_server, node="node-a", prefix=prefix))
    b = await started(make_engine(redis_server, node="node-b", prefix=prefix))
    yield a, b
    await a.stop()
    await b.stop()


@pytest_twisted.ensureDeferred
async def test_a_place_taken_during_a_batched_renewal_is_not_written_over(
    two_nodes: tuple[Engine, Engine]
) -> None:
    """
    A node with more than RENEW_BATCH counts renews them in batches, one
    round trip each (any busy node has thousands: one per client network
    and principal).  A place taken on a count of a later batch while the
    renewal is under way is in what that batch writes: the engine never
    counts fewer places than the node holds.
    """
    a, b = two_nodes
    book_a = LeaseBook(a)
    counter_a = RedisSessionCounter(book_a, "network", limit=2)
    counter_b = RedisSessionCounter(LeaseBook(b), "network", limit=2)
    for i in range(RENEW_BATCH):
        assert await counter_a.acquire(f"198.51.100.{i}") is not None
    # The victim's count is the 201st: it is in the second batch.
    assert await counter_a.acquire("203.0.113.0/24") is not None

    renewal = book_a.renew()  # batch 1 is on the wire; batch 2 follows its reply
    second = await counter_a.acquire("203.0.113.0/24")  # after batch 1, before 2
    assert second is not None
    await renewal
    assert book_a.held[counter_a._pair("203.0.113.0/24")] == 2

    # Node A holds two of the network's two places: B must be refused.
    assert await counter_a.count("203.0.113.0/24") == 2, (
        "the renewal wrote a stale count over a place taken meanwhile")
    assert await counter_b.acquire("203.0.113.0/24") is None


@pytest_twisted.ensureDeferred
async def test_a_shorter_lease_never_expires_another_nodes_share(
    redis_server: RedisServer
) -> None:
    """
    Nodes whose ``cluster.lease`` differ (a rolling change of the setting):
    B (lease 1 s) takes and gives back a place, and A's share (lease 30 s)
    still counts after B's lease: a write never shortens a count's expiry.
    """
    prefix = unique_prefix()
    a = await started(make_engine(redis_server, node="node-a", prefix=prefix,
                                  lease=30.0))
    b = await started(make_engine(redis_server, node="node-b", prefix=prefix,
                                  lease=1.0))
    try:
        counter_a = RedisSessionCounter(LeaseBook(a), "principal", limit=2)
        counter_b = RedisSessionCounter(LeaseBook(b), "principal", limit=2)
        assert await counter_a.acquire("alice") is not None  # held all along
        lease_b = await counter_b.acquire("alice")
        assert lease_b is not None
        lease_b.release()
        await deferLater(reactor, 1.3)  # type: ignore[arg-type]
        # A's place (lease 30 s) is still held and must still count.
        assert await counter_b.acquire("alice") is not None
        assert await counter_b.acquire("alice") is None, (
            "node B was given a second place: node A's share was expired "
            "with B's lease")
    finally:
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_calls_waiting_for_the_connection_wait_for_the_reassertion(
    tmp_path: Path
) -> None:
    """
    The engine restarts without its data while no call is in flight; a
    claim made meanwhile waits for the new connection.  That connection
    finds the new epoch and the engine counts as down at once, before the
    claim runs on it: it is 503, or sees the place this node holds written
    back, never an empty engine.
    """
    with running_redis(tmp_path / "redis") as server:
        engine = await started(make_engine(server, timeout=5.0))
        book = LeaseBook(engine)
        engine.on_recovered = lambda: book.renew(recovering=True)
        gate = RedisGate(book, per_client=1, per_principal=1, rate=100, burst=100)
        try:
            first = await gate.claim("203.0.113.0/24", rate=False)
            assert first.lease is not None  # the network's one place, held
            restart(server)  # blocks the reactor: the engine is back, empty
            await deferLater(reactor, 0.02)  # type: ignore[arg-type]
            assert engine.up  # no call failed: nothing noticed yet
            second = await outcome(gate.claim("203.0.113.0/24", rate=False))
            if isinstance(second, Failure):
                assert second.check(EngineUnavailable)  # 503: fine
            else:
                assert second.lease is None, (
                    "a second place for a network limited to one: the claim "
                    "ran on the emptied engine before this node reasserted")
        finally:
            await engine.stop()


@pytest_twisted.ensureDeferred
async def test_two_live_nodes_with_one_node_id_are_noticed_not_merged(
    redis_server: RedisServer, events: list[LogEvent]
) -> None:
    """
    Each node's share of a count is one hash field named by its node id:
    two live processes under one id (a config file copied to every node)
    would overwrite each other's shares.  The second never comes up (it
    says why, once) while the first holds the id, and comes up by itself
    once the first has stopped and given it back.
    """
    prefix = unique_prefix()
    a = await started(make_engine(redis_server, node="web-1", prefix=prefix))
    b = make_engine(redis_server, node="web-1", prefix=prefix)
    b.start()
    try:
        counter_b = RedisSessionCounter(LeaseBook(b), "principal", limit=2)
        await deferLater(reactor, 1.5)  # type: ignore[arg-type]
        assert not b.up
        failure = await outcome(counter_b.acquire("alice"))
        assert isinstance(failure, Failure)
        assert failure.check(EngineUnavailable)
        said = [e for e in events if e.get("event") == "node_id_in_use"]
        assert len(said) == 1
        await a.stop()
        d = b.when_up()
        d.addTimeout(5, reactor)
        await d
        assert await counter_b.acquire("alice") is not None
    finally:
        for engine in (a, b):
            await engine.stop()
