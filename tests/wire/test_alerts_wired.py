"""Spike alerts from the real handshake, in memory."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel

from securews.auth.interfaces import AuthenticationFailed
from tests.support.memory import (
    FixedAuthenticator,
    connect,
    make_factory,
    request,
    status,
)

T0 = 1_700_000_000.0


def test_burst_of_failing_handshakes_warns_once_per_window(
    clock: Clock, events: list[LogEvent]
) -> None:
    """
    Failing handshakes from one /24 (varied last octet): exactly one
    WARNING per window, naming the /24 with its count.
    """
    clock.advance(T0)
    factory = make_factory(
        clock, FixedAuthenticator(AuthenticationFailed("bad_signature", "jwt")),
        alerts={"window": 10, "auth_failures": 3, "denials": 1000,
                "connect_attempts": 1000},
    )
    for window in range(2):
        for n in range(1, 11):
            proto, transport = connect(factory, peer=f"198.51.100.{n + 20 * window}")
            proto.dataReceived(request())
            assert status(transport) == 401
        clock.advance(10)
    alerts = [e for e in events if e.get("event") == "alert"]
    assert len(alerts) == 2
    for alert in alerts:
        assert alert["log_level"] == LogLevel.warn
        assert (alert["counter"], alert["count"]) == ("auth_failures", 4)
        assert alert["offenders"] == [{"network": "198.51.100.0/24", "count": 4}]


def test_refusals_count_as_denials_and_heads_as_attempts(
    clock: Clock, events: list[LogEvent]
) -> None:
    """404s are denials; every complete head is a connection attempt."""
    clock.advance(T0)
    factory = make_factory(clock, alerts={"window": 10, "denials": 2,
                                          "connect_attempts": 4})
    for n in range(5):
        proto, transport = connect(factory, peer=f"2001:db8::{n + 1}")
        proto.dataReceived(request(path="/nope"))
        assert status(transport) == 404
    alerts = [(e["counter"], e["count"], e["offenders"])
              for e in events if e.get("event") == "alert"]
    assert alerts == [
        ("denials", 3, [{"network": "2001:db8::/64", "count": 3}]),
        ("connect_attempts", 5, [{"network": "2001:db8::/64", "count": 5}]),
    ]
