"""
:class:`securews.policy.Admission`: the run of admission against real
backends, answering at once (in memory) or later (as a cluster's would),
or not at all.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from zope.interface import implementer

from securews.auth.interfaces import HandshakeRequest
from securews.limits.interfaces import IRateLimiter, ISessionCounter, RateVerdict
from securews.limits.memory import MemorySessionCounter
from securews.policy import WAIT, Admission, Policy, Shared, build_policy
from securews.rules.actions import (
    Accept,
    Action,
    Arrival,
    Authenticate,
    DropUnread,
    HeadRead,
    ReadHead,
    Refuse,
    Settled,
    Upgrade,
)
from securews.rules.counters import Lease
from securews.rules.head import Refusal
from securews.testing import make_config
from tests.support.memory import (
    ALICE,
    ORIGIN,
    TLS,
    FixedAuthenticator,
    request,
    result_of,
)

PEER = "203.0.113.7"


class Connection:
    """Records the I/O actions; answers reads with a request, upgrades with
    no subprotocol, authentication through the policy."""

    def __init__(self, policy: Policy, data: bytes = request()) -> None:
        self.policy = policy
        self.data = data
        self.actions: list[Action] = []

    def carry_out(self, action: Action) -> object:
        self.actions.append(action)
        match action:
            case ReadHead():
                return self.data
            case Upgrade():
                return []
            case Authenticate():
                return self.policy.authenticate(HandshakeRequest(
                    action.head, action.client, action.origin), issuer=action.issuer)
            case Settled() | HeadRead():
                return None
        return WAIT

    @property
    def final(self) -> Action:
        return self.actions[-1]


@implementer(ISessionCounter)
class LaterCounter:
    """A counter whose answers come later, when :meth:`answer` is called
    (as a shared engine's would)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.memory = MemorySessionCounter(limit)
        self.asked: list[tuple[str, Deferred[Lease | None]]] = []

    def acquire(self, key: str) -> Deferred[Lease | None]:
        d: Deferred[Lease | None] = Deferred()
        self.asked.append((key, d))
        return d

    def answer(self) -> None:
        key, d = self.asked.pop(0)
        d.callback(self.memory.acquire_now(key))

    def count(self, key: str) -> Deferred[int]:
        return self.memory.count(key)


@implementer(IRateLimiter)
class BrokenLimiter:
    rate = 1.0
    burst = 1

    def take(self, key: str) -> Deferred[RateVerdict]:
        return fail(ConnectionRefusedError("the engine is down"))


def policy(clock: Clock, **shared: Any) -> Policy:
    config = make_config(tls=TLS, origin={"allowed": [ORIGIN]})
    return build_policy(config, clock, authenticator=FixedAuthenticator(ALICE),
                        shared=Shared(**shared))


def run(p: Policy, data: bytes = request()) -> tuple[Admission, Connection]:
    connection = Connection(p, data)
    admission = Admission(p, Arrival(PEER), connection)
    admission.start()
    return admission, connection


def test_in_memory_everything_happens_in_the_call() -> None:
    """No reactor turn between accept and the 101."""
    p = policy(Clock())
    admission, connection = run(p)
    assert isinstance(connection.final, Accept)
    assert admission.waiting is None
    assert len(p.capacity) == 1
    assert result_of(p.per_principal.count("alice")) == 1
    admission.close()
    assert len(p.capacity) == 0
    assert result_of(p.per_client.count(PEER)) == 0
    assert result_of(p.per_principal.count("alice")) == 0


def test_a_backend_that_answers_later_is_waited_for() -> None:
    counter = LaterCounter(1)
    p = policy(Clock(), per_client=counter)
    admission, connection = run(p)
    assert connection.actions[-1] == HeadRead(connection.actions[-1].head)  # type: ignore[union-attr]
    assert admission.waiting is not None
    counter.answer()
    assert isinstance(connection.final, Accept)
    assert result_of(counter.count(PEER)) == 1
    admission.close()
    assert result_of(counter.count(PEER)) == 0


def test_a_place_granted_after_the_connection_ended_is_given_back() -> None:
    counter = LaterCounter(1)
    p = policy(Clock(), per_client=counter)
    admission, connection = run(p)
    admission.close()
    counter.answer()
    assert result_of(counter.count(PEER)) == 0
    assert not any(isinstance(a, Upgrade) for a in connection.actions)


def test_a_full_counter_answered_later_is_429() -> None:
    counter = LaterCounter(1)
    p = policy(Clock(), per_client=counter)
    run(p)
    counter.answer()
    _, connection = run(p)
    counter.answer()
    assert connection.final == Refuse(
        Refusal(429, "too_many_connections", (("Retry-After", "1"),)))


def test_a_limiter_that_fails_refuses_503_and_holds_nothing() -> None:
    p = policy(Clock(), connect_rate=BrokenLimiter())
    admission, connection = run(p)
    assert connection.final == Refuse(
        Refusal(503, "unavailable", (("Retry-After", "1"),)), summarised=True)
    admission.close()
    assert len(p.pending) == 0


def test_close_gives_every_place_back_once() -> None:
    p = policy(Clock())
    admission, _ = run(p)
    admission.close()
    admission.close()
    assert len(p.capacity) == 0
    assert len(p.per_client) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("peer", ["198.51.100.1"])
def test_a_connection_over_the_connect_rate_is_dropped_at_accept(peer: str) -> None:
    p = policy(Clock())
    burst = int(p.config.ratelimit.connect_burst)
    for _ in range(burst):
        Admission(p, Arrival(peer), Connection(p)).start()
    connection = Connection(p)
    Admission(p, Arrival(peer), connection).start()
    assert connection.final == DropUnread("connect_rate")
