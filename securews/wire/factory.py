"""
The hardened Autobahn server factory.

:class:`SecureServerFactory` is where settings become Autobahn options.
Autobahn's defaults are permissive (no size limits, every Origin, a
status page with an open redirect, protocol errors answered by a silent
TCP drop); every option that matters is set here explicitly, from the
settings object, whatever Autobahn's defaults are or become.

It also keeps the bounded bookkeeping the protocol needs: the live
connections (for graceful shutdown) and the number of open sessions (for
``max_connections``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from securews.auth.build import build_authentication
from securews.auth.interfaces import IAuthenticator, ITicketStore
from securews.ops.alerts import AlertLogger
from securews.ops.failures import FailureLog
from securews.ops.logs import WireLogger
from securews.ops.metrics import Metrics
from securews.rules.buckets import BucketTable
from securews.rules.config import Config, from_mapping
from securews.rules.counters import ConnectionCounter
from securews.rules.validation import build_validator
from securews.wire._session import PINNED_OPTIONS, PinnedOptions
from securews.wire.deflate import accept_offer, refuse_offers
from securews.wire.protocol import SecureServerProtocol

if TYPE_CHECKING:
    from securews.auth.jwks import JWKSKeys

__all__ = ["SecureServerFactory"]

_log = Logger(namespace="securews.shutdown")

#: Most client networks whose connection rate is tracked at once (LRU).
MAX_TRACKED_CLIENTS = 100_000


def _frozen(value: Any) -> Any:
    """Lists (``versions``, the Origin patterns) as tuples: pinned means
    not appendable either."""
    return tuple(value) if isinstance(value, list) else value


class SecureServerFactory(WebSocketServerFactory):
    """
    Builds :class:`~securews.wire.protocol.SecureServerProtocol` instances
    configured from one :class:`~securews.rules.config.Config`.

    :param config: the settings; or pass sections as keyword arguments
        (``server={"path": "/chat"}, origin={"allowed": [...]}``), which
        are checked exactly like a TOML file.
    :param protocol: the application class (a ``SecureServerProtocol``
        subclass); defaults to the ``server.app`` setting.
    :param authenticator: an :class:`~securews.auth.interfaces.IAuthenticator`
        that replaces the ``[auth]`` settings.  Without one, the methods
        of ``auth.methods`` are built (key files read and checked now).
    :param ticket_store: where tickets live (an
        :class:`~securews.auth.interfaces.ITicketStore`); by default in
        this process's memory.
    :param ticket_issuer: with ``authenticator``: authenticates
        ``POST issue_path``; the ticket endpoint is off without it.
    :param reactor: the reactor, also the clock for the shutdown grace.
    :ivar metrics: this server's :class:`~securews.ops.metrics.Metrics`.
    """

    log = WireLogger("securews.factory")
    noisy = False
    protocol: type[SecureServerProtocol]

    def __init__(self, config: Config | None = None, *,
                 protocol: type[SecureServerProtocol] | None = None,
                 authenticator: IAuthenticator | None = None,
                 ticket_store: ITicketStore | None = None,
                 ticket_issuer: IAuthenticator | None = None,
                 reactor: Any = None,
                 **sections: Mapping[str, object]) -> None:
        if config is None:
            config = from_mapping(sections, source="SecureServerFactory()")
        elif sections:
            raise TypeError("pass either a Config or settings sections, not both")
        super().__init__(reactor=reactor)  # type: ignore[no-untyped-call]
        self.config = config
        if protocol is None:
            from securews.wire.apps import load_app

            protocol = load_app(config.server.app)
        if not issubclass(protocol, SecureServerProtocol):
            raise TypeError(f"{protocol!r} is not a SecureServerProtocol subclass")
        self.protocol = protocol
        #: The refreshed JWT keys of ``auth.jwt.jwks_url`` (started and
        #: stopped with the factory), if any.
        self.jwks: JWKSKeys | None = None
        if authenticator is None:
            auth = build_authentication(config, self.reactor, ticket_store=ticket_store)
            authenticator = auth.handshake
            ticket_store, ticket_issuer = auth.ticket_store, auth.ticket_issuer
            self.jwks = auth.jwks
        self.ticket_store = ticket_store if ticket_issuer is not None else None
        self.ticket_issuer = ticket_issuer
        self.authenticator: IAuthenticator = authenticator
        self.ticket_path = config.auth.ticket.issue_path
        self.validator = build_validator(config.messages)
        rates = config.ratelimit
        self.connect_rate = BucketTable(rates.connect_rate, rates.connect_burst,
                                        max_entries=MAX_TRACKED_CLIENTS)
        self.per_client = ConnectionCounter(rates.connections_per_ip)
        self.per_principal = ConnectionCounter(rates.sessions_per_principal)
        self.pending_per_peer = ConnectionCounter(rates.connections_per_ip)
        self.outcomes: Counter[tuple[str, int]] = Counter()
        self.auth_failures: Counter[tuple[str, str]] = Counter()
        self.closes: Counter[str] = Counter()
        self.origin_allow_list = config.origin.allowed
        self.allow_missing_origin = config.origin.allow_missing or config.dev
        self.trusted_networks = config.server.trusted_proxies
        self.alerts = AlertLogger(config.alerts, config.ratelimit.ipv6_prefix,
                                  self.clock)
        self.failures = FailureLog(config.alerts.window,
                                   config.ratelimit.ipv6_prefix, self.clock)
        self.open_sessions = 0
        self.admitted = 0
        self._connections: set[SecureServerProtocol] = set()
        self._drained: list[Deferred[None]] = []
        self.metrics = Metrics(connections=lambda: len(self._connections),
                               sessions=lambda: self.open_sessions,
                               tickets=self._ticket_count)
        self.metrics.watch_jwks(self.jwks)
        limits = config.limits
        self.setProtocolOptions(
            webStatus=False,
            failByDrop=False,
            maxFramePayloadSize=limits.max_frame_size,
            maxMessagePayloadSize=limits.max_message_size,
            # securews runs both timers itself, on the factory's clock.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            allowedOrigins=["*"],
            allowNullOrigin=False,
            maxConnections=0,
            trustXForwardedFor=0,
            autoPingInterval=0,
            autoPingTimeout=0,
            serveFlashSocketPolicy=False,
            perMessageCompressionAccept=(accept_offer(limits.max_message_size)
                                         if limits.compression else refuse_offers),
            echoCloseCodeReason=False,
            requireMaskedClientFrames=True,
            utf8validateIncoming=True,
            versions=[13],
        )
        self.pinned_options = PinnedOptions(**{
            name: _frozen(getattr(self, name)) for name in PINNED_OPTIONS})
        self.server = ""

    def setProtocolOptions(self, **options: Any) -> None:  # type: ignore[override]
        """
        Autobahn's, except that the options securews derives from its
        settings (:data:`~securews.wire._session.PINNED_OPTIONS`, the
        limits among them) are set once, here, and never again: a later
        call that names one raises :exc:`TypeError`.
        """
        pinned = sorted(set(options) & set(PINNED_OPTIONS))
        if pinned and hasattr(self, "pinned_options"):
            raise TypeError(f"{', '.join(pinned)}: securews takes these from "
                            "its settings, once")
        super().setProtocolOptions(**options)  # type: ignore[no-untyped-call]

    def startFactory(self) -> None:
        """Listening: keep the JWKS fresh meanwhile."""
        super().startFactory()  # type: ignore[no-untyped-call]
        if self.jwks is not None:
            self.jwks.start()

    def stopFactory(self) -> None:
        """No longer listening: no more JWKS refreshes (no timer left behind)."""
        if self.jwks is not None:
            self.jwks.stop()
        super().stopFactory()  # type: ignore[no-untyped-call]

    @property
    def clock(self) -> IReactorTime:
        return self.reactor  # type: ignore[no-any-return]

    # -- bookkeeping called by the protocol --------------------------------

    def connection_made(self, proto: SecureServerProtocol) -> None:
        self._connections.add(proto)

    def connection_lost(self, proto: SecureServerProtocol) -> None:
        self._connections.discard(proto)
        if not self._connections:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def admit(self, proto: SecureServerProtocol) -> bool:
        """
        Reserve one of ``max_connections`` places for a handshake that
        passed the cheap checks; it is held until the connection ends, so
        handshakes waiting on authentication count too.

        :returns: false when the server is full.
        """
        if self.admitted >= self.config.server.max_connections:
            return False
        self.admitted += 1
        return True

    def release(self, proto: SecureServerProtocol) -> None:
        self.admitted -= 1

    def session_opened(self, proto: SecureServerProtocol) -> None:
        self.open_sessions += 1

    def session_closed(self, proto: SecureServerProtocol) -> None:
        self.open_sessions -= 1

    def count_outcome(self, outcome: str, status: int, reason: str | None = None,
                      seconds: float | None = None) -> None:
        """
        Count an HTTP-level answer (for metrics; fixed label values).

        :param seconds: how long after the TCP accept it was given.
        """
        self.outcomes[outcome, status] += 1
        self.metrics.handshake(outcome, status, reason, seconds)

    def connection_accepted(self) -> None:
        """A TCP connection was accepted (counted once, at the outermost layer)."""
        self.metrics.connection_accepted()

    def connection_dropped(self, reason: str, client: str,
                           seconds: float | None = None) -> None:
        """
        A connection from ``client`` was dropped before its request head,
        ``seconds`` after it was accepted: counted, and logged in aggregate
        (:mod:`securews.ops.failures`), never one line per connection.
        """
        self.metrics.connection_dropped(reason)
        if reason != "tls_failure":
            outcome = "timeout" if reason.endswith("timeout") else "dropped"
            self.count_outcome(outcome, 0, reason, seconds)
        self.failures.record(reason, client)

    def count_auth_failure(self, method: str, reason: str) -> None:
        self.auth_failures[method, reason] += 1
        self.metrics.auth_failure(method, reason)

    def count_close(self, category: str) -> None:
        """Count a session the server closed, by fixed category."""
        self.closes[category] += 1
        self.metrics.server_close(category)

    def _ticket_count(self) -> int | None:
        book = getattr(self.ticket_store, "book", None)
        return None if book is None else len(book)

    @property
    def connection_count(self) -> int:
        """Live TCP connections, handshaking or open."""
        return len(self._connections)

    # -- shutdown ----------------------------------------------------------

    def shutdown(self, grace: float | None = None) -> Deferred[None]:
        """
        Close every connection: open sessions get a 1001 close frame,
        unfinished handshakes are dropped.

        :param grace: seconds to wait for peers to finish the close
            handshake before their TCP connections are aborted; defaults
            to ``server.shutdown_grace``.
        :returns: a Deferred that fires once no connection is left.
        """
        if grace is None:
            grace = self.config.server.shutdown_grace
        self.failures.stop()
        if not self._connections:
            return succeed(None)
        _log.info("closing {count} connections (grace {grace}s)",
                      event="shutdown", count=len(self._connections), grace=grace)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        for proto in list(self._connections):
            proto.go_away()
        timer = self.clock.callLater(grace, self._abort_all)

        def cancel_timer(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(cancel_timer)
        return d

    def _abort_all(self) -> None:
        if self._connections:
            _log.warn("aborting {count} connections after the grace period",
                          event="shutdown", count=len(self._connections))
        for proto in list(self._connections):
            proto.abort()
