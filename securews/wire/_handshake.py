"""
The opening handshake half of :class:`~securews.wire.protocol.SecureServerProtocol`.

Everything a security reviewer cares about before a WebSocket exists
happens here: the request head is read with bounds, the client address
and its limits are settled, the request is routed (WebSocket upgrade,
ticket endpoint, or a refusal), the Origin is checked and the client
authenticated, each decided by pure code; this class only turns those
decisions into bytes on the transport.  Every HTTP answer is securews's
own (:mod:`securews.rules.responses`), so nothing from the request is echoed.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from securews.auth.interfaces import (
    AmbiguousCredentials,
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    Principal,
    TicketRejected,
)
from securews.ops.logs import WireLogger
from securews.rules.codes import CloseCode
from securews.rules.head import HeadScanner, Refusal, RequestHead, route
from securews.rules.origin import OriginError, origin_allowed, parse_origin
from securews.rules.peer import Peer, accepted_peer, forwarded_peer
from securews.rules.responses import render_refusal
from securews.rules.ticket_http import (
    Preflight,
    check_body,
    cors_headers,
    inspect_ticket_request,
    preflight_response,
    ticket_response,
)
from securews.wire.backpressure import limit_send_buffer
from securews.wire.proxy import proxy_header
from securews.wire.tls import peer_subject

__all__ = ["HandshakeProtocol"]

_log = Logger(namespace="securews.handshake")


def _printable_origin(value: str) -> str:
    try:
        return str(parse_origin(value))
    except OriginError:
        return "invalid"


class _Denied(ConnectionDeny):
    """A refusal decided by securews, carrying its log category."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.status)  # type: ignore[no-untyped-call]
        self.refusal = refusal



