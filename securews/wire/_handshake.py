"""
The opening handshake half of :class:`~securews.wire.protocol.SecureServerProtocol`.

Everything a security reviewer cares about before a WebSocket exists is
decided by :func:`securews.rules.admission.admission`, in one readable
order, and run by :class:`securews.policy.Admission`.  This class only
carries out what they ask of a connection: it feeds them the bytes read,
writes securews's own answers (:mod:`securews.rules.responses`: nothing
from the request is echoed), hands a valid upgrade to Autobahn and
completes or refuses it, and keeps the connection's timers and logs.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from OpenSSL import SSL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from securews.auth.interfaces import HandshakeRequest, Principal
from securews.ops.logs import WireLogger, log_handshake
from securews.policy import WAIT, Admission, Policy
from securews.rules.actions import (
    Accept,
    Action,
    Answer,
    Arrival,
    Authenticate,
    Credential,
    DropUnread,
    HeadRead,
    ReadBody,
    ReadHead,
    Refuse,
    Settled,
    Upgrade,
)
from securews.rules.codes import CloseCode
from securews.rules.devpage import PAGE_PATH
from securews.rules.head import Refusal, RequestHead
from securews.rules.responses import render_refusal
from securews.wire._autobahn import release_handshake_state
from securews.wire.backpressure import limit_send_buffer
from securews.wire.proxy import proxy_header
from securews.wire.tls import peer_subject

__all__ = ["HandshakeProtocol", "peer_host"]

#: Bytes of one frame header at most: what a client may pipeline behind its
#: request head, beyond one frame's payload, while it is authenticated.
_FRAME_HEADER = 14


def peer_host(address: IAddress | None) -> str:
    """An address's host, or ``"local"`` for one without (a UNIX socket)."""
    return getattr(address, "host", "") or "local"


