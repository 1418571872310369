"""Concurrent connections per client network."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
)

from securews.rules.counters import ConnectionCounter


def test_the_connection_after_the_limit_is_refused() -> None:
    """With a limit of 2 the third connection of a key is refused."""
    counter = ConnectionCounter(limit_per_key=2)
    assert counter.try_acquire("a")
    assert counter.try_acquire("a")
    assert not counter.try_acquire("a")
    assert counter.count("a") == 2
    assert counter.try_acquire("b")


def test_a_release_makes_room_again() -> None:
    """Releasing one connection lets the next one in."""
    counter = ConnectionCounter(limit_per_key=1)
    assert counter.try_acquire("a")
    counter.release("a")
    assert counter.try_acquire("a")


def test_keys_leave_the_table_at_zero() -> None:
    """A key that holds no connection takes no room."""
    counter = ConnectionCounter(limit_per_key=3)
    counter.try_acquire("a")
    counter.try_acquire("a")
    assert len(counter) == 1
    counter.release("a")
    counter.release("a")
    assert len(counter) == 0
    assert counter.count("a") == 0


def test_releasing_a_key_not_held_is_a_bug() -> None:
    """A release without an acquire raises KeyError and changes nothing."""
    counter = ConnectionCounter(limit_per_key=1)
    counter.try_acquire("b")
    with pytest.raises(KeyError, match="holds no connection"):
        counter.release("a")
    assert counter.count("a") == 0
    assert counter.total == 1


def test_limit_must_be_positive() -> None:
    """A limit of 0 would refuse everyone; it is a ValueError."""
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionCounter(0)


KEYS = st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::/64", "local"])


class CounterMachine(RuleBasedStateMachine):
    """ConnectionCounter against a dict of counts, with real held handles."""

    held = Bundle("held")

    def __init__(self) -> None:
        super().__init__()
        self.limit = 3
        self.counter = ConnectionCounter(self.limit)
        self.model: dict[str, int] = {}

    @rule(target=held, key=KEYS)
    def acquire(self, key: str) -> object:
        acquired = self.counter.try_acquire(key)
        assert acquired == (self.model.get(key, 0) < self.limit)
        if acquired:
            self.model[key] = self.model.get(key, 0) + 1
            return key
        return multiple()

    @rule(key=consumes(held))
    def release(self, key: str) -> None:
        self.counter.release(key)
        self.model[key] -= 1

    @rule(key=KEYS)
    def release_unheld(self, key: str) -> None:
        if self.model.get(key, 0) == 0:
            with pytest.raises(KeyError):
                self.counter.release(key)

    @invariant()
    def counts_match_the_model(self) -> None:
        for key in ["10.0.0.1", "10.0.0.2", "2001:db8::/64", "local"]:
            count = self.counter.count(key)
            assert count == self.model.get(key, 0)
            assert 0 <= count <= self.limit

    @invariant()
    def table_holds_only_keys_with_connections(self) -> None:
        assert len(self.counter) == sum(1 for n in self.model.values() if n > 0)
        assert self.counter.total == sum(self.model.values())


TestConnectionCounter = CounterMachine.TestCase
TestConnectionCounter.__doc__ = "Acquire/release sequences agree with a dict model."
