"""The in-memory broker passes the broker contract, and keeps its bounds."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from securews.channels.interfaces import IBroker
from securews.channels.memory import ChannelsFull, MemoryBroker
from tests.channels.contract import BrokerContract, Received, fired


class TestMemoryBroker(BrokerContract):
    def make_brokers(self, *, history_size: int = 100,
                     history_ttl: float = 300.0) -> tuple[IBroker, IBroker]:
        broker = MemoryBroker(Clock(), history_size=history_size,
                              history_ttl=history_ttl)
        return broker, broker


def test_an_idle_channel_is_forgotten_and_starts_a_new_epoch() -> None:
    clock = Clock()
    broker = MemoryBroker(clock, history_ttl=10)
    first = fired(broker.publish("c", "1"))
    clock.advance(9)
    assert fired(broker.publish("c", "2")).epoch == first.epoch
    clock.advance(10)
    later = fired(broker.publish("c", "3"))
    assert later.epoch != first.epoch
    assert later.offset == 1
    assert len(broker) == 1


def test_the_number_of_channels_is_bounded() -> None:
    clock = Clock()
    broker = MemoryBroker(clock, history_ttl=10, max_channels=2)
    fired(broker.publish("a", "1"))
    fired(broker.publish("b", "1"))
    with pytest.raises(ChannelsFull):
        fired(broker.publish("c", "1")).raiseException()
    clock.advance(11)
    assert fired(broker.publish("c", "1")).offset == 1
    assert len(broker) == 1


def test_listeners_receive_synchronously_in_memory() -> None:
    broker = MemoryBroker(Clock())
    heard = Received()
    fired(broker.listen("c", heard))
    fired(broker.publish("c", "1"))
    assert [d for _, _, d in heard.items] == ["1"]
