"""
Connections that fail before authentication, logged in aggregate.

A flood of bad connections (plaintext on the TLS port, TLS clients that
reject the certificate, handshakes that never finish, connections over
the connect rate or the unfinished-handshake cap, bad PROXY headers)
must not become a flood of log lines: one line per connection would let
any client fill the disk and bury everything else.  Each such failure is
counted in the metrics where it happens and recorded here; once a window
of ``alerts.window`` seconds has passed, one line per category that
occurred in it says how many there were and which client networks were
busiest (as the spike alerts do).  So whatever the traffic, a category
writes at most one line per window.

A TLS failure is the client's doing (an unknown CA, an old protocol
version, plain HTTP on the TLS port), not a server error: it is logged at
INFO.  The other categories are refusals securews chose, at WARN.

:class:`FailureTally` is pure (time is an argument); :class:`FailureLog`
puts it on a clock with one timer per window that saw a failure.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

from securews.ops.alerts import (
    MAX_NETWORKS,
    TOP_OFFENDERS,
    NetworkTally,
    Offender,
    alert_network,
    current_window,
)

__all__ = ["CATEGORIES", "FailureLog", "FailureSummary", "FailureTally"]

#: Each category, its level and what its line says happened.
CATEGORIES: dict[str, tuple[LogLevel, str]] = {
    "tls_failure": (LogLevel.info, "TLS handshakes failed (client-side: unknown "
                    "CA, old protocol, not TLS, ...)"),
    "handshake_timeout": (LogLevel.info, "connections dropped at "
                          "handshake_timeout without a complete request"),
    "connect_rate": (LogLevel.warn, "connections refused at accept: over the "
                     "client's connect rate"),
    "too_many_pending": (LogLevel.warn, "connections refused at accept: too many "
                         "unfinished handshakes from the client"),
    "rate_limited": (LogLevel.warn, "requests answered 429: over the client's "
                     "connect rate (behind a TLS-terminating proxy)"),
    "untrusted_peer": (LogLevel.warn, "plaintext connections refused: peer is not "
                       "a trusted proxy"),
    "untrusted_proxy": (LogLevel.warn, "connections refused: PROXY header "
                        "expected from a peer outside server.trusted_proxies"),
    "proxy_header_missing": (LogLevel.warn, "connections from trusted proxies "
                             "dropped: no PROXY header"),
    "proxy_header_malformed": (LogLevel.warn, "connections from trusted proxies "
                               "dropped: malformed PROXY header"),
    "proxy_header_too_long": (LogLevel.warn, "connections from trusted proxies "
                              "dropped: PROXY header too long"),
    "proxy_header_timeout": (LogLevel.warn, "connections from trusted proxies "
                             "dropped: no PROXY header in time"),
    "unavailable": (LogLevel.error, "requests answered 503: a shared limiter or "
                    "store did not answer"),
}

_log = Logger(namespace="securews.connections")


@attrs.frozen
class FailureSummary:
    """
    How many failures of one category a window saw.

    :ivar window_start: when the window began (a multiple of ``window``).
    :ivar offenders: the busiest client networks, most first.
    """

    category: str
    count: int
    window: float
    window_start: float
    offenders: tuple[Offender, ...]


class FailureTally:
    """
    Counts failures per category in tumbling windows aligned on multiples
    of ``window`` (as :class:`~securews.ops.alerts.SpikeDetector` does).

    Memory is bounded: one :class:`~securews.ops.alerts.NetworkTally` per
    category, each holding at most ``max_networks`` networks.

    :raises ValueError: for a window that is not positive.
    """

    def __init__(self, window: float, ipv6_prefix: int = 64, *,
                 max_networks: int = MAX_NETWORKS, top: int = TOP_OFFENDERS) -> None:
        if not window > 0:
            raise ValueError(f"window must be positive, got {window!r}")
        self.window = window
        self._ipv6_prefix = ipv6_prefix
        self._max_networks = max_networks
        self._top = top
        self._open: dict[str, NetworkTally] = {}

    def record(self, category: str, client: str, now: float) -> list[FailureSummary]:
        """
        Count one failure.

        :returns: the summaries of windows that ``now`` has ended (for any
            category), which the caller logs now.
        :raises ValueError: for an unknown category.
        """
        if category not in CATEGORIES:
            raise ValueError(f"unknown failure category {category!r}")
        ended = self.flush(now)
        tally = current_window(self._open, category, self.window, now)
        tally.add(alert_network(client, self._ipv6_prefix), self._max_networks)
        return ended

    def flush(self, now: float) -> list[FailureSummary]:
        """The summaries of every window that ended by ``now``; they are
        forgotten."""
        ended = []
        for category, tally in list(self._open.items()):
            if (tally.index + 1) * self.window <= now:
                del self._open[category]
                ended.append(FailureSummary(
                    category, tally.count, self.window, tally.index * self.window,
                    tally.top(self._top)))
        return ended

    def next_end(self) -> float | None:
        """When the earliest open window ends, or ``None`` with none open."""
        if not self._open:
            return None
        return min(tally.index + 1 for tally in self._open.values()) * self.window


def log_summary(summary: FailureSummary, logger: Logger = _log) -> None:
    """One event, ``event="connection_failures"``, at the category's level."""
    level, text = CATEGORIES[summary.category]
    offenders = [{"network": o.network, "count": o.count} for o in summary.offenders]
    logger.emit(
        level, "{count} {what} within {window}s; busiest client networks: {top}",
        event="connection_failures", reason=summary.category, count=summary.count,
        what=text, window=summary.window, offenders=offenders,
        top=", ".join(f"{o.network} ({o.count})" for o in summary.offenders),
    )


class FailureLog:
    """
    A :class:`FailureTally` on a clock: each window's summaries are logged
    when it ends, by a timer that exists only while a window is open.

    :param clock: the reactor (or a ``task.Clock``).
    """

    def __init__(self, window: float, ipv6_prefix: int, clock: IReactorTime,
                 logger: Logger = _log) -> None:
        self.tally = FailureTally(window, ipv6_prefix)
        self._clock = clock
        self._logger = logger
        self._timer: IDelayedCall | None = None
        self._due = 0.0

    @property
    def timer(self) -> IDelayedCall | None:
        """The one timer this log holds (while a window is open), if any."""
        return self._timer

    def record(self, category: str, client: str) -> None:
        """Count one failure now."""
        for summary in self.tally.record(category, client, self._clock.seconds()):
            log_summary(summary, self._logger)
        self._schedule()

    def _schedule(self) -> None:
        end = self.tally.next_end()
        if end is None or (self._timer is not None and self._timer.active()):
            return
        self._due = end
        self._timer = self._clock.callLater(
            max(0.0, end - self._clock.seconds()), self._flush)

    def _flush(self) -> None:
        self._timer = None
        # At least the window's end: the timer's own arithmetic may land a
        # rounding error short of it.
        now = max(self._clock.seconds(), self._due)
        for summary in self.tally.flush(now):
            log_summary(summary, self._logger)
        self._schedule()

    def stop(self) -> None:
        """Log what is counted so far and cancel the timer (at shutdown)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for summary in self.tally.flush(float("inf")):
            log_summary(summary, self._logger)
