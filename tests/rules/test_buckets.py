"""Token buckets and the bounded per-key bucket table."""

from __future__ import annotations

import copy
import math
from itertools import accumulate

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from securews.rules.buckets import BucketTable, TokenBucket

rates = st.floats(0.01, 1e4)
bursts = st.floats(1, 1e4)
starts = st.floats(0, 1e5)
gaps = st.floats(0, 100)
fractions = st.floats(0, 1.5)

# Times below 1e5 s, rates and bursts below 1e4: rounding stays far below
# these margins.
SLACK = 1e-6


def times_from(start: float, steps: list[float]) -> list[float]:
    return list(accumulate(steps, initial=start))[1:]


def test_new_bucket_admits_exactly_its_burst() -> None:
    """A fresh bucket admits burst unit takes at one instant, then refuses."""
    bucket = TokenBucket(rate=1, burst=3)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_refills_at_its_rate() -> None:
    """Half a second at rate 2 buys exactly one more token."""
    bucket = TokenBucket(rate=2, burst=2)
    assert bucket.take(10.0, 2)
    assert not bucket.take(10.4)
    assert bucket.take(10.5)
    assert not bucket.take(10.5)


def test_refill_is_capped_at_burst() -> None:
    """A long idle period refills to burst, not beyond."""
    bucket = TokenBucket(rate=10, burst=5)
    assert bucket.take(0.0, 5)
    assert bucket.level(1000.0) == 5
    assert bucket.take(1000.0, 5)
    assert not bucket.take(1000.0, 0.5)


def test_fractional_costs_such_as_bytes() -> None:
    """Costs are floats: a byte budget admits what fits and refuses the rest."""
    bucket = TokenBucket(rate=1000, burst=4096)
    assert bucket.take(0.0, 4000)
    assert not bucket.take(0.0, 100)
    assert bucket.take(0.0, 96)
    assert bucket.take(0.0, 0)


def test_cost_above_burst_is_never_admitted() -> None:
    """More than burst never fits, and retry_after says so with inf."""
    bucket = TokenBucket(rate=1, burst=2)
    assert not bucket.take(1e6, 2.5)
    assert bucket.retry_after(1e6, 2.5) == math.inf


def test_retry_after_example() -> None:
    """An empty bucket at rate 4 has a unit token again after a quarter second."""
    bucket = TokenBucket(rate=4, burst=1)
    assert bucket.retry_after(5.0) == 0
    assert bucket.take(5.0)
    assert bucket.retry_after(5.0) == 0.25
    assert bucket.retry_after(5.1) == pytest.approx(0.15)


def test_clock_stepping_back_mints_nothing() -> None:
    """After a step back the bucket waits until time passes the latest seen."""
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.take(100.0)
    assert not bucket.take(50.0)
    assert not bucket.take(100.5)
    assert bucket.retry_after(50.0) == 51.0
    assert bucket.take(101.0)


@pytest.mark.parametrize(("rate", "burst"), [
    (0, 1), (1, 0), (-1, 1), (math.inf, 1), (1, math.nan), (math.nan, 1)])
def test_bad_rate_or_burst_is_refused(rate: float, burst: float) -> None:
    """A bucket that would never refill, or never be empty, is a ValueError."""
    with pytest.raises(ValueError, match="finite and positive"):
        TokenBucket(rate, burst)
    with pytest.raises(ValueError, match="finite and positive"):
        BucketTable(rate, burst, 10)


@pytest.mark.parametrize("cost", [-1, math.inf, math.nan])
def test_bad_cost_is_refused(cost: float) -> None:
    """A negative cost would mint tokens; it is a ValueError."""
    with pytest.raises(ValueError, match="cost"):
        TokenBucket(1, 1).take(0.0, cost)
    with pytest.raises(ValueError, match="cost"):
        BucketTable(1, 1, 1).take("k", 0.0, cost)


@given(rate=rates, burst=bursts, start=starts,
       steps=st.lists(st.tuples(gaps, fractions), min_size=1, max_size=40))
def test_admitted_cost_never_exceeds_burst_plus_rate_times_window(
    rate: float, burst: float, start: float, steps: list[tuple[float, float]]
) -> None:
    """Over every window [ti, tj] of a run, admitted cost <= burst + rate*(tj-ti)."""
    bucket = TokenBucket(rate, burst)
    times = times_from(start, [gap for gap, _ in steps])
    admitted = [cost * burst if bucket.take(now, cost * burst) else 0.0
                for now, (_, cost) in zip(times, steps, strict=True)]
    for i in range(len(times)):
        for j in range(i, len(times)):
            bound = burst + rate * (times[j] - times[i])
            assert sum(admitted[i:j + 1]) <= bound * (1 + 1e-9) + SLACK


@given(rate=rates, burst=bursts, start=starts,
       steps=st.lists(st.tuples(gaps, fractions), max_size=20))
def test_bucket_idle_for_burst_over_rate_admits_burst(
    rate: float, burst: float, start: float, steps: list[tuple[float, float]]
) -> None:
    """Whatever happened before, burst/rate seconds of rest allow a full burst."""
    bucket = TokenBucket(rate, burst)
    now = start
    for now, (_, cost) in zip(times_from(start, [g for g, _ in steps]), steps,
                              strict=True):
        bucket.take(now, cost * burst)
    rested = now + burst / rate * (1 + 1e-9) + SLACK
    assert bucket.is_full(rested)
    assert bucket.take(rested, burst)


@given(rate=rates, burst=bursts, start=starts,
       steps=st.lists(st.tuples(st.floats(-100, 100), fractions), max_size=40))
