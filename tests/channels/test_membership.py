"""
:class:`~securews.channels.membership.Membership` over a broker that
answers later (as Redis does): subscribing again to a channel whose
subscription is not in place yet.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from securews.channels.membership import MAX_AGAIN, Joined, Membership, Refused
from securews.channels.memory import MemoryBroker
from securews.rules.channels import Grants, History, Position


class LateHistory(MemoryBroker):
    """The in-memory broker, whose histories come when the test says."""

    def __init__(self) -> None:
        super().__init__(Clock())
        self.asked: list[tuple[Deferred[History], Deferred[History]]] = []

    def history(self, channel: str, after: int) -> Deferred[History]:
        late: Deferred[History] = Deferred()
        self.asked.append((super().history(channel, after), late))
        return late

    def answer(self) -> None:
        for ready, late in self.asked:
            ready.chainDeferred(late)
        self.asked.clear()


def member(broker: MemoryBroker) -> tuple[Membership, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    membership = Membership(broker, Grants(subscribe=("news",)),
                            lambda text: sent.append(json.loads(text)),
                            max_subscriptions=4)
    return membership, sent


def test_subscribing_again_before_the_first_is_in_place_waits_for_it() -> None:
    """The second answer is the channel's real position, after the first's
    (a client takes it for its own; an empty epoch, which the protocol
    refuses in ``since``, would close its next session 1007)."""
    broker = LateHistory()
    broker.publish("news", '"old"')
    membership, sent = member(broker)
    order: list[str] = []
    first = membership.subscribe("news", before=lambda j: order.append("first"))
    second = membership.subscribe("news", before=lambda j: order.append("second"))
    results: list[Joined] = []
    first.addCallback(results.append)
    second.addCallback(results.append)
    assert results == []
    broker.answer()
    assert order == ["first", "second"]
    epoch = results[0].position.epoch
    assert results == [Joined(Position(epoch, 1)), Joined(Position(epoch, 1))]
    broker.publish("news", '"new"')
    assert sent == [{"channel": "news", "epoch": epoch, "offset": 2, "data": "new"}]


def test_subscribing_again_when_in_place_answers_at_once() -> None:
    broker = LateHistory()
    membership, _ = member(broker)
    membership.subscribe("news")
    broker.answer()
    broker.publish("news", "1")
    results: list[Joined] = []
    membership.subscribe("news").addCallback(results.append)
    assert [j.position.offset for j in results] == [1]


def test_subscribing_again_to_a_subscription_that_fails_fails_too() -> None:
    broker = LateHistory()
    membership, _ = member(broker)
    first = membership.subscribe("news")
    second = membership.subscribe("news")
    failures: list[Any] = []
    first.addErrback(failures.append)
    second.addErrback(failures.append)
    membership.unsubscribe("news")  # meanwhile: the first cannot be in place
    broker.answer()
    assert [f.check(Refused) for f in failures] == [Refused, Refused]
    assert [f.value.reason for f in failures] == ["unavailable", "unavailable"]


def test_repeated_subscribes_waiting_for_one_subscription_are_bounded() -> None:
    """A client repeating a subscribe while the engine is slow makes the
    session hold at most MAX_AGAIN waiting answers; more are refused."""
    broker = LateHistory()
    membership, _ = member(broker)
    membership.subscribe("news")
    waiting = [membership.subscribe("news") for _ in range(MAX_AGAIN)]
    refused: list[Any] = []
    membership.subscribe("news").addErrback(refused.append)
    assert len(refused) == 1
    assert refused[0].check(Refused)
    assert refused[0].value.reason == "unavailable"
    answered: list[Joined] = []
    for d in waiting:
        d.addCallback(answered.append)
    broker.answer()
    assert len(answered) == MAX_AGAIN
