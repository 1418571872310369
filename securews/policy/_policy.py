"""
One server's policy: its settings, limiters, stores, authenticators and
records, built once from a :class:`~securews.rules.config.Config` and a
clock.  Each connection talks to it and to nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from securews.auth.build import build_authentication
from securews.auth.interfaces import (
    AmbiguousCredentials,
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    ITicketStore,
    Principal,
    TicketRejected,
)
from securews.channels.interfaces import IBroker
from securews.channels.memory import MemoryBroker
from securews.limits.gate import ComposedGate
from securews.limits.interfaces import (
    IGate,
    IRateLimiter,
    IRevocations,
    ISessionCounter,
    RateVerdict,
)
from securews.limits.memory import (
    MemoryRateLimiter,
    MemoryRevocations,
    MemorySessionCounter,
)
from securews.ops.alerts import AlertLogger
from securews.ops.failures import FailureLog
from securews.ops.metrics import Metrics
from securews.policy._sessions import SessionIndex, token_facts
from securews.rules.actions import (
    AdmissionRules,
    Authenticated,
    Claimed,
    Counter,
    Credential,
    Denied,
    TicketRefused,
    Unavailable,
    Vouched,
)
from securews.rules.cluster import digest
from securews.rules.config import Config
from securews.rules.counters import Lease
from securews.rules.devpage import dev_page_response
from securews.rules.head import Refusal
from securews.rules.validation import MessageValidator, build_validator

if TYPE_CHECKING:
    from securews.auth.jwks import JWKSKeys

__all__ = ["Policy", "Shared", "build_policy"]

_log = Logger(namespace="securews.handshake")


class Shared:
    """
    What several nodes share (a cluster): each piece replaces this node's
    own.  By default everything lives in this process's memory.

    :param connect_rate: a cluster-wide connect rate per client network,
        taken once the request head is read (this node's own rate still
        filters floods at accept).
    :param per_client: concurrent connections per client network.
    :param per_principal: concurrent sessions per principal.
    :param revocations: revoked principals and tokens.
    :param gate: the handshake's two shared checks, each in one call; by
        default made of the four above (:class:`ComposedGate`).
    :param broker: channels (publish/subscribe) across the nodes.
    """

    def __init__(self, *, connect_rate: IRateLimiter | None = None,
                 per_client: ISessionCounter | None = None,
                 per_principal: ISessionCounter | None = None,
                 revocations: IRevocations | None = None,
                 gate: IGate | None = None,
                 broker: IBroker | None = None) -> None:
        self.connect_rate = connect_rate
        self.per_client = per_client
        self.per_principal = per_principal
        self.revocations = revocations
        self.gate = gate
        self.broker = broker


class Policy:
    """
    The decisions of one server and everything they consult.

    Build it with :func:`build_policy`.  Its members are set once; what
    changes (limits, counts, metrics) changes inside them.

    :ivar rules: the settings :func:`securews.rules.admission.admission`
        reads.
    :ivar connect_rate: this node's connect rate per client network,
        checked at accept (always local: floods never reach a shared
        engine).
    :ivar shared_rate: the cluster's, or ``None``.
    :ivar pending: unfinished handshakes per client network (local).
    :ivar capacity: this node's places (``server.max_connections``).
    :ivar connections: the live connections (handshaking, open or
        closing), for the metrics and for shutdown.
    """

    def __init__(self, config: Config, clock: IReactorTime, *,
                 authenticator: IAuthenticator,
                 ticket_store: ITicketStore | None = None,
                 ticket_issuer: IAuthenticator | None = None,
                 jwks: JWKSKeys | None = None,
                 shared: Shared | None = None) -> None:
        shared = shared or Shared()
        rates = config.ratelimit
        self.config = config
        self.clock = clock
        self.authenticator = authenticator
        self.ticket_issuer = ticket_issuer
        self.ticket_store = ticket_store if ticket_issuer is not None else None
        #: The refreshed JWT keys of ``auth.jwt.jwks_url`` (started and
        #: stopped with the listening factory), if any.
        self.jwks = jwks
        self.validator: MessageValidator = build_validator(config.messages)
        self.connect_rate = MemoryRateLimiter(rates.connect_rate, rates.connect_burst,
                                              clock)
        self.shared_rate = shared.connect_rate
        self.pending = MemorySessionCounter(rates.connections_per_ip)
        self.per_client = shared.per_client or MemorySessionCounter(
            rates.connections_per_ip)
        self.per_principal = shared.per_principal or MemorySessionCounter(
            rates.sessions_per_principal)
        self.capacity = MemorySessionCounter(config.server.max_connections)
        self.revocations = shared.revocations or MemoryRevocations(clock)
        channels = config.channels
        self.broker: IBroker = shared.broker or MemoryBroker(
            clock, history_size=channels.history_size,
            history_ttl=channels.history_ttl)
        self.gate: IGate = shared.gate or ComposedGate(
            per_client=self.per_client, per_principal=self.per_principal,
            revocations=self.revocations, rate=self.shared_rate)
        self.rules = AdmissionRules(
            websocket_path=config.server.path,
            ticket_path=(config.auth.ticket.issue_path
                         if self.ticket_store is not None else None),
            ticket_ttl=config.auth.ticket.ttl,
            tls=config.tls.enabled,
            trusted=tuple(config.server.trusted_proxies),
            reads_forwarded_for=config.reads_forwarded_for,
            ipv6_prefix=rates.ipv6_prefix,
            max_header_bytes=config.limits.max_header_bytes,
            max_headers=config.limits.max_headers,
            origins=config.origin.allowed,
            allow_missing_origin=config.origin.allow_missing or config.dev,
            shared_rate=self.shared_rate is not None,
            dev_page=dev_page_response(config.server.path) if config.dev else None,
        )
        self.connections: set[Any] = set()
        #: The open sessions, by whose credential they run on.
        self.sessions = SessionIndex()
        self._listening = 0
        self.open_sessions = 0
        self.metrics = Metrics(connections=lambda: len(self.connections),
                               sessions=lambda: self.open_sessions,
                               tickets=self._ticket_count)
        self.metrics.watch_jwks(jwks)
        self.alerts = AlertLogger(config.alerts, rates.ipv6_prefix, clock)
        self.failures = FailureLog(config.alerts.window, rates.ipv6_prefix, clock)
        self._counters: dict[Counter, ISessionCounter] = {
            "pending": self.pending, "capacity": self.capacity}

    # -- running ------------------------------------------------------------

    def start(self) -> None:
        """A factory of this policy listens: background work (the JWKS
        refreshes) runs while at least one does."""
        self._listening += 1
        if self._listening == 1 and self.jwks is not None:
            self.jwks.start()

    def stop(self) -> None:
        """A factory stopped listening; after the last, nothing of the
        policy's is left running (no timer)."""
        if self._listening == 0:
            return
        self._listening -= 1
        if self._listening == 0:
            if self.jwks is not None:
                self.jwks.stop()
            self.failures.stop()

    # -- carrying out admission's actions ---------------------------------

    def take(self, key: str) -> Deferred[RateVerdict]:
        """This node's connect token (:class:`~securews.rules.actions.TakeToken`)."""
        return succeed(self.connect_rate.take_now(key))

    def hold(self, counter: Counter, key: str) -> Deferred[Lease | None]:
        """One of this node's places (:class:`~securews.rules.actions.Hold`)."""
        return self._counters[counter].acquire(key)

    def claim(self, key: str, rate: bool) -> Deferred[Claimed]:
        """:class:`~securews.rules.actions.Claim`, by the gate."""
        return self.gate.claim(key, rate)

    def authenticate(self, request: HandshakeRequest, *,
                     issuer: bool = False) -> Deferred[Authenticated | Denied]:
        """
        Run the handshake's authenticator (or, with ``issuer``, the ticket
        issuer's), turning every way it can say no into a refusal: ``None``
        is 401 ``no_credentials``; :exc:`AuthenticationFailed` 401 with its
        reason (counted, and alerted on per client); two credentials 400;
        anything else (a crash, a wrong type) 500, logged by type only:
        its text may quote a credential.
        """
        authenticator = self.ticket_issuer if issuer else self.authenticator
        assert authenticator is not None
        name = getattr(authenticator, "method", "?")
        d: Deferred[Principal | None] = maybeDeferred(authenticator.authenticate,
                                                      request)

        def decided(principal: object) -> Authenticated | Denied:
            if principal is None:
                return Denied(Refusal(401, "no_credentials"))
            if not isinstance(principal, Principal):
                _log.error("authenticator {method} returned a {kind}, not a "
                           "Principal; refused", event="handshake", method=name,
                           kind=type(principal).__name__)
                return Denied(Refusal(500, "auth_error"))
            return Authenticated(principal, self.clock.seconds())

        def failed(failure: Failure) -> Denied:
            if failure.check(Unavailable):
                # A shared store the authenticator asked (tickets in a
                # cluster's engine) did not answer: 503, as for a limiter.
                raise Unavailable()
            if failure.check(AmbiguousCredentials):
                return Denied(Refusal(400, "ambiguous_credentials"))
            if failure.check(AuthenticationFailed):
                error: AuthenticationFailed = failure.value  # type: ignore[assignment]
                method = error.method or name
                self.metrics.auth_failure(method, error.reason)
                self.alerts.record("auth_failures", request.client)
                return Denied(Refusal(401, error.reason), method)
            _log.error("authenticator {method} failed with {error}; refused",
                       event="handshake", method=name,
                       error=failure.type.__name__ if failure.type else "?")
            return Denied(Refusal(500, "auth_error"))

        return d.addCallbacks(decided, failed)

    def issue_ticket(self, principal: Credential, origin: str | None,
                     client: str) -> Deferred[str | TicketRefused]:
        """Mint a ticket; a store that fails otherwise than by declining
        fails with :exc:`Unavailable`."""
        store = self.ticket_store
        assert store is not None
        assert isinstance(principal, Principal)
        d: Deferred[str] = maybeDeferred(store.issue, principal, origin, client)

        def refused(failure: Failure) -> TicketRefused:
            if failure.check(TicketRejected):
                return TicketRefused(failure.value.reason)  # type: ignore[union-attr]
            _log.error("ticket issue failed with {error}", event="ticket",
                       error=failure.type.__name__ if failure.type else "?")
            raise Unavailable()

        return d.addErrback(refused)

    def revoked(self, principal: Credential) -> Deferred[bool]:
        """:class:`~securews.rules.actions.CheckRevoked` (the ticket
        endpoint: revocation without a session place)."""
        jti, issued_at = token_facts(principal)
        return self.revocations.revoked(principal.id, jti, issued_at)

    def vouch(self, principal: Credential) -> Deferred[Vouched]:
        """:class:`~securews.rules.actions.Vouch`, by the gate: revoked are
        the principal (every credential issued before) or its token by
        ``jti`` (claims of the wrong type count as absent)."""
        jti, issued_at = token_facts(principal)
        return self.gate.vouch(principal.id, jti, issued_at)

    # -- revocation ----------------------------------------------------------

    def revoke(self, *, principal: str | None = None, jti: str | None = None,
               until: float) -> Deferred[int]:
        """
        Revoke ``principal`` (every credential issued to it until now) or
        the token ``jti``, until ``until`` (when it would have expired
        anyway): new handshakes with it are refused (401 ``revoked``), and
        this node's open sessions on it are closed (4401 "credential
        revoked"); a cluster's other nodes close theirs when they read the
        announcement.

        :returns: a Deferred firing with how many sessions this node closed.
        """
        d = self.revocations.revoke(principal, jti, until=until)

        def revoked(_: object) -> int:
            kind, what = (("principal", principal) if principal is not None
                          else ("jti", jti))
            assert what is not None
            return self.sessions.end_revoked(kind, digest(what), self.clock.seconds())

        return d.addCallback(revoked)

    # -- records -----------------------------------------------------------

    def accepted(self) -> None:
        """A TCP connection was accepted (counted once, at the outermost layer)."""
        self.metrics.connection_accepted()

    def answered(self, outcome: str, status: int, reason: str | None = None,
                 seconds: float | None = None) -> None:
        """
        An HTTP-level answer (for metrics; fixed label values).

        :param seconds: how long after the TCP accept it was given.
        """
        self.metrics.handshake(outcome, status, reason, seconds)

    def dropped(self, reason: str, client: str, seconds: float | None = None) -> None:
        """
        A connection from ``client`` was dropped before its request head,
        ``seconds`` after it was accepted: counted, and logged in aggregate
        (:mod:`securews.ops.failures`), never one line per connection.
        """
        self.metrics.connection_dropped(reason)
        if reason != "tls_failure":
            outcome = "timeout" if reason.endswith("timeout") else "dropped"
            self.answered(outcome, 0, reason, seconds)
        self.failures.record(reason, client)

    def server_closed(self, category: str) -> None:
        """securews closed a session, for a fixed ``category``."""
        self.metrics.server_close(category)

    def _ticket_count(self) -> int | None:
        book = getattr(self.ticket_store, "book", None)
        return None if book is None else len(book)


