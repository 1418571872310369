"""Session rules: throttling, fragments, heartbeat, idle and lifetime."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securews.rules.session import (
    CREDENTIAL_EXPIRED,
    RECORD_COST,
    Close,
    Drop,
    Ping,
    Renew,
    SessionGuard,
)
from securews.rules.settings import LimitsSettings, RateLimitSettings


def guard(*, limits: dict[str, float] | None = None,
          rates: dict[str, float] | None = None) -> SessionGuard:
    return SessionGuard(LimitsSettings(**(limits or {})),
                        RateLimitSettings(**(rates or {})), opened_at=0.0)


TEXT, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x0, 0x8, 0x9, 0xA
RATE_LIMITED = Close(1008, "rate limit exceeded", "rate_limited")


def test_frame_rate_over_the_burst_is_closed_1008() -> None:
    """message_burst frames pass at once; the next is 1008."""
    g = guard(rates={"messages_per_second": 1, "message_burst": 3})
    assert [g.frame(TEXT, 10, now=0) for _ in range(3)] == [None, None, None]
    assert g.frame(TEXT, 10, now=0) == RATE_LIMITED


@pytest.mark.parametrize("opcode", [CONTINUATION, TEXT, CLOSE, PING, PONG])
def test_every_opcode_costs_a_token(opcode: int) -> None:
    """Control frames (unsolicited pongs included) are charged like data."""
    g = guard(rates={"messages_per_second": 1, "message_burst": 2},
              limits={"max_fragments": 100})
    assert g.frame(opcode, 0, now=0) is None
    assert g.frame(opcode, 0, now=0) is None
    assert g.frame(opcode, 0, now=0) == RATE_LIMITED


@pytest.mark.parametrize("opcode", [TEXT, PING, PONG])
def test_every_opcode_costs_its_payload_in_bytes(opcode: int) -> None:
    """125-byte pongs drain the byte bucket as 125-byte messages do."""
    g = guard(rates={"bytes_per_second": 1, "bytes_burst": 65536,
                     "message_burst": 10**6})
    for _ in range(65536 // 125):
        assert g.frame(opcode, 125, now=0) is None
        if opcode < 8:
            assert g.message(125, now=0) is None
    assert g.frame(opcode, 125, now=0) == RATE_LIMITED


def test_byte_rate_is_charged_from_the_frame_header() -> None:
    """A frame bigger than what is left is refused before its payload."""
    g = guard(rates={"bytes_per_second": 100, "bytes_burst": 65536})
    assert g.frame(TEXT, 65536, now=0) is None
    assert g.message(65536, now=0) is None
    assert g.frame(TEXT, 1, now=0) == RATE_LIMITED


def test_inflated_bytes_beyond_the_wire_size_are_charged_at_message_end() -> None:
    """A compressed message costs what it inflated to, not only its wire size."""
    g = guard(rates={"bytes_per_second": 1, "bytes_burst": 100_000})
    assert g.frame(TEXT, 1_000, now=0) is None
    assert g.message(60_000, now=0) is None
    assert g.frame(TEXT, 1_000, now=0) is None
    assert g.message(60_000, now=0) == RATE_LIMITED


def test_a_message_is_not_charged_twice_for_its_wire_bytes() -> None:
    """An uncompressed message's bytes are charged once, by its frames."""
    g = guard(rates={"bytes_per_second": 1, "bytes_burst": 100})
    for _ in range(2):
        assert g.frame(TEXT, 50, now=0) is None
        assert g.message(50, now=0) is None
    assert g.frame(TEXT, 1, now=0) == RATE_LIMITED


def test_rate_recovers_with_time() -> None:
    """After 1/rate seconds one more frame is allowed."""
    g = guard(rates={"messages_per_second": 2, "message_burst": 1})
    assert g.frame(PONG, 0, now=0) is None
    assert g.frame(PONG, 0, now=0.4) is not None
    g = guard(rates={"messages_per_second": 2, "message_burst": 1})
    assert g.frame(PONG, 0, now=0) is None
    assert g.frame(PONG, 0, now=0.5) is None


def test_too_many_fragments_is_1009() -> None:
    """The (max_fragments+1)th data frame of one message closes with 1009."""
    g = guard(limits={"max_fragments": 3})
    assert [g.frame(CONTINUATION, 1, now=0) for _ in range(3)] == [None] * 3
    assert g.frame(CONTINUATION, 1, now=0) == Close(1009, "too many fragments",
                                                    "fragments")


def test_control_frames_between_fragments_are_not_fragments() -> None:
    """Pings inside a fragmented message cost tokens, not fragments."""
    g = guard(limits={"max_fragments": 2})
    assert g.frame(TEXT, 1, now=0) is None
    for _ in range(5):
        assert g.frame(PING, 0, now=0) is None
    assert g.frame(CONTINUATION, 1, now=0) is None


def test_fragment_count_restarts_with_each_message() -> None:
    """Fragments are counted per message, not per session."""
    g = guard(limits={"max_fragments": 2})
    for _ in range(5):
        assert g.frame(TEXT, 1, now=0) is None
        assert g.frame(CONTINUATION, 0, now=0) is None
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


