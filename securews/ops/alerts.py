"""
Traffic-spike warnings: ``[alerts]``.

Three whole-server counters: ``connect_attempts``, ``auth_failures`` and
``denials``.  Each is counted in fixed, tumbling windows of
``alerts.window`` seconds, aligned on multiples of the window since the
epoch (window *k* is ``[k * window, (k + 1) * window)``), so two servers
with the same setting count the same windows and an alert can be matched
to its window from its time alone.  A sliding window would alert on
every event of a sustained flood or need a timer; a tumbling one needs
neither, at the price of a burst split across a boundary counting half in
each window.

When a counter's count in a window first exceeds its threshold (the
event that makes it ``threshold + 1``), :meth:`SpikeDetector.record`
returns one :class:`SpikeAlert`: the counter, the count, and the top
offending client networks so far in the window.  Nothing more is
returned for that counter until the next window: at most one alert per
counter per window, whatever the traffic.

Clients are aggregated into networks (:func:`alert_network`): IPv4 by
/24, IPv6 by ``ratelimit.ipv6_prefix`` (/64 by default), so a client
rotating addresses within its network still shows up as one offender.
Memory is bounded: each counter tracks at most ``max_networks`` networks
per window; traffic from networks beyond that is counted under
:data:`OVERFLOW` (``"other"``), which ranks among the offenders like a
network, so a widely distributed flood shows as a large ``"other"``.

Time is an argument: :class:`SpikeDetector` is pure.  If the clock steps
back, events count in the current window (a window never reopens).
:class:`AlertLogger` puts a detector on a clock and logs each alert as
one WARNING event.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import math

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from securews.rules.peer import LOCAL_KEY, network_key
from securews.rules.settings import AlertsSettings

__all__ = [
    "COUNTERS",
    "IPV4_PREFIX",
    "MAX_NETWORKS",
    "OVERFLOW",
    "TOP_OFFENDERS",
    "AlertLogger",
    "NetworkTally",
    "Offender",
    "SpikeAlert",
    "SpikeDetector",
    "alert_network",
    "current_window",
    "log_alert",
]

#: The counters, as passed to :meth:`SpikeDetector.record`.
COUNTERS = ("connect_attempts", "auth_failures", "denials")
#: IPv4 clients are aggregated into networks of this length.
IPV4_PREFIX = 24
#: Most networks tracked per counter per window, by default.
MAX_NETWORKS = 10_000
#: Most offenders an alert names, by default.
TOP_OFFENDERS = 5
#: The offender that stands for every network beyond the tracked ones.
OVERFLOW = "other"

_log = Logger(namespace="securews.alerts")


def alert_network(client: str, ipv6_prefix: int = 64) -> str:
    """
    The network ``client`` is counted under.

    :param client: a client address as the handshake settles it
        (:func:`securews.rules.peer.client_address`).
    :returns: ``"203.0.113.0/24"`` for IPv4 (IPv4-mapped IPv6 included),
        ``"2001:db8::/64"`` for IPv6 (``ipv6_prefix``),
        :data:`~securews.rules.peer.LOCAL_KEY` for anything that is
        not an IP address (UNIX sockets).
    :raises ValueError: unless ``0 <= ipv6_prefix <= 128``.
    """
    key = network_key(client, ipv6_prefix)
    if key == LOCAL_KEY or "/" in key:
        return key
    return str(ipaddress.IPv4Network((key, IPV4_PREFIX), strict=False))


@attrs.frozen
class Offender:
    """A client network and how many events it caused in the window."""

    network: str
    count: int


@attrs.frozen
class SpikeAlert:
    """
    A counter exceeded its threshold within a window.

    :ivar count: the count when the alert was raised (``threshold + 1``).
    :ivar window: the window's length, in seconds.
    :ivar window_start: when the window began (a multiple of ``window``).
    :ivar offenders: the networks with the most events in the window so
        far, most first (ties by network), at most ``top`` of them.
    """

    counter: str
    count: int
    threshold: int
    window: float
    window_start: float
    offenders: tuple[Offender, ...]


@attrs.define
class NetworkTally:
    """
    Events of one kind in one window, in total and by client network.

    At most ``max_networks`` networks are held; events from networks
    beyond those count under :data:`OVERFLOW`, so memory is bounded
    whatever the traffic.

    :ivar index: the window's number (its start is ``index * window``).
    """

    index: int
    count: int = 0
    alerted: bool = False
    networks: dict[str, int] = attrs.field(factory=dict)
    overflow: int = 0

    def add(self, network: str, max_networks: int) -> None:
        """Count one event from ``network``."""
        self.count += 1
        networks = self.networks
        if network in networks or len(networks) < max_networks:
            networks[network] = networks.get(network, 0) + 1
        else:
            self.overflow += 1

    def top(self, count: int) -> tuple[Offender, ...]:
        """The ``count`` busiest networks, most events first (ties by name)."""
        ranked = itertools.chain(self.networks.items(),
                                 [(OVERFLOW, self.overflow)] if self.overflow else [])
        best = heapq.nsmallest(count, ranked, key=lambda item: (-item[1], item[0]))
        return tuple(Offender(net, n) for net, n in best)


def current_window(windows: dict[str, NetworkTally], kind: str, window: float,
                   now: float) -> NetworkTally:
    """
    ``kind``'s tally for the window holding ``now``, starting a new one
    when ``now`` has moved past the held one's window.  A clock stepping
    back counts in the held window (a window never reopens).
    """
    current = windows.get(kind)
    index = math.floor(now / window) if math.isfinite(now) else None
    if current is None:
        current = windows[kind] = NetworkTally(index or 0)
    elif index is not None and index > current.index:
        current = windows[kind] = NetworkTally(index)
    return current


class SpikeDetector:
    """
    Counts events per counter per window and says when one spikes.

    :param settings: the ``[alerts]`` window and thresholds.
    :param ipv6_prefix: IPv6 aggregation (``ratelimit.ipv6_prefix``).
    :param max_networks: networks tracked per counter per window.
    :param top: most offenders per alert.
    :raises ValueError: for a prefix outside 0..128 or a bound below 1.
    """

    def __init__(self, settings: AlertsSettings, ipv6_prefix: int = 64, *,
                 max_networks: int = MAX_NETWORKS, top: int = TOP_OFFENDERS) -> None:
        network_key("::", ipv6_prefix)  # raises ValueError for a bad prefix
        if max_networks < 1 or top < 1:
            raise ValueError("max_networks and top must be at least 1")
        self.window = settings.window
        self.thresholds = {
            "connect_attempts": settings.connect_attempts,
            "auth_failures": settings.auth_failures,
            "denials": settings.denials,
        }
        self._ipv6_prefix = ipv6_prefix
        self._max_networks = max_networks
        self._top = top
        self._windows: dict[str, NetworkTally] = {}

    def _window_for(self, counter: str, now: float) -> NetworkTally:
        return current_window(self._windows, counter, self.window, now)

    def record(self, counter: str, client: str, now: float) -> SpikeAlert | None:
        """
        Count one event.

        :param counter: one of :data:`COUNTERS`.
        :param client: the client address the event came from.
        :param now: the time, in seconds since the epoch.
        :returns: the alert, if this event is the one that takes the
            counter past its threshold in this window; else ``None``.
        :raises ValueError: for an unknown counter.
        """
        threshold = self.thresholds.get(counter)
        if threshold is None:
            known = ", ".join(COUNTERS)
            raise ValueError(f"unknown counter {counter!r}; known: {known}")
        tally = self._window_for(counter, now)
        if tally.alerted:
            # Nothing more is reported for this window: no per-network work.
            tally.count += 1
            return None
        tally.add(alert_network(client, self._ipv6_prefix), self._max_networks)
        if tally.count <= threshold:
            return None
        tally.alerted = True
        alert = SpikeAlert(
            counter=counter, count=tally.count, threshold=threshold,
            window=self.window, window_start=tally.index * self.window,
            offenders=tally.top(self._top),
        )
        # The table has served its purpose for this window.
        tally.networks = {}
        return alert

    def tracked_networks(self) -> int:
        """How many networks are held now, over all counters (memory bound)."""
        return sum(len(tally.networks) for tally in self._windows.values())


def log_alert(alert: SpikeAlert, logger: Logger = _log) -> None:
    """
    Log ``alert`` as one WARNING event: ``event="alert"`` with
    ``counter``, ``count``, ``threshold``, ``window`` (seconds) and
    ``offenders`` (a list of ``{"network": ..., "count": ...}``).
    """
    offenders = [{"network": o.network, "count": o.count} for o in alert.offenders]
    logger.warn(
        "traffic spike: {count} {counter} within {window}s (threshold "
        "{threshold}); top client networks: {top}",
        event="alert", counter=alert.counter, count=alert.count,
        threshold=alert.threshold, window=alert.window, offenders=offenders,
        top=", ".join(f"{o.network} ({o.count})" for o in alert.offenders),
    )


class AlertLogger:
    """
    A :class:`SpikeDetector` on a clock, whose alerts are logged
    (:func:`log_alert`).

    :param clock: the reactor (or a ``task.Clock`` in tests).
    :param logger: where alerts go; by default namespace
        ``securews.alerts``.
    """

    def __init__(self, settings: AlertsSettings, ipv6_prefix: int,
                 clock: IReactorTime, logger: Logger = _log) -> None:
        self.detector = SpikeDetector(settings, ipv6_prefix)
        self._clock = clock
        self._logger = logger

    def record(self, counter: str, client: str) -> SpikeAlert | None:
        """Count one event now; log the alert it raises, if any, and return it."""
        alert = self.detector.record(counter, client, self._clock.seconds())
        if alert is not None:
            log_alert(alert, self._logger)
        return alert