def build_policy(config: Config, clock: Any, *,
                 authenticator: IAuthenticator | None = None,
                 ticket_store: ITicketStore | None = None,
                 ticket_issuer: IAuthenticator | None = None,
                 shared: Shared | None = None) -> Policy:
    """
    The policy ``config`` describes.

    :param clock: the reactor (a ``task.Clock`` in tests); the key and
        introspection clients of ``[auth]`` run on it too.
    :param authenticator: replaces the ``[auth]`` methods.  Without one,
        they are built (key files read and checked now).
    :param ticket_store: where tickets live; by default in this process.
    :param ticket_issuer: with ``authenticator``: authenticates ``POST
        issue_path``; the ticket endpoint is off without it.
    :param shared: what this node shares with others (a cluster).
    :raises ConfigError: for a method whose key or secret is unusable.
    """
    jwks = None
    if authenticator is None:
        auth = build_authentication(config, clock, ticket_store=ticket_store)
        authenticator = auth.handshake
        ticket_store, ticket_issuer, jwks = (auth.ticket_store, auth.ticket_issuer,
                                             auth.jwks)
    verifyObject(IAuthenticator, authenticator)
    return Policy(config, clock, authenticator=authenticator,
                  ticket_store=ticket_store, ticket_issuer=ticket_issuer, jwks=jwks,
                  shared=shared)
