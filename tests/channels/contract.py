"""
One set of assertions for every channel broker (in memory, Redis): a
subclass makes brokers (two "nodes" sharing channels where the broker is
shared) and lets time pass.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from zope.interface.verify import verifyObject

from securews.channels.interfaces import IBroker
from securews.rules.channels import Position


class Received:
    """A listener that keeps what it receives."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Position, str | None]] = []

    def __call__(self, channel: str, position: Position, data: str | None) -> None:
        self.items.append((channel, position, data))

    async def until(self, count: int, within: float = 5.0) -> None:
        waited = 0.0
        while len(self.items) < count:
            assert waited < within, f"only {len(self.items)} of {count} arrived"
            await deferLater(reactor, 0.01)  # type: ignore[arg-type]
            waited += 0.01


class BrokerContract:
    def make_brokers(self, *, history_size: int = 100,
                     history_ttl: float = 300.0) -> tuple[IBroker, IBroker]:
        """Two brokers that share channels (two nodes), or the same one twice."""
        raise NotImplementedError

    def channel(self, name: str) -> str:
        """A channel name no other test uses."""
        return name

    def test_provides_the_interface(self) -> None:
        first, _ = self.make_brokers()
        assert verifyObject(IBroker, first)

    @pytest_twisted.ensureDeferred
    async def test_messages_arrive_in_order_once_on_every_node(self) -> None:
        a, b = self.make_brokers()
        news = self.channel("news")
        on_a, on_b = Received(), Received()
        await a.listen(news, on_a)
        await b.listen(news, on_b)
        positions = [await a.publish(news, f'{{"n":{n}}}') for n in range(5)]
        positions.append(await b.publish(news, '"from b"'))
        assert [p.offset for p in positions] == [1, 2, 3, 4, 5, 6]
        assert len({p.epoch for p in positions}) == 1
        await on_a.until(6)
        await on_b.until(6)
        await deferLater(reactor, 0.1)  # type: ignore[arg-type]
        for received in (on_a, on_b):
            assert [(c, p.offset, d) for c, p, d in received.items] == [
                (news, 1, '{"n":0}'), (news, 2, '{"n":1}'), (news, 3, '{"n":2}'),
                (news, 4, '{"n":3}'), (news, 5, '{"n":4}'), (news, 6, '"from b"')]

    @pytest_twisted.ensureDeferred
    async def test_history_after_an_offset(self) -> None:
        a, b = self.make_brokers(history_size=3)
        chat = self.channel("chat")
        empty = await b.history(chat, 0)
        assert empty.position.offset == 0
        assert empty.entries == ()
        for n in range(5):
            await a.publish(chat, str(n))
        history = await b.history(chat, 3)
        assert history.position.offset == 5
        assert history.entries == ((4, "3"), (5, "4"))
        assert history.complete
        gone = await b.history(chat, 1)
        assert not gone.complete  # offsets 2 is no longer kept
        assert [o for o, _ in gone.entries] == [3, 4, 5]

    @pytest_twisted.ensureDeferred
    async def test_a_listener_that_left_receives_nothing(self) -> None:
        a, _ = self.make_brokers()
        quiet = self.channel("quiet")
        gone, staying = Received(), Received()
        await a.listen(quiet, gone)
        await a.listen(quiet, staying)
        a.unlisten(quiet, gone)
        await a.publish(quiet, "1")
        await staying.until(1)
        assert gone.items == []

    @pytest_twisted.ensureDeferred
    async def test_channels_are_apart(self) -> None:
        a, b = self.make_brokers()
        one, two = self.channel("one"), self.channel("two")
        heard = Received()
        await b.listen(one, heard)
        await a.publish(two, "x")
        await a.publish(one, "y")
        await heard.until(1)
        await deferLater(reactor, 0.1)  # type: ignore[arg-type]
        assert [(c, d) for c, _, d in heard.items] == [(one, "y")]
        assert (await a.publish(two, "z")).offset == 2


def fired(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results
    return results[0]