@given(st.lists(st.tuples(st.floats(0, 5), st.sampled_from([0, 1, 2, 8, 9, 10]),
                          st.integers(0, 125)), max_size=200),
       st.floats(0.5, 100), st.integers(1, 50))
def test_admitted_frames_never_exceed_the_bucket_bound(
    steps: list[tuple[float, int, int]], rate: float, burst: int
) -> None:
    """Frames admitted by time t, of any opcode mix, never exceed burst + rate * t."""
    g = guard(rates={"messages_per_second": rate, "message_burst": burst,
                     "bytes_per_second": 2**30, "bytes_burst": 2**31},
              limits={"max_fragments": 10**6})
    now, admitted = 0.0, 0
    for dt, opcode, size in steps:
        now += dt
        if g.frame(opcode, size, now) is None:
            admitted += 1
            assert admitted <= burst + rate * now + 1e-6


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 70000),
                          st.integers(0, 70000)), max_size=100),
       st.floats(1, 10**6), st.integers(70000, 10**6))
def test_admitted_bytes_never_exceed_the_bucket_bound(
    steps: list[tuple[float, int, int]], rate: float, burst: int
) -> None:
    """Bytes admitted by time t (wire, then inflated excess) never exceed
    burst + rate * t."""
    g = guard(rates={"bytes_per_second": rate, "bytes_burst": burst,
                     "message_burst": 10**6})
    now, admitted = 0.0, 0
    for dt, wire, inflated in steps:
        now += dt
        if g.frame(TEXT, wire, now) is not None:
            return
        if g.message(max(wire, inflated), now) is not None:
            return
        admitted += max(wire, inflated)
        assert admitted <= burst + rate * now + 1e-3


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


# -- a session never outlives its credential ---------------------------------------


def expiring(expires_at: float, renewable: bool = False) -> SessionGuard:
    return SessionGuard(LimitsSettings(idle_timeout=1000, ping_interval=1000),
                        RateLimitSettings(), opened_at=0.0, expires_at=expires_at,
                        renewable=renewable)


def test_expired_credential_closes_4401_at_the_instant() -> None:
    """The deadline is the credential's expiry: open just before, 4401 at it."""
    g = expiring(42.5)
    assert g.next_deadline() == 42.5
    assert g.tick(42.499) is None
    assert g.tick(42.5) == CREDENTIAL_EXPIRED == Close(4401, "credential expired",
                                                       "credential_expired")


def test_a_renewable_credential_is_asked_about_once_then_extended() -> None:
    """Renew, no second verdict while the answer is awaited, then the new
    expiry is the deadline."""
    g = expiring(10, renewable=True)
    assert g.tick(10) == Renew()
    assert g.tick(11) is None
    assert g.next_deadline() == 1000
    g.renewed(40, renewable=True)
    assert g.next_deadline() == 40
    assert g.tick(39.9) is None
    assert g.tick(40) == Renew()


def test_renewed_without_an_expiry_never_expires() -> None:
    g = expiring(10, renewable=True)
    assert g.tick(10) == Renew()
    g.renewed(None, renewable=False)
    assert g.next_deadline() == 1000
    assert g.tick(999) is None


def test_max_lifetime_stays_the_outer_bound() -> None:
    """A credential valid for a year still ends at max_lifetime."""
    g = SessionGuard(LimitsSettings(idle_timeout=600_000, ping_interval=3600,
                                    max_lifetime=100),
                     RateLimitSettings(), opened_at=0.0, expires_at=365 * 86400)
    assert g.next_deadline() == 100
    assert g.tick(100) == Close(1001, "session lifetime", "lifetime")


def test_a_dead_peer_is_dropped_before_its_credential_is_looked_at() -> None:
    g = SessionGuard(LimitsSettings(ping_interval=5, ping_timeout=5,
                                    idle_timeout=1000),
                     RateLimitSettings(), opened_at=0.0, expires_at=10)
    assert g.tick(5) == Ping()
    assert g.tick(10) == Drop("dead_peer")


# -- TLS records -------------------------------------------------------------------


def test_tiny_tls_records_are_charged_what_they_cost() -> None:
    """One-byte records cost RECORD_COST bytes each; full records nothing."""
    g = guard(rates={"bytes_per_second": 1, "bytes_burst": 100 * RECORD_COST})
    assert g.records(1, 16384, now=0) is None
    assert g.records(4, 4 * RECORD_COST, now=0) is None
    assert g.bytes.level(0) == 100 * RECORD_COST
    assert g.records(99, 99, now=0) is None
    assert g.records(2, 2, now=0) == RATE_LIMITED


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(1, 5000),
                          st.integers(0, 10**6)), max_size=100),
       st.floats(1, 10**6), st.integers(70000, 10**7))
def test_record_charges_never_exceed_the_byte_bound(
    reads: list[tuple[float, int, int]], rate: float, burst: int
) -> None:
    """However records fall, the shortfall admitted by time t stays within
    burst + rate * t."""
    g = guard(rates={"bytes_per_second": rate, "bytes_burst": burst})
    now, admitted = 0.0, 0
    for dt, count, size in reads:
        now += dt
        if g.records(count, size, now) is not None:
            return
        admitted += max(0, count * RECORD_COST - size)
        assert admitted <= burst + rate * now + 1e-3
