"""Traffic-spike alerts: windows, thresholds, aggregation, bounded memory."""

from __future__ import annotations

import io
import json
import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, LogLevel

from securews.ops.alerts import (
    COUNTERS,
    OVERFLOW,
    AlertLogger,
    Offender,
    SpikeAlert,
    SpikeDetector,
    alert_network,
)
from securews.ops.logs import make_observer
from securews.rules.config import LogSettings
from securews.rules.settings import AlertsSettings

T0 = 1_700_000_000.0  # a multiple of 10: a window starts here
SETTINGS = AlertsSettings(window=10.0, connect_attempts=12, auth_failures=3,
                          denials=5)


def burst(detector: SpikeDetector, counter: str, clients: list[str],
          start: float, step: float = 0.01) -> list[SpikeAlert]:
    """Record one event per client, ``step`` apart; the alerts raised."""
    alerts = []
    for i, client in enumerate(clients):
        alert = detector.record(counter, client, start + i * step)
        if alert is not None:
            alerts.append(alert)
    return alerts


def failing_handshakes() -> list[str]:
    """8 clients in one /24 (varied last octet), 5 in one /64, interleaved."""
    v4 = [f"198.51.100.{n}" for n in (1, 7, 23, 99, 150, 200, 201, 254)]
    v6 = [f"2001:db8:1:2::{n:x}" for n in (1, 0xbeef, 0xffff, 0x1234, 0x42)]
    return [v4[0], v4[1], v6[0], v4[2], v4[3], v6[1], v4[4], v4[5], v6[2],
            v4[6], v4[7], v6[3], v6[4]]


# -- aggregation -------------------------------------------------------------


@pytest.mark.parametrize(("client", "prefix", "network"), [
    ("198.51.100.77", 64, "198.51.100.0/24"),
    ("::ffff:198.51.100.77", 64, "198.51.100.0/24"),
    ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"),
    ("fe80::1%eth0", 64, "fe80::/64"),
    ("unix", 64, "local"),
    ("", 64, "local"),
])
def test_clients_are_aggregated_into_networks(client: str, prefix: int,
                                              network: str) -> None:
    """IPv4 by /24, IPv6 by the configured prefix, the rest as "local"."""
    assert alert_network(client, prefix) == network


def test_bad_arguments_are_refused() -> None:
    """An impossible prefix or bound, or an unknown counter, is a ValueError."""
    with pytest.raises(ValueError, match="ipv6_prefix"):
        SpikeDetector(SETTINGS, 129)
    with pytest.raises(ValueError, match="at least 1"):
        SpikeDetector(SETTINGS, max_networks=0)
    with pytest.raises(ValueError, match="unknown counter"):
        SpikeDetector(SETTINGS).record("logins", "198.51.100.1", T0)


# -- the spike ----------------------------------------------------------------


def test_burst_of_failing_handshakes_alerts_once_naming_the_networks() -> None:
    """
    13 attempts against a threshold of 12: one alert, on the 13th, with
    the /24 and the /64 counted as two offenders.
    """
    detector = SpikeDetector(SETTINGS)
    clients = failing_handshakes()
    alerts = burst(detector, "connect_attempts", clients, T0)
    assert alerts == [SpikeAlert(
        counter="connect_attempts", count=13, threshold=12, window=10.0,
        window_start=T0,
        offenders=(Offender("198.51.100.0/24", 8), Offender("2001:db8:1:2::/64", 5)),
    )]
    # The rest of the window stays quiet, however much more comes.
    assert burst(detector, "connect_attempts", clients * 10, T0 + 1) == []


def test_threshold_is_exceeded_not_reached() -> None:
    """Exactly ``threshold`` events in a window raise nothing."""
    detector = SpikeDetector(SETTINGS)
    assert burst(detector, "denials", ["198.51.100.1"] * 5, T0) == []
    [alert] = burst(detector, "denials", ["198.51.100.1"], T0 + 9.9)
    assert alert.count == 6


def test_next_window_starts_fresh() -> None:
    """
    A new window counts from zero: the same burst alerts again, and a
    burst at or below the threshold does not.
    """
    detector = SpikeDetector(SETTINGS)
    clients = failing_handshakes()
    assert len(burst(detector, "connect_attempts", clients, T0)) == 1
    assert len(burst(detector, "connect_attempts", clients, T0 + 10)) == 1
    assert burst(detector, "connect_attempts", clients[:12], T0 + 20) == []
    [alert] = burst(detector, "connect_attempts", clients, T0 + 30)
    assert alert.window_start == T0 + 30
    assert alert.offenders == (Offender("198.51.100.0/24", 8),
                               Offender("2001:db8:1:2::/64", 5))