class _Denied(ConnectionDeny):
    """A refusal decided by securews after the upgrade was handed to Autobahn."""

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
    _admission: Admission | None = None
    _reaper: IDelayedCall | None = None
    _handshake_timer: IDelayedCall | None = None
    _head: RequestHead | None = None
    _received = False
    _taken = 0
    _delivered = 0
    _upgrade: Deferred[str | None] | None = None
    _offered: list[str] | None = None
    _pending_denial: Refusal | None = None
    _denied_method: str | None = None
    _dropped = False
    _answered = False
    _request_whole = False
    _summarised = False
    _accepted_at: float | None = None
    _answered_for: Credential | None = None
    tcpNoDelay: bool  # an Autobahn option, copied from the factory

    def _choose_subprotocol(self, offered: list[str]) -> str | None:
        """Overridden by the session half, which knows the app's subprotocols."""
        return None

    @property
    def is_closed(self) -> Deferred[Any]:
        """
        Autobahn's Deferred that fires with this protocol once the
        connection is closed.  Once the connection is gone, a Deferred
        already fired with the protocol is handed out instead of the
        original being kept: the original, holding the protocol as its
        result, would keep every object of the connection alive until the
        cyclic garbage collector found them (a connection's objects are
        freed the moment it ends instead).
        """
        try:
            d: Deferred[Any] | None = self.__dict__["_is_closed"]
        except KeyError:
            raise AttributeError("is_closed") from None
        return succeed(self) if d is None else d

    @is_closed.setter
    def is_closed(self, d: Deferred[Any]) -> None:
        self.__dict__["_is_closed"] = d

    @property
    def policy(self) -> Policy:
        """The server's policy: everything this connection consults."""
        policy: Policy = self.factory.policy
        return policy

    @property
    def _transport(self) -> ITCPTransport:
        assert self.transport is not None
        return self.transport  # type: ignore[return-value]

    # -- accept ------------------------------------------------------------

    def arrive(self, arrival: Arrival) -> bool:
        """
        Start admission for a connection just accepted: the checks that
        need nothing read run now (see :mod:`securews.rules.admission`).

        :returns: false when the connection is to be dropped at once.
        """
        self._accepted_at = self.policy.clock.seconds()
        self._admission = Admission(self.policy, arrival, self)
        self._admission.start()
        if self._dropped:
            # No connectionLost follows a drop at accept: the run lets go
            # of this protocol here (it holds no place yet).
            self._release()
        return not self._dropped

    def connectionMade(self) -> None:
        """
        The transport is ready.  Without a PROXY header the factory already
        ran the accept checks (before any TLS state was built); behind one,
        the client is known only now, from the header, and they run here.
        """
        policy = self.policy
        config = policy.config
        if self._admission is None:
            header = proxy_header(self.transport)
            self._accepted_at = policy.clock.seconds()
            self._admission = Admission(policy, Arrival(
                peer_host(self._transport.getPeer()),
                proxy_header=header is not None,
                carried=header is not None and header.source is not None), self)
            if header is None:
                policy.accepted()
            starting = True
        else:
            starting = False
        self.factory.connection_made(self)
        # Autobahn's Twisted connectionMade, minus what it builds for WAMP
        # and for debug lines formatted eagerly (securews drops them): the
        # transport details and the peer string.
        with suppress(Exception):  # a UNIX socket; an in-memory transport
            self._transport.setTcpNoDelay(self.tcpNoDelay)
        self._connectionMade()
        # securews's own timer: Autobahn's rounds deadlines down to a whole
        # second (txaio's batched timer), cutting short timeouts by up to 1 s.
        self._handshake_timer = policy.clock.callLater(
            config.limits.handshake_timeout, self._handshake_expired)
        if starting:
            self._admission.start()
        if not self._dropped:
            limit_send_buffer(self._transport, config.limits.send_buffer)

    # -- what admission asks of the connection ------------------------------

    def carry_out(self, action: Action) -> object:
        """Carry out one of admission's I/O actions (see
        :class:`securews.policy.Connection`)."""
        match action:
            case Settled(peer=peer, attempt=attempt):
                self.client = peer.address
                if not self.peer_host:
                    self.peer_host = peer.address
                if attempt:
                    self.policy.alerts.record("connect_attempts", peer.address)
                return None
            case ReadHead():
                return self._unread()
            case ReadBody(end=end):
                self._taken = end
                return self._unread()
            case HeadRead(head=head):
                self._head = head
                self._taken = head.size
                return None
            case Upgrade():
                return self._hand_over()
            case Authenticate(head=head, client=client, origin=origin, issuer=issuer):
                # A ticket request is whole now: nothing more is read (nor
                # buffered) until it is answered.
                self._request_whole = self._request_whole or issuer
                self.tls_client_subject = peer_subject(self.transport)
                return self.policy.authenticate(HandshakeRequest(
                    head=head, client=client, origin=origin,
                    tls_client_subject=self.tls_client_subject), issuer=issuer)
            case Accept(principal=principal):
                assert isinstance(principal, Principal)
                self.principal = principal
                self._upgrade_with(self._choose_subprotocol(self._offered or []))
            case Refuse(refusal=refusal, summarised=summarised, method=method):
                self._summarised = summarised
                self._denied_method = method
                if self._upgrade is not None and not self._upgrade.called:
                    # Autobahn waits on onConnect: it writes the refusal
                    # through failHandshake.
                    self._pending_denial = refusal
                    self._upgrade.errback(_Denied(refusal))
                else:
                    self._refuse(refusal)
            case Answer(response=response, outcome=outcome, status=status,
                        principal=principal):
                self._answered_for = principal
                self._respond(response, outcome, status, None)
            case DropUnread(reason=reason):
                self._dropped = True
                self.policy.dropped(reason, self.client)
                if self.transport is not None:
                    self._transport.abortConnection()
        return WAIT

    def _unread(self) -> object:
        """
        Bytes admission has not seen: what arrived while it waited on a
        backend (a request body behind its head, say) is handed over now;
        otherwise the next read brings more.
        """
        data: bytes = getattr(self, "data", b"")  # none before connectionMade
        if len(data) > self._delivered:
            self._delivered = len(data)
            return data
        return WAIT

    def _hand_over(self) -> object:
        """
        Let Autobahn check the upgrade (RFC 6455); it calls
        :meth:`onConnect`, whose Deferred securews fires once admission
        decides.  Autobahn refuses a bad upgrade through
        :meth:`failHandshake`; admission then waits for good.
        """
        super().processHandshake()
        return WAIT if self._offered is None else self._offered

    def onConnect(  # type: ignore[override]
        self, request: ConnectionRequest
    ) -> Deferred[str | None]:
        self._offered = list(request.protocols)
        self._upgrade = Deferred()
        return self._upgrade

    def _upgrade_with(self, subprotocol: str | None) -> None:
        assert self._upgrade is not None
        self._upgrade.callback(subprotocol)

    # -- reading -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if (self._dropped or self._answered or self._request_whole
                or self.state == WebSocketProtocol.STATE_CLOSED):
            # Dropped, answered, closed or a complete ticket request:
            # nothing more is read, so nothing piles up meanwhile.
            return
        # Autobahn's Twisted dataReceived only adds a debug line whose
        # highlighted values it formats eagerly.
        self._dataReceived(data)

    def processHandshake(self) -> None:
        """Autobahn's hook for every read before the upgrade: bytes for
        admission, or for the wait while it consults a backend."""
        self._received = True
        run = self._admission
        if run is None:
            return
        if isinstance(run.waiting, ReadHead | ReadBody):
            self._delivered = len(self.data)
            run.resume(self.data)
            return
        # Admission is waiting (on an authenticator, a limiter): a client
        # may pipeline its first message behind the request, but no more
        # than one frame's worth.  Autobahn took the head out of the
        # buffer once it was handed over.
        taken = 0 if self._offered is not None else self._taken
        allowed = self.policy.config.limits.max_frame_size + _FRAME_HEADER
        if len(self.data) - taken > allowed:
            self._refuse(Refusal(400, "early_data"))

    # -- answering ---------------------------------------------------------

    def succeedHandshake(self, res: Any) -> None:
        if self.state != WebSocketProtocol.STATE_CONNECTING or self._answered:
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
        self.policy.answered("accepted", 101, None, self._elapsed())
        # Autobahn's Twisted _onOpen would first fill in its transport
        # details (TLS channel binding, peer certificate) for WAMP.
        self.onOpen()

    @property
    def _head_read(self) -> bool:
        """Whether a whole request head was read (``_taken`` counts its
        bytes; the head itself is released once a session opens)."""
        return self._taken > 0

    def release_handshake(self) -> None:
        """
        The session is open: let go of what only the handshake needed, so
        that an idle session holds no copy of its request (nor the
        credential in it): admission's run (its places stay held), the
        parsed head, the subprotocol offer, and Autobahn's copies of the
        request (:data:`~securews.wire._autobahn.HANDSHAKE_STATE`).
        """
        if self._admission is not None:
            self._admission.settle()
        self._head = None
        self._offered = None
        self._upgrade = None
        release_handshake_state(self)

    def _connectionMade(self) -> None:
        """Autobahn's, minus a debug line it formats eagerly."""
        WebSocketProtocol._connectionMade(self)
        self.factory.countConnections += 1

    def _connectionLost(self, reason: Any) -> None:
        """Autobahn's, minus a debug line it formats eagerly."""
        WebSocketProtocol._connectionLost(self, reason)
        self.factory.countConnections -= 1

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
        self._respond(render_refusal(refusal.status, refusal.headers),
                      "refused", refusal.status, refusal.reason)

    def _respond(self, response: bytes, outcome: str, status: int,
                 reason: str | None) -> None:
        """Write a complete HTTP response (securews's bytes) and close."""
        if self._answered or self.state == WebSocketProtocol.STATE_CLOSED:
            return
        self._answered = True
        self._release()
        policy = self.policy
        if self._summarised:
            policy.failures.record(reason or outcome, self.client)
        else:
            self._log_handshake(outcome, reason, status)
        policy.answered(outcome, status, reason, self._elapsed())
        if outcome == "refused" and status != 500 and reason != "unavailable":
            # A refusal of the client's doing (an outage is not).
            policy.alerts.record("denials", self.client)
        # A deliberate answer, not a failure: keeps Autobahn from logging
        # a second, warning-level line about the drop.
        self.wasClean = True
        self._transport.write(response)
        # Nothing more is read (or decrypted) from a connection that was
        # answered: the answer goes out, and the close timer ends the rest.
        transport: Any = self.transport
        transport.pauseProducing()
        self.dropConnection(abort=False)

    # -- the end -----------------------------------------------------------

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
        policy = self.policy
        if reason.check(SSL.Error) and not self._head_read:
            # OpenSSL failed before a whole request head was decrypted: a
            # TLS handshake failure (no shared suite or version, a client
            # that rejects the certificate, plain HTTP on the TLS port, ...)
            # or a corrupt record in the middle of the head.  The client's
            # doing: counted and summarised, never an error.
            if not self._received:  # nothing decrypted: the handshake
                policy.metrics.tls_failure()
            policy.dropped("tls_failure", self.client)
        elif getattr(self, "wasOpenHandshakeTimeout", False):
            if not self._head_read:
                policy.dropped("handshake_timeout", self.client, self._elapsed())
            else:
                policy.answered("timeout", 0, "handshake_timeout", self._elapsed())
        try:
            # Autobahn's Twisted connectionLost only adds debug lines.
            self._connectionLost(reason)
        finally:
            if self._reaper is not None and self._reaper.active():
                self._reaper.cancel()
            try:
                self._release()
            finally:
                try:
                    self.factory.connection_lost(self)
                finally:
                    self._let_go()

    def _let_go(self) -> None:
        """
        The connection is over: drop what would keep this protocol alive
        through a reference cycle, so that reference counting frees the
        connection now instead of the cyclic collector later: an upgrade
        admission never answered (Autobahn's callbacks on it hold the
        protocol) and the fired ``is_closed`` (see :attr:`is_closed`).
        """
        self._upgrade = None
        closed = self.__dict__.get("_is_closed")
        if closed is not None and closed.called:
            self.__dict__["_is_closed"] = None

    def _release(self) -> None:
        """Give back every place this connection holds (idempotent)."""
        if self._admission is not None:
            self._admission.close()

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
            policy = self.policy
            self._reaper = policy.clock.callLater(
                policy.config.limits.close_timeout, self.abort)

    def go_away(self, reason: str = "server shutting down") -> None:
        """Start the close handshake with 1001 (Going Away)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendCloseFrame(code=CloseCode.GOING_AWAY,
                                reasonUtf8=reason.encode("utf-8"),
                                isReply=False)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self._transport.abortConnection()

    def abort(self) -> None:
        """DropUnread the TCP connection now, without a close handshake."""
        self._transport.abortConnection()

    # -- records -----------------------------------------------------------

    def _elapsed(self) -> float | None:
        """Seconds since the TCP accept (handshake latency, for metrics)."""
        if self._accepted_at is None:
            return None
        now: float = self.policy.clock.seconds()
        return now - self._accepted_at

    def _log_handshake(self, outcome: str, reason: str | None, status: int) -> None:
        policy = self.policy
        config = policy.config
        served = (config.server.path, config.auth.ticket.issue_path,
                  *((PAGE_PATH,) if policy.rules.dev_page is not None else ()))
        principal = None if self._denied_method else (
            self.principal or self._answered_for)
        log_handshake(
            outcome, status, reason, client=self.client, head=self._head,
            served=served,
            method=self._denied_method or (principal.method if principal else None),
            principal=principal.id if principal else None)
