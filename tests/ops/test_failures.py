"""Connections that fail before authentication: counted, logged in aggregate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, LogLevel

from securews.ops.failures import CATEGORIES, FailureLog, FailureSummary, FailureTally


def lines(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("event") == "connection_failures"]


def failure_log(clock: Clock, events: list[LogEvent], window: float = 10) -> FailureLog:
    logger = Logger(namespace="test.failures", observer=events.append)
    return FailureLog(window, 64, clock, logger)


def test_a_window_of_failures_is_one_line_when_it_ends() -> None:
    """Nothing is logged per connection; at the window's end, one line with
    the count and the busiest networks."""
    clock, events = Clock(), []
    log = failure_log(clock, events)
    for n in range(300):
        log.record("tls_failure", f"198.51.100.{n % 3}")
    log.record("tls_failure", "2001:db8:1:2::9")
    clock.advance(9.999)
    assert lines(events) == []
    clock.advance(0.001)
    [line] = lines(events)
    assert (line["reason"], line["count"], line["window"]) == ("tls_failure", 301, 10)
    assert line["offenders"] == [{"network": "198.51.100.0/24", "count": 300},
                                 {"network": "2001:db8:1:2::/64", "count": 1}]
    assert line["log_level"] == LogLevel.info
    assert clock.getDelayedCalls() == []


def test_client_caused_tls_failures_are_info_refusals_are_warnings() -> None:
    """A TLS failure is the client's doing: never above INFO."""
    assert CATEGORIES["tls_failure"][0] == LogLevel.info
    assert CATEGORIES["handshake_timeout"][0] == LogLevel.info
    # A shared limiter or store that does not answer is the server's trouble.
    assert CATEGORIES["unavailable"][0] == LogLevel.error
    assert {level for name, (level, _) in CATEGORIES.items()
            if name not in ("tls_failure", "handshake_timeout", "unavailable")
            } == {LogLevel.warn}


def test_each_category_gets_its_own_line() -> None:
    """Categories are counted apart; quiet windows write nothing."""
    clock, events = Clock(), []
    log = failure_log(clock, events)
    log.record("connect_rate", "203.0.113.7")
    log.record("too_many_pending", "203.0.113.7")
    log.record("connect_rate", "203.0.113.8")
    clock.advance(10)
    assert sorted((e["reason"], e["count"]) for e in lines(events)) == [
        ("connect_rate", 2), ("too_many_pending", 1)]
    clock.advance(100)
    assert len(lines(events)) == 2


def test_a_late_window_is_summarised_before_the_next_counts() -> None:
    """A failure in a later window first flushes the ended one."""
    clock, events = Clock(), []
    log = failure_log(clock, events)
    log.record("untrusted_peer", "203.0.113.7")
    clock.advance(25)
    log.record("untrusted_peer", "203.0.113.7")
    assert [e["count"] for e in lines(events)] == [1]
    clock.advance(5)
    assert [e["count"] for e in lines(events)] == [1, 1]


def test_stop_writes_what_is_counted_and_holds_no_timer() -> None:
    """At shutdown the open window is summarised at once."""
    clock, events = Clock(), []
    log = failure_log(clock, events)
    log.record("proxy_header_missing", "10.0.0.2")
    log.stop()
    assert [e["count"] for e in lines(events)] == [1]
    assert log.timer is None
    assert clock.getDelayedCalls() == []


def test_unknown_category_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown failure category"):
        FailureTally(10).record("nonsense", "203.0.113.7", 0)


def test_lines_carry_no_client_text() -> None:
    """Only networks and counts: a client's bytes never reach the line."""
    clock, events = Clock(), []
    log = failure_log(clock, events)
    log.record("proxy_header_malformed", "not an address ZZMARKER")
    log.stop()
    [line] = lines(events)
    assert "ZZMARKER" not in repr(line)


@given(st.lists(st.tuples(st.sampled_from(sorted(CATEGORIES)),
                          st.floats(0, 5), st.integers(0, 2**32 - 1)),
                max_size=300))
def test_at_most_one_line_per_category_per_window(
    failures: list[tuple[str, float, int]]
) -> None:
    """However failures fall, each category's lines come one per window
    that saw it, counting every failure exactly once."""
    tally = FailureTally(10)
    now, summaries = 0.0, []
    for category, gap, address in failures:
        now += gap
        client = ".".join(str(address >> s & 255) for s in (24, 16, 8, 0))
        summaries += tally.record(category, client, now)
    summaries += tally.flush(float("inf"))
    seen = [(s.category, s.window_start) for s in summaries]
    assert len(seen) == len(set(seen))
    assert sum(s.count for s in summaries) == len(failures)
    assert all(isinstance(s, FailureSummary) and len(s.offenders) <= 5
               for s in summaries)
