"""
Single-use, short-lived tickets.

A browser cannot put a header on a WebSocket handshake, and a long-lived
token in a URL ends up in logs.  A ticket is the answer: the page POSTs
(with its cookie or bearer token) to ``issue_path``, gets a random ticket
valid for ``ttl`` seconds, and spends it once in ``wss://host/ws?ticket=``.

:class:`TicketBook` holds the rules and is pure (time is an argument);
:class:`InMemoryTicketStore` is the :class:`ITicketStore` that runs them
in one process.  Only a SHA-256 digest of each ticket is kept, so a
memory dump does not yield spendable tickets; lookups are by digest, so
timing reveals nothing about the ticket itself.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from urllib.parse import parse_qs

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from securews.auth.interfaces import (
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    ITicketStore,
    Principal,
    TicketRejected,
)

__all__ = [
    "MAX_TICKETS",
    "InMemoryTicketStore",
    "TicketAuthenticator",
    "TicketBook",
    "new_ticket",
]

#: Most tickets (live or recently spent) one process keeps; beyond it new
#: tickets are refused ("server_busy") rather than memory growing.
MAX_TICKETS = 100_000
_TICKET_BYTES = 32
_MAX_TICKET_LENGTH = 128


def new_ticket() -> str:
    """256 random bits from :mod:`secrets`, URL-safe."""
    return secrets.token_urlsafe(_TICKET_BYTES)


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode("utf-8", "surrogateescape")).digest()


@attrs.define(eq=False)
class _Entry:
    principal: Principal
    origin: str | None
    client: str
    expires: float
    spent: bool = False


class TicketBook:
    """
    The ticket rules, without I/O.

    An entry is kept for one ``ttl`` after it expires, spent or not, so
    that a late or replayed ticket is reported precisely (``"expired"``,
    ``"reused"``) rather than as unknown; then it is forgotten.  ``ttl``
    is fixed, so insertion order is expiry order and sweeping is a walk
    from the front of a queue.  Memory is bounded by ``max_tickets``.
    """

    def __init__(self, *, ttl: float, max_outstanding: int, bind_ip: bool,
                 max_tickets: int = MAX_TICKETS) -> None:
        self.ttl = ttl
        self.max_outstanding = max_outstanding
        self.bind_ip = bind_ip
        self.max_tickets = max_tickets
        self._entries: dict[bytes, _Entry] = {}
        self._order: deque[bytes] = deque()
        self._by_principal: dict[str, list[_Entry]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def sweep(self, now: float) -> None:
        """Forget every ticket that expired more than ``ttl`` ago."""
        while self._order:
            entry = self._entries[self._order[0]]
            if entry.expires + self.ttl > now:
                break
            del self._entries[self._order.popleft()]
            held = self._by_principal.get(entry.principal.id)
            if held is not None and entry in held:
                held.remove(entry)
                if not held:
                    del self._by_principal[entry.principal.id]

    def outstanding(self, principal_id: str, now: float) -> int:
        """
        Tickets ``principal_id`` was issued within the last ``ttl``, spent
        or not: spending does not free a place, or one principal could
        mint and spend in a loop and fill the book for everyone.
        """
        held = self._by_principal.get(principal_id, [])
        held[:] = [e for e in held if e.expires > now]
        if not held:
            self._by_principal.pop(principal_id, None)
        return len(held)

    def issue(self, ticket: str, principal: Principal, origin: str | None,
              client: str, now: float) -> None:
        """
        Record ``ticket`` for ``principal``.

        :raises TicketRejected: ``"too_many"`` when the principal was
            issued ``max_outstanding`` tickets within the last ``ttl``;
            ``"server_busy"`` when the book is full.
        """
        self.sweep(now)
        if self.outstanding(principal.id, now) >= self.max_outstanding:
            raise TicketRejected("too_many")
        if len(self._entries) >= self.max_tickets:
            raise TicketRejected("server_busy")
        entry = _Entry(principal, origin, client, now + self.ttl)
        digest = _digest(ticket)
        self._entries[digest] = entry
        self._order.append(digest)
        self._by_principal.setdefault(principal.id, []).append(entry)

    def redeem(self, ticket: str, origin: str | None, client: str,
               now: float) -> Principal:
        """
        Spend ``ticket``.  The first presentation consumes it, whatever the
        outcome, so a stolen ticket tried from the wrong place is burnt.

        :raises TicketRejected: ``"bad_ticket"``, ``"reused"``,
            ``"expired"``, ``"wrong_origin"`` or ``"wrong_client"``.
        """
        self.sweep(now)
        if len(ticket) > _MAX_TICKET_LENGTH:
            raise TicketRejected("bad_ticket")
        entry = self._entries.get(_digest(ticket))
        if entry is None:
            raise TicketRejected("bad_ticket")
        if entry.spent:
            raise TicketRejected("reused")
        entry.spent = True
        if entry.expires <= now:
            raise TicketRejected("expired")
        if entry.origin != origin:
            raise TicketRejected("wrong_origin")
        if self.bind_ip and entry.client != client:
            raise TicketRejected("wrong_client")
        return entry.principal


@implementer(ITicketStore)
class InMemoryTicketStore:
    """:class:`ITicketStore` for one process, on a :class:`TicketBook`."""

    def __init__(self, book: TicketBook, clock: IReactorTime) -> None:
        self.book = book
        self.clock = clock

    def issue(self, principal: Principal, origin: str | None,
              client: str) -> Deferred[str]:
        ticket = new_ticket()
        try:
            self.book.issue(ticket, principal, origin, client, self.clock.seconds())
        except TicketRejected as e:
            return fail(e)
        return succeed(ticket)

    def redeem(self, ticket: str, origin: str | None,
               client: str) -> Deferred[Principal]:
        try:
            principal = self.book.redeem(ticket, origin, client, self.clock.seconds())
        except TicketRejected as e:
            return fail(e)
        return succeed(principal)


@implementer(IAuthenticator)
class TicketAuthenticator:
    """
    Authenticates ``?ticket=...`` handshakes against a ticket store.

    The session a ticket opens lives no longer than the credential that
    minted it: if that credential has expired meanwhile, the ticket is
    refused (``"expired"``), unless the credential can be renewed (an
    introspected cookie is asked about again now).

    :param clock: tells when the minting credential has expired.
    """

    method = "ticket"

    def __init__(self, store: ITicketStore, *, clock: IReactorTime,
                 query_param: str = "ticket") -> None:
        self.store = store
        self.query_param = query_param
        self._clock = clock

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        try:
            values = parse_qs(request.head.query, keep_blank_values=True,
                              max_num_fields=64).get(self.query_param, [])
        except ValueError:
            return fail(AuthenticationFailed("bad_request"))
        if not values:
            return succeed(None)
        if len(values) > 1:
            return fail(AuthenticationFailed("bad_request"))
        d = self.store.redeem(values[0], request.origin, request.client)

        def still_good(principal: Principal) -> Deferred[Principal]:
            expires_at = principal.expires_at
            if expires_at is None or expires_at > self._clock.seconds():
                return succeed(principal)
            if principal.renew is None:
                raise AuthenticationFailed("expired")
            return principal.renew()

        def as_ticket_principal(principal: Principal) -> Principal | None:
            # Renewed the way the minting credential is.
            claims = {**principal.claims, "issued_via": principal.method}
            return Principal(id=principal.id, method=self.method, claims=claims,
                             expires_at=principal.expires_at, renew=principal.renew)

        return d.addCallback(still_good).addCallback(as_ticket_principal)