class HandshakeProtocol(WebSocketServerProtocol):
    """The handshake, the ticket endpoint and connection bookkeeping."""

    principal: Principal | None = None
    tls_client_subject: tuple[tuple[str, str], ...] | None = None
    client: str = ""
    peer_host: str = ""

    log = WireLogger(per_connection=True)
    _scanner: HeadScanner | None = None
    _reaper: IDelayedCall | None = None
    _handshake_timer: IDelayedCall | None = None
    _head: RequestHead | None = None
    _handed_over = False
    _pending_denial: Refusal | None = None
    _denied_method: str | None = None
    _client_key: str | None = None
    _pending_key: str | None = None
    _principal_key: str | None = None
    _ticket_length: int | None = None
    _ticket_origin: str | None = None
    _ticket_started = False
    _dropped = False
    _summarised = False
    _admitted = False
    _accepted_at: float | None = None
    _peer: Peer

    def _choose_subprotocol(self, offered: list[str]) -> str | None:
        """Overridden by the session half, which knows the app's subprotocols."""
        return None

    # -- transport events --------------------------------------------------

    @property
    def _transport(self) -> ITCPTransport:
        assert self.transport is not None
        return self.transport  # type: ignore[return-value]

    def connectionMade(self) -> None:
        """
        A connection was accepted; nothing has been read yet, no TLS work
        done.  Settle who the peer is, then charge it before anything costs
        the server: one connect token (a client beyond its connect rate is
        dropped here, so it cannot make the server do more than
        ``connect_burst + connect_rate * t`` TLS handshakes) and one place
        among its unfinished handshakes.  Behind a proxy that terminated
        TLS, the client is known only from the request head, which charges
        it then.
        """
        factory = self.factory
        config = factory.config
        transport = self._transport
        header = proxy_header(self.transport)
        if header is None:
            factory.connection_accepted()
        peer = self._peer = accepted_peer(
            getattr(transport.getPeer(), "host", "") or "local",
            proxy_header=header is not None,
            carried=header is not None and header.source is not None,
            trusted=factory.trusted_networks,
            reads_forwarded_for=config.reads_forwarded_for,
            ipv6_prefix=config.ratelimit.ipv6_prefix)
        self.peer_host = self.client = peer.address
        self._accepted_at = factory.clock.seconds()
        factory.connection_made(self)
        super().connectionMade()
        # securews's own timer: Autobahn's rounds deadlines down to a whole
        # second (txaio's batched timer), cutting short timeouts by up to 1 s.
        self._handshake_timer = factory.clock.callLater(
            config.limits.handshake_timeout, self._handshake_expired)
        if not config.tls.enabled and not (peer.forwarding or header is not None):
            # Plaintext needs a trusted TCP peer: the proxy itself, or a proxy
            # that vouched for the client in a PROXY header.
            self._drop_at_accept("untrusted_peer")
        else:
            limit_send_buffer(transport, config.limits.send_buffer)
            if not peer.forwarding:
                self._admit_peer(peer)

    def _admit_peer(self, peer: Peer) -> None:
        """Charge a client known at accept time (see :meth:`connectionMade`)."""
        factory = self.factory
        factory.alerts.record("connect_attempts", peer.address)
        if not factory.connect_rate.take(peer.key, factory.clock.seconds()):
            self._drop_at_accept("connect_rate")
        elif factory.pending_per_peer.try_acquire(peer.key):
            self._pending_key = peer.key
        else:
            self._drop_at_accept("too_many_pending")

    def _drop_at_accept(self, reason: str) -> None:
        self._dropped = True
        self.factory.connection_dropped(reason, self.client)
        self._transport.abortConnection()

    def _handshake_expired(self) -> None:
        """No complete upgrade (or ticket answer) within handshake_timeout."""
        self._handshake_timer = None
        if self.state == WebSocketProtocol.STATE_CONNECTING:
            self.wasOpenHandshakeTimeout = True
            self.wasNotCleanReason = "handshake timeout"
            self.dropConnection(abort=True)

    def _stop_handshake_timer(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_handshake_timer()
        if reason.check(SSL.Error) and self._head is None:
            # OpenSSL failed before a whole request head was decrypted: a
            # TLS handshake failure (no shared suite or version, a client
            # that rejects the certificate, plain HTTP on the TLS port, ...)
            # or a corrupt record in the middle of the head.  The client's
            # doing: counted and summarised, never an error.
            if self._scanner is None:  # nothing decrypted: the handshake
                self.factory.metrics.tls_failure()
            self.factory.connection_dropped("tls_failure", self.client)
        elif getattr(self, "wasOpenHandshakeTimeout", False):
            if self._head is None:
                self.factory.connection_dropped("handshake_timeout", self.client,
                                                self._elapsed())
            else:
                self.factory.count_outcome("timeout", 0, "handshake_timeout",
                                           self._elapsed())
        try:
            super().connectionLost(reason)
        finally:
            if self._reaper is not None and self._reaper.active():
                self._reaper.cancel()
            self._release()
            self.factory.connection_lost(self)

    def dataReceived(self, data: bytes) -> None:
        if (self._dropped or self._ticket_started
                or self.state == WebSocketProtocol.STATE_CLOSED):
            # Dropped, refused, closed, or a ticket request whose body is
            # complete: nothing more is read, so nothing piles up meanwhile.
            return
        super().dataReceived(data)

    def dropConnection(self, abort: bool = False) -> None:
        """
        Close the transport, and make sure it really goes.

        A graceful TLS close waits for the peer's close_notify forever; a
        peer that never sends one would keep the connection (and its
        place) for good.  Whatever is still open ``close_timeout`` later
        is aborted.
        """
        super().dropConnection(abort)
        if not abort and self._reaper is None and self.transport is not None:
            self._reaper = self.factory.clock.callLater(
                self.factory.config.limits.close_timeout, self.abort)

    def _release(self) -> None:
        """Give back the capacity and per-client places this connection holds."""
        self._release_pending()
        if self._admitted:
            self._admitted = False
            self.factory.release(self)
        if self._client_key is not None:
            self.factory.per_client.release(self._client_key)
            self._client_key = None
        if self._principal_key is not None:
            self.factory.per_principal.release(self._principal_key)
            self._principal_key = None

    def _release_pending(self) -> None:
        if self._pending_key is not None:
            self.factory.pending_per_peer.release(self._pending_key)
            self._pending_key = None

    # -- opening handshake -------------------------------------------------

    def processHandshake(self) -> None:
        if self._handed_over:
            # Autobahn is waiting for onConnect; bytes that arrive early
            # wait too, but only up to one frame's worth.
            if len(self.data) > self.factory.config.limits.max_frame_size + 14:
                self._refuse(Refusal(400, "early_data"))
            return
        if self._ticket_started:
            return
        try:
            if self._ticket_length is not None:
                refusal = self._continue_ticket_request()
            else:
                refusal = self._decide()
        except Exception as e:
            _log.error("handshake check failed with {error}; refused",
                       event="handshake", error=type(e).__name__)
            refusal = Refusal(500, "internal_error")
        if refusal is not None:
            self._refuse(refusal)
        elif (self._head is not None and self._ticket_length is None
              and not self._ticket_started
              and self.state == WebSocketProtocol.STATE_CONNECTING):
            self._handed_over = True
            super().processHandshake()

    def _decide(self) -> Refusal | None:
        """
        Run securews's checks on the head once it is complete: who the
        client is, its connection rate, the route, then (for WebSocket
        upgrades) its concurrent connections, the Origin and capacity.
        Floods are turned away here, before any authenticator runs.
        """
        factory = self.factory
        limits = factory.config.limits
        if self._scanner is None:
            self._scanner = HeadScanner(max_bytes=limits.max_header_bytes,
                                        max_headers=limits.max_headers)
        decision = self._scanner.scan(self.data)
        if decision is None or isinstance(decision, Refusal):
            return decision
        head = self._head = decision
        peer = self._peer
        if peer.forwarding:
            # Behind a proxy that terminated TLS: the client is known now.
            peer = self._peer = forwarded_peer(
                peer, head.values("x-forwarded-for"), factory.trusted_networks,
                factory.config.ratelimit.ipv6_prefix)
            self.client = peer.address
            factory.alerts.record("connect_attempts", self.client)
            now = factory.clock.seconds()
            if not factory.connect_rate.take(peer.key, now):
                wait = max(1, math.ceil(factory.connect_rate.retry_after(peer.key,
                                                                         now)))
                # A flood's answers are summarised, not logged one by one.
                self._summarised = True
                return Refusal(429, "rate_limited", (("Retry-After", str(wait)),))
        key = peer.key
        self._release_pending()
        tickets = factory.ticket_store is not None and head.path == factory.ticket_path
        if not tickets:
            refusal = route(head, websocket_path=factory.config.server.path)
            if refusal is not None:
                return refusal
        if not factory.per_client.try_acquire(key):
            return Refusal(429, "too_many_connections", (("Retry-After", "1"),))
        self._client_key = key
        if tickets:
            return self._start_ticket_request(head)
        return self._admit(head)

    def _admit(self, head: RequestHead) -> Refusal | None:
        """Checks that need no credentials: Origin, then capacity."""
        if self._allowed_origin(head) is False:
            return Refusal(403, "origin")
        if not self.factory.admit(self):
            return Refusal(503, "server_full", (("Retry-After", "5"),))
        self._admitted = True
        return None

    def _allowed_origin(self, head: RequestHead) -> str | bool | None:
        """
        :returns: the normalised Origin when allowed, ``None`` when absent
            and that is allowed, ``False`` when refused.
        """
        values = head.values("origin")
        if len(values) > 1:
            return False
        origin = values[0] if values else None
        if not origin_allowed(origin, self.factory.origin_allow_list,
                              allow_missing=self.factory.allow_missing_origin):
            return False
        return None if origin is None else str(parse_origin(origin))

    def _handshake_request(self, head: RequestHead) -> HandshakeRequest:
        self.tls_client_subject = peer_subject(self.transport)
        return HandshakeRequest(
            head=head, client=self.client, origin=head.get("origin"),
            tls_client_subject=self.tls_client_subject,
        )

    def onConnect(  # type: ignore[override]
        self, request: ConnectionRequest
    ) -> Deferred[str | None]:
        head = self._head
        assert head is not None
        d = self._authenticate(self.factory.authenticator,
                               self._handshake_request(head))

        def decided(principal: Principal) -> str | None:
            expires_at = principal.expires_at
            if expires_at is not None and expires_at <= self.factory.clock.seconds():
                # Whatever vouched for it, a session never starts on a
                # credential that is over (no hook runs, no 101 then 4401).
                self._deny(Refusal(401, "expired"), method=principal.method)
            self._hold_principal_place(principal)
            self.principal = principal
            return self._choose_subprotocol(request.protocols)

        return d.addCallback(decided)

    def _hold_principal_place(self, principal: Principal) -> None:
        """
        One of the principal's ``sessions_per_principal`` places, so one
        account (from however many addresses) cannot hold every session.
        Anonymous (development) principals are all one id and are left to
        the per-address limits.

        :raises _Denied: 429 ``too_many_sessions``.
        """
        if principal.method == "anonymous":
            return
        if not self.factory.per_principal.try_acquire(principal.id):
            self._deny(Refusal(429, "too_many_sessions", (("Retry-After", "1"),)),
                       method=principal.method)
        self._principal_key = principal.id

    def _authenticate(self, authenticator: IAuthenticator,
                      request: HandshakeRequest) -> Deferred[Principal]:
        """
        Run an authenticator, turning every way it can say no into a
        refusal: ``None`` is 401 ``no_credentials``, AuthenticationFailed
        401 with its reason, anything else (a crash, a wrong type) 500.
        """
        d: Deferred[Principal | None] = maybeDeferred(
            authenticator.authenticate, request)
        name = getattr(authenticator, "method", "?")

        def decided(principal: object) -> Principal:
            if principal is None:
                self._deny(Refusal(401, "no_credentials"))
            if not isinstance(principal, Principal):
                _log.error(
                    "authenticator {method} returned a {kind}, not a Principal; "
                    "refused", event="handshake", method=name,
                    kind=type(principal).__name__,
                )
                self._deny(Refusal(500, "auth_error"))
            return principal

        def failed(failure: Failure) -> Principal:
            if failure.check(_Denied):
                failure.raiseException()
            if failure.check(AmbiguousCredentials):
                self._deny(Refusal(400, "ambiguous_credentials"))
            if failure.check(AuthenticationFailed):
                error: AuthenticationFailed = failure.value  # type: ignore[assignment]
                self.factory.count_auth_failure(error.method or name, error.reason)
                self.factory.alerts.record("auth_failures", self.client)
                self._deny(Refusal(401, error.reason), method=error.method or name)
            # The exception text may quote a credential: log its type only.
            _log.error(
                "authenticator {method} failed with {error}; refused",
                event="handshake", method=name,
                error=failure.type.__name__ if failure.type else "?",
            )
            self._deny(Refusal(500, "auth_error"))

        return d.addCallbacks(decided, failed)

    def _deny(self, refusal: Refusal, method: str | None = None) -> NoReturn:
        self._pending_denial = refusal
        self._denied_method = method
        raise _Denied(refusal)


    def succeedHandshake(self, res: Any) -> None:
        if self.state != WebSocketProtocol.STATE_CONNECTING:
            return
        super().succeedHandshake(res)

    def _onOpen(self) -> None:
        """
        The 101 is written: the handshake is accepted.  Logged here, before
        Autobahn reads the frames a client pipelined behind its head (which
        may end the session at once), so that every 101 has its event.
        """
        self._stop_handshake_timer()
        self._log_handshake("accepted", None, 101)
        self.factory.count_outcome("accepted", 101, None, self._elapsed())
        super()._onOpen()

    def failHandshake(self, reason: str, code: int = 400,
                      responseHeaders: Any = None) -> None:
        # ``reason`` is Autobahn's text and may quote client input: it is
        # neither logged nor sent.  The one header Autobahn adds (the
        # versions it speaks, on a version mismatch) is securews's own.
        refusal = self._pending_denial
        if refusal is None:
            names = {name.lower() for name, _ in responseHeaders or ()}
            extra = ((("Sec-WebSocket-Version", "13"),)
                     if "sec-websocket-version" in names else ())
            refusal = Refusal(code, "bad_handshake", extra)
        self._refuse(refusal)

    def _refuse(self, refusal: Refusal) -> None:
        headers = refusal.headers + cors_headers(self._ticket_origin)
        self._respond(render_refusal(refusal.status, headers),
                      "refused", refusal.status, refusal.reason)

    def _respond(self, response: bytes, outcome: str, status: int,
                 reason: str | None) -> None:
        """Write a complete HTTP response (securews's bytes) and close."""
        if self.state == WebSocketProtocol.STATE_CLOSED:
            return
        self._release()
        if self._summarised:
            self.factory.failures.record(reason or outcome, self.client)
        else:
            self._log_handshake(outcome, reason, status)
        self.factory.count_outcome(outcome, status, reason, self._elapsed())
        if outcome == "refused" and status != 500:
            self.factory.alerts.record("denials", self.client)
        # A deliberate answer, not a failure: keeps Autobahn from logging
        # a second, warning-level line about the drop.
        self.wasClean = True
        self._transport.write(response)
        # Nothing more is read (or decrypted) from a connection that was
        # answered: the answer goes out, and the close timer ends the rest.
        transport: Any = self.transport
        transport.pauseProducing()
        self.dropConnection(abort=False)

    # -- the ticket endpoint -----------------------------------------------

    def _start_ticket_request(self, head: RequestHead) -> Refusal | None:
        """
        The Origin first: a foreign page gets 403 and no CORS headers, so
        it learns nothing.  From then on every answer, refusals included
        (401, 413, 415, 429, ...), carries CORS headers for the allowed
        Origin, so the application's page can read its status and
        ``Retry-After`` instead of seeing "Failed to fetch".
        """
        origin = self._allowed_origin(head)
        if origin is False:
            return Refusal(403, "origin")
        self._ticket_origin = origin if isinstance(origin, str) else None
        kind = inspect_ticket_request(head)
        if isinstance(kind, Refusal):
            return kind
        if isinstance(kind, Preflight):
            if not isinstance(origin, str):
                return Refusal(403, "origin")
            self._ticket_started = True
            self._respond(preflight_response(origin), "preflight", 204, None)
            return None
        self._ticket_length = kind.length
        return self._continue_ticket_request()

    def _continue_ticket_request(self) -> Refusal | None:
        head, length = self._head, self._ticket_length
        assert head is not None
        assert length is not None
        body = self.data[head.size:head.size + length]
        if len(body) < length:
            return None
        refusal = check_body(body)
        if refusal is not None:
            return refusal
        self._ticket_started = True
        factory = self.factory
        store = factory.ticket_store
        assert store is not None
        assert factory.ticket_issuer is not None
        d = self._authenticate(factory.ticket_issuer, self._handshake_request(head))
        d.addCallback(lambda principal: store.issue(
            principal, head.get("origin"), self.client))

        def issued(ticket: str) -> None:
            self._respond(
                ticket_response(ticket, factory.config.auth.ticket.ttl,
                                self._ticket_origin),
                "ticket_issued", 201, None)

        def refused(failure: Failure) -> None:
            if failure.check(TicketRejected):
                reason = failure.value.reason  # type: ignore[union-attr]
                status, extra = (503, ()) if reason == "server_busy" else (
                    429, (("Retry-After", str(math.ceil(store_ttl))),))
                self._refuse(Refusal(status, reason, extra))
            elif failure.check(_Denied):
                self._refuse(failure.value.refusal)  # type: ignore[union-attr]
            else:
                _log.error("ticket issue failed with {error}", event="ticket",
                           error=failure.type.__name__ if failure.type else "?")
                self._refuse(Refusal(500, "internal_error"))

        store_ttl = factory.config.auth.ticket.ttl
        d.addCallbacks(issued, refused)
        return None

    def _elapsed(self) -> float | None:
        """Seconds since the TCP accept (handshake latency, for metrics)."""
        if self._accepted_at is None:
            return None
        now: float = self.factory.clock.seconds()
        return now - self._accepted_at

    def _log_handshake(self, outcome: str, reason: str | None, status: int) -> None:
        """
        One event per request.  Client text is logged only in normalised
        form: the path only when it is one securews serves (``"other"``
        otherwise: a path can carry a token as well as a query can), the
        Origin only when it parses (``"invalid"`` otherwise).
        """
        head = self._head
        path = origin = None
        if head is not None:
            known = (self.factory.config.server.path, self.factory.ticket_path)
            path = head.path if head.path in known else "other"
            values = head.values("origin")
            if len(values) == 1:
                origin = _printable_origin(values[0])
            elif values:
                origin = "invalid"
        method = self._denied_method or (
            self.principal.method if self.principal else None)
        _log.info(
            "handshake {outcome} {status} from {client} path={path} "
            "origin={origin} method={method} reason={reason}",
            event="handshake", outcome=outcome, status=status,
            client=self.client, path=path, origin=origin, reason=reason,
            method=method,
        )

    def go_away(self, reason: str = "server shutting down") -> None:
        """Start the close handshake with 1001 (Going Away)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=CloseCode.GOING_AWAY,
                                reasonUtf8=reason.encode("utf-8"),
                                isReply=False)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self._transport.abortConnection()

    def abort(self) -> None:
        """Drop the TCP connection now, without a close handshake."""
        self._transport.abortConnection()