def test_a_burst_across_a_boundary_counts_in_each_window() -> None:
    """Windows tumble: 7 + 7 attempts either side of a boundary raise nothing."""
    detector = SpikeDetector(SETTINGS)
    assert burst(detector, "connect_attempts", ["198.51.100.1"] * 7, T0 + 9.5) == []
    assert burst(detector, "connect_attempts", ["198.51.100.1"] * 7, T0 + 10) == []


def test_each_counter_has_its_own_threshold() -> None:
    """auth_failures alerts at 4, denials at 6, connect_attempts at 13."""
    detector = SpikeDetector(SETTINGS)
    client = ["203.0.113.9"] * 20
    firsts = {}
    for counter in COUNTERS:
        for i, c in enumerate(client, start=1):
            if detector.record(counter, c, T0) is not None:
                firsts[counter] = i
                break
    assert firsts == {"connect_attempts": 13, "auth_failures": 4, "denials": 6}


def test_counters_do_not_share_a_window_budget() -> None:
    """An alert on one counter does not silence another in the same window."""
    detector = SpikeDetector(SETTINGS)
    assert len(burst(detector, "auth_failures", ["203.0.113.9"] * 4, T0)) == 1
    assert len(burst(detector, "denials", ["203.0.113.9"] * 6, T0)) == 1
    assert burst(detector, "auth_failures", ["203.0.113.9"] * 4, T0 + 1) == []


def test_offenders_are_the_top_five_most_first() -> None:
    """Seven networks: the five busiest, by count then by network."""
    detector = SpikeDetector(AlertsSettings(window=60, denials=28))
    clients = []
    for octet, count in [(1, 2), (2, 7), (3, 4), (4, 4), (5, 1), (6, 6), (7, 4)]:
        clients += [f"10.0.{octet}.{n}" for n in range(count)]
    [alert] = burst(detector, "denials", [*clients, "10.0.9.9"], T0)
    assert alert.count == 29
    assert alert.offenders == (
        Offender("10.0.2.0/24", 7), Offender("10.0.6.0/24", 6),
        Offender("10.0.3.0/24", 4), Offender("10.0.4.0/24", 4),
        Offender("10.0.7.0/24", 4),
    )


def test_clock_stepping_back_does_not_reopen_a_window() -> None:
    """Events from an earlier time count in the current window."""
    detector = SpikeDetector(SETTINGS)
    assert len(burst(detector, "auth_failures", ["203.0.113.9"] * 4, T0 + 20)) == 1
    assert burst(detector, "auth_failures", ["203.0.113.9"] * 10, T0) == []
    assert len(burst(detector, "auth_failures", ["203.0.113.9"] * 4, T0 + 30)) == 1


def test_fractional_windows() -> None:
    """Sub-second windows tumble too."""
    detector = SpikeDetector(AlertsSettings(window=0.5, auth_failures=1))
    times = [0.0, 0.1, 0.5, 0.9, 1.0, 1.4]
    alerts = [detector.record("auth_failures", "203.0.113.9", T0 + t) for t in times]
    assert [a is not None for a in alerts] == [False, True] * 3


# -- bounded memory -------------------------------------------------------------


def test_flood_of_distinct_networks_is_bounded() -> None:
    """
    50,000 distinct /24s: the table holds at most ``max_networks`` of
    them, and the rest are counted as "other", which ranks as an offender.
    """
    detector = SpikeDetector(AlertsSettings(window=10, denials=50_000),
                             max_networks=100)
    flood = [f"{a}.{b}.{c}.1" for a in (11, 12) for b in range(250) for c in range(100)]
    assert burst(detector, "denials", flood[:50_000], T0, step=0.0) == []
    assert detector.tracked_networks() == 100
    [alert] = burst(detector, "denials", ["11.0.0.1"], T0)
    assert alert.offenders[0] == Offender(OVERFLOW, 49_900)
    assert alert.offenders[1] == Offender("11.0.0.0/24", 2)
    assert detector.tracked_networks() == 0


def test_default_table_is_capped_at_ten_thousand() -> None:
    """The default bound holds per counter, before an alert frees the table."""
    detector = SpikeDetector(AlertsSettings(window=10, connect_attempts=100_000))
    clients = [f"2001:db8:{n:x}::1" for n in range(20_000)]
    burst(detector, "connect_attempts", clients, T0, step=0.0)
    assert detector.tracked_networks() == 10_000


