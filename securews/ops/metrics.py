"""
Prometheus metrics for one server: what the admin listener's ``/metrics``
shows (see :mod:`securews.service.admin`).

Each :class:`Metrics` owns its own
:class:`~prometheus_client.CollectorRegistry`, never the process-global
one, so several factories in one process (and tests) do not collide.
Counters move as things happen, each in O(1) (the per-message ones are
plain integers, read when scraped); the gauges (open sessions, live
connections, ticket store size, certificate expiry) are read from their
owners when scraped, so nothing has to keep them in step (the JWKS
refresh figures too).

Cardinality is bounded: every label value is one of the fixed sets
below, securews's own categories, never text from a client and never an
address.  Anything else (an embedder's authenticator failing with a
reason of its own, a close code outside the RFC 6455 ones) is reported
as ``"other"``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from securews.rules.settings import AUTH_METHODS


class JWKSFigures(Protocol):
    """What the JWKS refreshes report (``securews.auth.jwks.JWKSKeys``)."""

    refresh_failures: int
    last_success: float

    @property
    def key_count(self) -> int: ...


__all__ = [
    "AUTH_REASONS",
    "CLOSE_CATEGORIES",
    "CLOSE_CODES",
    "CONTENT_TYPE",
    "DROP_REASONS",
    "HANDSHAKE_REASONS",
    "OTHER",
    "OUTCOMES",
    "STATUSES",
    "Metrics",
    "bounded",
]

#: What a label value outside its fixed set is reported as.
OTHER = "other"

#: The Content-Type of :meth:`Metrics.exposition`'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: How a connection's request ended: ``dropped`` and ``timeout`` got no
#: HTTP answer (status ``0``).
OUTCOMES = frozenset({"accepted", "refused", "dropped", "timeout", "preflight",
                      "ticket_issued", "page"})
STATUSES = frozenset(str(code) for code in (
    0, 101, 200, 201, 204, 400, 401, 403, 404, 405, 411, 413, 415, 426, 429, 431,
    500, 503, 505))
#: ``AuthenticationFailed``/``TicketRejected`` reasons raised by securews's
#: own authenticators and ticket store.
AUTH_REASONS = frozenset({
    "bad_algorithm", "bad_audience", "bad_issuer", "bad_request", "bad_signature",
    "bad_ticket", "expired", "introspection_error", "introspection_timeout",
    "introspection_unreachable", "malformed", "missing_claim", "not_yet_valid",
    "rejected", "reused", "server_busy", "too_many", "unknown_key", "wrong_client",
    "wrong_origin",
})
#: Handshake refusal reasons (a 401's reason is the authenticator's).
HANDSHAKE_REASONS = AUTH_REASONS | frozenset({
    "none", "ambiguous_credentials", "auth_error", "bad_handshake", "bad_json",
    "body_too_large",
    "connect_rate",
    "early_data", "handshake_timeout", "header_too_large", "http_version",
    "internal_error", "length_required", "method_not_allowed", "no_credentials",
    "not_found", "origin", "rate_limited", "revoked", "server_full",
    "too_many_connections", "unavailable",
    "too_many_sessions",
    "too_many_pending", "unsupported_media_type", "upgrade_required",
    "untrusted_peer",
    "untrusted_proxy", "proxy_header_missing", "proxy_header_malformed",
    "proxy_header_too_long", "proxy_header_timeout",
})
#: Why a connection was dropped before a request head was read (see
#: :mod:`securews.ops.failures`).
DROP_REASONS = frozenset({
    "connect_rate", "too_many_pending", "untrusted_peer", "untrusted_proxy",
    "proxy_header_missing", "proxy_header_malformed", "proxy_header_too_long",
    "proxy_header_timeout", "tls_failure", "handshake_timeout",
})
#: Why securews closed a session (:mod:`securews.rules.session`,
#: :mod:`securews.rules.validation`, slow consumers, an application hook that
#: raised, and ``too_big`` for a frame or message over the size limits).
CLOSE_CATEGORIES = frozenset({
    "app_error", "bad_json", "bad_request", "bad_utf8", "binary",
    "credential_expired", "credential_revoked", "dead_peer", "fenced", "forbidden",
    "fragments", "idle", "lifetime", "rate_limited", "schema", "slow_consumer",
    "too_big", "too_deep",
})
#: RFC 6455 close codes a session can end with, and securews's own 4401
#: (credential expired) (1005: none was given,
#: 1006: the connection ended without a close handshake).
CLOSE_CODES = frozenset(str(code) for code in (
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1013, 4401))
_METHODS = frozenset(AUTH_METHODS)
_INITIATORS = frozenset({"server", "client"})

#: Handshake latency buckets, in seconds (the handshake timeout is at most
#: 300 s; anything beyond 10 s is a problem whatever its exact length).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


def bounded(value: object, allowed: frozenset[str]) -> str:
    """
    A label value from a fixed set.

    :returns: ``str(value)`` (``"none"`` for ``None``) when it is in
        ``allowed``, else :data:`OTHER`.
    """
    text = "none" if value is None else str(value)
    return text if text in allowed else OTHER


class _Live:
    """
    What is read at scrape time: the gauges, from their owners, and the
    per-message counters, kept as plain integers (a prometheus_client
    ``Counter.inc`` costs about ten times more, twice per message).
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        messages = CounterMetricFamily(
            "securews_messages", "Whole WebSocket messages received (in) and "
            "sent (out).", labels=["direction"])
        messages.add_metric(["in"], m.messages_in)
        messages.add_metric(["out"], m.messages_out)
        yield messages
        octets = CounterMetricFamily(
            "securews_message_bytes", "Message payload bytes received (in, after "
            "decompression) and sent (out, before compression).",
            labels=["direction"])
        octets.add_metric(["in"], m.bytes_in)
        octets.add_metric(["out"], m.bytes_out)
        yield octets
        yield GaugeMetricFamily(
            "securews_connections_open",
            "Live TCP connections: handshaking, open or closing.",
            value=m.connections())
        yield GaugeMetricFamily(
            "securews_sessions_open", "Open WebSocket sessions.",
            value=m.sessions())
        tickets = m.tickets()
        if tickets is not None:
            yield GaugeMetricFamily(
                "securews_ticket_store_tickets",
                "Unspent tickets held by the in-memory ticket store.",
                value=tickets)
        expiry = m.certificate_expiry()
        if expiry is not None:
            yield GaugeMetricFamily(
                "securews_tls_certificate_expiry_timestamp_seconds",
                "When the served TLS certificate expires (notAfter, Unix time).",
                value=expiry.timestamp())
        engine_up = m.engine_up()
        if engine_up is not None:
            yield GaugeMetricFamily(
                "securews_cluster_engine_up", "1 while the cluster's engine "
                "answers and this node's places are written there, else 0.",
                value=1 if engine_up else 0)
        jwks = m.jwks
        if jwks is not None:
            yield CounterMetricFamily(
                "securews_jwks_refresh_failures", "Failed refreshes of the "
                "auth.jwt.jwks_url key set (the last good keys stay in use).",
                value=jwks.refresh_failures)
            yield GaugeMetricFamily(
                "securews_jwks_last_success_timestamp_seconds",
                "When the JWKS in use was fetched (Unix time).",
                value=jwks.last_success)
            yield GaugeMetricFamily(
                "securews_jwks_keys", "Usable keys in the JWKS in use.",
                value=jwks.key_count)


