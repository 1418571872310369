"""Session rules: throttling, fragments, heartbeat, idle and lifetime."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from securews.session import Close, Drop, Ping, SessionGuard
from securews.settings import LimitsSettings, RateLimitSettings


def guard(*, limits: dict[str, float] | None = None,
          rates: dict[str, float] | None = None) -> SessionGuard:
    return SessionGuard(LimitsSettings(**(limits or {})),
                        RateLimitSettings(**(rates or {})), opened_at=0.0)


def test_message_rate_over_the_burst_is_closed_1008() -> None:
    """message_burst messages pass at once; the next is 1008."""
    g = guard(rates={"messages_per_second": 1, "message_burst": 3})
    assert [g.message(10, now=0) for _ in range(3)] == [None, None, None]
    assert g.message(10, now=0) == Close(1008, "rate limit exceeded", "rate_limited")


def test_byte_rate_is_throttled_separately() -> None:
    """A few huge messages exceed bytes_burst even under the message rate."""
    g = guard(rates={"bytes_per_second": 100, "bytes_burst": 65536})
    assert g.message(65536, now=0) is None
    assert g.message(1, now=0) == Close(1008, "rate limit exceeded", "rate_limited")


def test_rate_recovers_with_time() -> None:
    """After 1/rate seconds one more message is allowed."""
    g = guard(rates={"messages_per_second": 2, "message_burst": 1})
    assert g.message(1, now=0) is None
    assert g.message(1, now=0.4) is not None
    g = guard(rates={"messages_per_second": 2, "message_burst": 1})
    assert g.message(1, now=0) is None
    assert g.message(1, now=0.5) is None


def test_too_many_fragments_is_1009() -> None:
    """The (max_fragments+1)th frame of one message closes with 1009."""
    g = guard(limits={"max_fragments": 3})
    assert [g.frame() for _ in range(3)] == [None, None, None]
    assert g.frame() == Close(1009, "too many fragments", "fragments")


def test_fragment_count_restarts_with_each_message() -> None:
    """Fragments are counted per message, not per session."""
    g = guard(limits={"max_fragments": 2})
    for _ in range(5):
        assert g.frame() is None
        assert g.frame() is None
        assert g.message(1, now=0) is None


def test_heartbeat_pings_then_drops_a_silent_peer() -> None:
    """Ping at ping_interval; no traffic by ping_timeout later: dead peer."""
    g = guard(limits={"ping_interval": 20, "ping_timeout": 10})
    assert g.next_deadline() == 20
    assert g.tick(19.9) is None
    assert g.tick(20) == Ping()
    assert g.next_deadline() == 30
    assert g.tick(29.9) is None
    assert g.tick(30) == Drop("dead_peer")


def test_any_traffic_after_the_ping_proves_liveness() -> None:
    """A pong (or any bytes) after the ping keeps the session."""
    g = guard(limits={"ping_interval": 20, "ping_timeout": 10})
    assert g.tick(20) == Ping()
    g.traffic(25)
    assert g.tick(30) is None
    assert g.next_deadline() == 40
    assert g.tick(40) == Ping()


def test_idle_session_is_closed_1000_and_pongs_do_not_count() -> None:
    """No data message for idle_timeout: 1000 'idle timeout', pongs or not."""
    g = guard(limits={"idle_timeout": 60, "ping_interval": 20, "ping_timeout": 10})
    for at in (20, 40):
        assert g.tick(at) == Ping()
        g.traffic(at + 1)
    assert g.tick(59.9) is None
    assert g.tick(60) == Close(1000, "idle timeout", "idle")


def test_data_messages_postpone_idleness() -> None:
    """A message moves the idle deadline."""
    g = guard(limits={"idle_timeout": 60, "ping_interval": 1000})
    assert g.message(1, now=50) is None
    assert g.next_deadline() == 110
    assert g.tick(100) is None


def test_lifetime_closes_1001_and_zero_means_unlimited() -> None:
    """A session older than max_lifetime is closed 1001; 0 disables it."""
    g = guard(limits={"max_lifetime": 100, "idle_timeout": 1000,
                      "ping_interval": 1000})
    assert g.next_deadline() == 100
    assert g.tick(100) == Close(1001, "session lifetime", "lifetime")
    g = guard(limits={"max_lifetime": 0, "idle_timeout": 1000,
                      "ping_interval": 1000})
    assert g.next_deadline() == 1000


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 70000)), max_size=200),
       st.floats(0.5, 100), st.integers(1, 50))
def test_admitted_messages_never_exceed_the_bucket_bound(
    steps: list[tuple[float, int]], rate: float, burst: int
) -> None:
    """Messages admitted by time t never exceed burst + rate * t."""
    g = guard(rates={"messages_per_second": rate, "message_burst": burst,
                     "bytes_per_second": 2**30, "bytes_burst": 2**31})
    now, admitted = 0.0, 0
    for dt, size in steps:
        now += dt
        if g.message(size, now) is None:
            admitted += 1
            assert admitted <= burst + rate * now + 1e-6


@given(st.lists(st.sampled_from(["tick", "traffic", "message"]), max_size=60),
       st.lists(st.floats(0, 30), min_size=60, max_size=60))
def test_deadline_is_never_in_the_past_after_a_tick(
    events: list[str], gaps: list[float]
) -> None:
    """After tick(now) the next deadline lies after now, unless a verdict ends it."""
    g = guard(limits={"ping_interval": 20, "ping_timeout": 10, "idle_timeout": 100,
                      "max_lifetime": 500},
              rates={"message_burst": 10**6, "bytes_burst": 2**31})
    now = 0.0
    for event, gap in zip(events, gaps, strict=False):
        now += gap
        if event == "traffic":
            g.traffic(now)
        elif event == "message":
            g.message(1, now)
        else:
            verdict = g.tick(now)
            if isinstance(verdict, Close | Drop):
                return
            assert g.next_deadline() > now