# -- hypothesis: at most one alert per counter per window ------------------------


events = st.lists(
    st.tuples(st.sampled_from(COUNTERS),
              st.sampled_from(["198.51.100.1", "198.51.100.2", "203.0.113.5",
                               "2001:db8::1", "2001:db8:0:1::1", "unix"]),
              st.floats(0, 30, allow_nan=False)),
    max_size=200,
)


@given(events=events, thresholds=st.tuples(*[st.integers(1, 6)] * 3),
       window=st.sampled_from([0.5, 1.0, 7.0]))
def test_at_most_one_alert_per_counter_per_window(
    events: list[tuple[str, str, float]], thresholds: tuple[int, int, int],
    window: float,
) -> None:
    """
    For any sequence of events (times may go back), no counter alerts
    twice in one window, every alert has exceeded its threshold, and its
    offenders never add up to more than its count.
    """
    settings = AlertsSettings(window, *thresholds)
    detector = SpikeDetector(settings, max_networks=3)
    seen: set[tuple[str, float]] = set()
    for counter, client, now in events:
        alert = detector.record(counter, client, T0 + now)
        if alert is None:
            continue
        key = (alert.counter, alert.window_start)
        assert key not in seen
        seen.add(key)
        assert alert.count == detector.thresholds[counter] + 1
        assert sum(o.count for o in alert.offenders) <= alert.count
        assert len(alert.offenders) <= 5


@given(events=events, thresholds=st.tuples(*[st.integers(1, 6)] * 3))
def test_alerts_match_a_model_when_time_moves_forward(
    events: list[tuple[str, str, float]], thresholds: tuple[int, int, int],
) -> None:
    """With time moving forward, alerts are exactly the model's."""
    settings = AlertsSettings(10.0, *thresholds)
    detector = SpikeDetector(settings)
    counts: Counter[tuple[str, int]] = Counter()
    now = T0
    for counter, client, gap in events:
        now += gap
        counts[counter, math.floor(now / 10.0)] += 1
        expected = counts[counter, math.floor(now / 10.0)] == (
            detector.thresholds[counter] + 1)
        assert (detector.record(counter, client, now) is not None) == expected


# -- logging ---------------------------------------------------------------------


def test_alert_logger_warns_once_per_window_with_the_aggregated_offender() -> None:
    """
    A burst of failing handshakes on the reactor's clock: exactly one
    WARNING per window, event "alert", naming the /24 with its count.
    """
    clock = Clock()
    clock.advance(T0)
    captured: list[LogEvent] = []
    alerts = AlertLogger(SETTINGS, 64, clock,
                         Logger(namespace="securews.alerts", observer=captured.append))
    clients = [f"198.51.100.{n}" for n in range(1, 200)]
    for _second in range(30):
        for client in clients[:20]:
            alerts.record("auth_failures", client)
        clock.advance(1)
    warnings = [e for e in captured if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 3 == len(captured)
    for event in warnings:
        assert event["event"] == "alert"
        assert (event["counter"], event["count"], event["window"]) == (
            "auth_failures", 4, 10.0)
        assert event["offenders"] == [{"network": "198.51.100.0/24", "count": 4}]
        assert "198.51.100.0/24 (4)" in event["log_format"].format(**event)


def test_alert_in_the_json_log() -> None:
    """The JSON line names counter, count, window and offenders, no addresses."""
    out = io.StringIO()
    clock = Clock()
    clock.advance(T0)
    logger = Logger(namespace="securews.alerts",
                    observer=make_observer(LogSettings(format="json"), out=out))
    alerts = AlertLogger(SETTINGS, 64, clock, logger)
    for client in failing_handshakes():
        alerts.record("connect_attempts", client)
    [record] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert record["level"] == "warn"
    assert record["event"] == "alert"
    assert record["namespace"] == "securews.alerts"
    assert (record["counter"], record["count"], record["threshold"],
            record["window"]) == ("connect_attempts", 13, 12, 10.0)
    assert record["offenders"] == [
        {"network": "198.51.100.0/24", "count": 8},
        {"network": "2001:db8:1:2::/64", "count": 5},
    ]
    assert record["message"] == (
        "traffic spike: 13 connect_attempts within 10.0s (threshold 12); top "
        "client networks: 198.51.100.0/24 (8), 2001:db8:1:2::/64 (5)")
    assert "198.51.100.7" not in out.getvalue()