def _nothing() -> None:
    return None


class Metrics:
    """
    One server's counters and gauges.

    :param connections: reads the number of live connections.
    :param sessions: reads the number of open sessions.
    :param tickets: reads the ticket store's size, or ``None`` when there
        is no store or it cannot tell.
    :param process: also export the standard ``process_*`` metrics (memory,
        CPU, open file descriptors) of this process.
    :ivar registry: this server's registry; :meth:`exposition` renders it.
    :ivar messages_in: messages received so far (``bytes_in``,
        ``messages_out`` and ``bytes_out`` likewise): plain integers, as
        everything here is updated and scraped on the reactor thread.
    """

    def __init__(self, *, connections: Callable[[], int],
                 sessions: Callable[[], int],
                 tickets: Callable[[], int | None] = _nothing,
                 process: bool = True) -> None:
        self.connections = connections
        self.sessions = sessions
        self.tickets = tickets
        self.certificate_expiry: Callable[[], datetime.datetime | None] = _nothing
        self.engine_up: Callable[[], bool | None] = _nothing
        self.jwks: JWKSFigures | None = None
        registry = self.registry = CollectorRegistry()
        self._handshakes = Counter(
            "securews_handshakes", "Requests answered (or dropped) before or at "
            "the upgrade, by outcome, HTTP status (0: none) and reason.",
            ["outcome", "status", "reason"], registry=registry)
        self._latency = Histogram(
            "securews_handshake_duration_seconds", "From TCP accept to the 101 "
            "or the refusal, by outcome.", ["outcome"], buckets=LATENCY_BUCKETS,
            registry=registry)
        self._auth_failures = Counter(
            "securews_auth_failures", "Credentials presented and refused, by "
            "method and reason.", ["method", "reason"], registry=registry)
        self._server_closes = Counter(
            "securews_server_closes", "Sessions securews closed or dropped for "
            "a limit or a bad message, by category.", ["category"],
            registry=registry)
        self._session_closes = Counter(
            "securews_session_closes", "Sessions ended, by close code and by "
            "which side started the close.", ["code", "initiator"],
            registry=registry)
        self._ping_timeouts = Counter(
            "securews_ping_timeouts", "Sessions dropped for not answering a "
            "ping in time (also server_closes{category=\"dead_peer\"}).",
            registry=registry)
        self._slow_consumers = Counter(
            "securews_slow_consumer_drops", "Sessions dropped for not reading "
            "(also server_closes{category=\"slow_consumer\"}).", registry=registry)
        self._accepted = Counter(
            "securews_connections_accepted", "TCP connections accepted, before "
            "anything was read from them.", registry=registry)
        self._dropped = Counter(
            "securews_connections_dropped", "Connections dropped before a "
            "request head was read, by reason.", ["reason"], registry=registry)
        self._tls_failures = Counter(
            "securews_tls_handshake_failures", "Connections lost to an OpenSSL "
            "error before any application data: failed TLS handshakes.",
            registry=registry)
        self.messages_in = self.messages_out = 0
        self.bytes_in = self.bytes_out = 0
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        registry.register(_Live(self))
        if process:
            ProcessCollector(registry=registry)

    def watch_certificate(
        self, expiry: Callable[[], datetime.datetime | None] | None
    ) -> None:
        """Report the certificate expiry ``expiry`` reads (reloads included)."""
        self.certificate_expiry = _nothing if expiry is None else expiry

    def watch_engine(self, up: Callable[[], bool]) -> None:
        """Report whether a cluster's engine is up (``up`` reads it)."""
        self.engine_up = up

    def watch_jwks(self, jwks: JWKSFigures | None) -> None:
        """Report the refreshes of ``jwks`` (``auth.jwt.jwks_url``), if any."""
        self.jwks = jwks

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        """
        ``metric.labels(*values)``, looked up once per label set:
        prometheus_client validates and locks on every call.  Label values
        are :func:`bounded`, so this table is too.
        """
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- events ------------------------------------------------------------

    def handshake(self, outcome: str, status: int, reason: str | None = None,
                  seconds: float | None = None) -> None:
        """A request was answered (or dropped), ``seconds`` after accept."""
        outcome = bounded(outcome, OUTCOMES)
        self._child(self._handshakes, outcome, bounded(status, STATUSES),
               bounded(reason, HANDSHAKE_REASONS)).inc()
        if seconds is not None:
            self._child(self._latency, outcome).observe(max(0.0, seconds))

    def auth_failure(self, method: str, reason: str) -> None:
        """A credential of ``method`` was refused for ``reason``."""
        self._child(self._auth_failures, bounded(method, _METHODS),
               bounded(reason, AUTH_REASONS)).inc()

    def server_close(self, category: str) -> None:
        """securews closed (or dropped) a session for ``category``."""
        category = bounded(category, CLOSE_CATEGORIES)
        self._child(self._server_closes, category).inc()
        if category == "dead_peer":
            self._ping_timeouts.inc()
        elif category == "slow_consumer":
            self._slow_consumers.inc()

    def session_closed(self, code: int | None, initiator: str) -> None:
        """An open session ended with ``code`` (``None``: 1005, none given)."""
        self._child(self._session_closes,
               bounded(1005 if code is None else code, CLOSE_CODES),
               bounded(initiator, _INITIATORS)).inc()

    def connection_accepted(self) -> None:
        """A TCP connection was accepted."""
        self._accepted.inc()

    def connection_dropped(self, reason: str) -> None:
        """A connection was dropped before its request head, for ``reason``."""
        self._child(self._dropped, bounded(reason, DROP_REASONS)).inc()

    def tls_failure(self) -> None:
        """A connection failed its TLS handshake."""
        self._tls_failures.inc()

    def message_in(self, size: int) -> None:
        """A whole message of ``size`` bytes arrived."""
        self.messages_in += 1
        self.bytes_in += size

    def message_out(self, size: int) -> None:
        """A message of ``size`` bytes was sent."""
        self.messages_out += 1
        self.bytes_out += size

    # -- exposition --------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format (:data:`CONTENT_TYPE`) of every metric."""
        return generate_latest(self.registry)