def test_time_going_backwards_never_admits_more(
    rate: float, burst: float, start: float, steps: list[tuple[float, float]]
) -> None:
    """With times in any order, admitted cost <= burst + rate*(latest - first)."""
    bucket = TokenBucket(rate, burst)
    times = times_from(start, [jump for jump, _ in steps])
    total = 0.0
    for now, (_, cost) in zip(times, steps, strict=True):
        latest = bucket.last
        at_latest = copy.copy(bucket)
        admitted = bucket.take(now, cost * burst)
        total += cost * burst if admitted else 0.0
        if now < latest:
            # A take in the past is exactly a take at the latest time seen.
            assert at_latest.take(latest, cost * burst) == admitted
            assert at_latest.tokens == bucket.tokens
        assert bucket.last == max(latest, now)
    if times:
        bound = burst + rate * (max(times) - times[0])
        assert total <= bound * (1 + 1e-9) + SLACK


@given(rate=rates, burst=bursts, start=starts, cost=fractions,
       steps=st.lists(st.tuples(gaps, fractions), max_size=20))
def test_retry_after_is_exact(
    rate: float, burst: float, start: float, cost: float,
    steps: list[tuple[float, float]]
) -> None:
    """Just before retry_after a take fails; at it (plus rounding) it succeeds."""
    bucket = TokenBucket(rate, burst)
    now = start
    for now, (_, spent) in zip(times_from(start, [g for g, _ in steps]), steps,
                               strict=True):
        bucket.take(now, spent * burst)
    cost *= burst
    wait = bucket.retry_after(now, cost)
    if cost > burst:
        assert wait == math.inf
        return
    assert wait >= 0
    if wait > 0:
        delta = max(wait * 1e-6, 1e-6)
        assume(wait > 2 * delta)
        early = copy.copy(bucket)
        assert not early.take(now + wait - delta, cost)
    assert bucket.take(now + wait + SLACK * (1 + wait), cost)


def test_table_keys_are_independent() -> None:
    """Exhausting one key leaves another key's burst untouched."""
    table = BucketTable(rate=1, burst=2, max_entries=10)
    assert table.take("a", 0.0)
    assert table.take("a", 0.0)
    assert not table.take("a", 0.0)
    assert table.retry_after("a", 0.0) == 1.0
    assert table.take("b", 0.0)
    assert table.retry_after("c", 0.0) == 0


def test_table_drops_buckets_that_refilled() -> None:
    """Idle keys whose buckets are full again leave the table on later calls."""
    table = BucketTable(rate=1, burst=1, max_entries=10)
    for key in "abc":
        table.take(key, 0.0)
    assert len(table) == 3
    table.take("d", 5.0)
    table.take("d", 5.0)
    assert list(table) == ["d"]


def test_eviction_prefers_a_full_bucket_to_the_oldest() -> None:
    """When full, a new key evicts an idle full bucket, not an exhausted one."""
    table = BucketTable(rate=1, burst=10, max_entries=3)
    assert table.take("drained", 0.0, 10)
    table.take("idle", 0.0, 1)
    table.take("busy", 5.0, 10)
    table.take("new", 5.0)
    assert "drained" in table
    assert "idle" not in table
    assert not table.take("drained", 5.0, 6)
    assert table.resets == 0


def test_eviction_of_a_bucket_that_is_not_full_is_counted() -> None:
    """With no full bucket to evict, the oldest goes and resets counts it."""
    table = BucketTable(rate=1, burst=10, max_entries=2)
    table.take("a", 0.0, 10)
    table.take("b", 0.0, 10)
    table.take("c", 0.0, 10)
    assert list(table) == ["b", "c"]
    assert table.resets == 1


def test_table_needs_room_for_one_entry() -> None:
    """max_entries below 1 is a ValueError."""
    with pytest.raises(ValueError, match="max_entries"):
        BucketTable(1, 1, 0)


keys = st.sampled_from("abcdefgh")


@given(rate=rates, burst=bursts, start=starts, max_entries=st.integers(1, 6),
       ops=st.lists(st.tuples(keys, gaps, fractions), max_size=60))
def test_table_never_exceeds_max_entries(
    rate: float, burst: float, start: float, max_entries: int,
    ops: list[tuple[str, float, float]]
) -> None:
    """However many keys arrive, the table holds at most max_entries buckets."""
    table = BucketTable(rate, burst, max_entries)
    for now, (key, _, cost) in zip(times_from(start, [g for _, g, _ in ops]), ops,
                                   strict=True):
        table.take(key, now, cost * burst)
        assert len(table) <= max_entries


@given(rate=rates, burst=bursts, start=starts,
       ops=st.lists(st.tuples(keys, st.floats(0, 5), fractions), max_size=60))
def test_table_under_capacity_behaves_like_a_dict_of_buckets(
    rate: float, burst: float, start: float, ops: list[tuple[str, float, float]]
) -> None:
    """With room for every key, sweeping idle buckets never changes an answer."""
    table = BucketTable(rate, burst, max_entries=8)
    model: dict[str, TokenBucket] = {}
    for now, (key, _, cost) in zip(times_from(start, [g for _, g, _ in ops]), ops,
                                   strict=True):
        expected = model.setdefault(key, TokenBucket(rate, burst))
        assert table.retry_after(key, now, cost * burst) == expected.retry_after(
            now, cost * burst)
        assert table.take(key, now, cost * burst) == expected.take(now, cost * burst)
    assert table.resets == 0
