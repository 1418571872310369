"""
Tickets shared by every node: minted on any, spent once on any.

The rules are :class:`~securews.auth.tickets.TicketBook`'s: a principal
holds at most ``max_outstanding`` tickets minted within ``ttl``, spent or
not; the first presentation spends a ticket whatever comes of it; the
refusals are told apart (``bad_ticket``, ``reused``, ``expired``,
``wrong_origin``, ``wrong_client``).  The engine holds a digest of each
ticket, never the ticket, and the principal it was minted for (its id,
method, claims and expiry).  A principal's ``renew`` (an introspected
cookie's re-check) does not travel between nodes: a session opened with
such a ticket ends at the credential's expiry (4401) and the page mints a
new ticket.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from securews.auth.interfaces import ITicketStore, Principal, TicketRejected
from securews.auth.tickets import new_ticket
from securews.cluster.engine import Engine
from securews.cluster.scripts import SCRIPTS
from securews.rules.cluster import digest

__all__ = ["RedisTicketStore"]

_MAX_TICKET_LENGTH = 128


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@implementer(ITicketStore)
class RedisTicketStore:
    """:class:`ITicketStore` in the engine (``[auth.ticket]`` rules)."""

    def __init__(self, engine: Engine, *, ttl: float, max_outstanding: int,
                 bind_ip: bool) -> None:
        self.engine = engine
        self.ttl = ttl
        self.max_outstanding = max_outstanding
        self.bind_ip = bind_ip

    def issue(self, principal: Principal, origin: str | None,
              client: str) -> Deferred[str]:
        ticket = new_ticket()
        engine = self.engine
        keys = engine.keys
        try:
            recorded = json.dumps({
                "id": principal.id, "method": principal.method,
                "claims": dict(principal.claims),
                "expires_at": principal.expires_at}, separators=(",", ":"))
        except (TypeError, ValueError):
            return fail(TicketRejected("server_busy"))
        d = engine.script(
            SCRIPTS["ticket_issue"],
            [keys.ticket(digest(ticket)), keys.tickets_of(digest(principal.id))],
            [engine.time_arg(), int(self.ttl * 1000), self.max_outstanding,
             digest(ticket), recorded, origin or "", "1" if origin is not None else "0",
             client])

        def issued(ok: int) -> str:
            if int(ok) != 1:
                raise TicketRejected("too_many")
            return ticket

        return d.addCallback(issued)

    def redeem(self, ticket: str, origin: str | None,
               client: str) -> Deferred[Principal]:
        if len(ticket) > _MAX_TICKET_LENGTH:
            return fail(TicketRejected("bad_ticket"))
        engine = self.engine
        d = engine.script(SCRIPTS["ticket_redeem"],
                          [engine.keys.ticket(digest(ticket))], [engine.time_arg()])

        def spent(reply: list[Any]) -> Principal:
            status = _text(reply[0])
            if status != "ok":
                raise TicketRejected(status)
            recorded, minted_origin, has_origin, minted_for = (
                _text(v) for v in reply[1:5])
            if (minted_origin if has_origin == "1" else None) != origin:
                raise TicketRejected("wrong_origin")
            if self.bind_ip and minted_for != client:
                raise TicketRejected("wrong_client")
            entry = json.loads(recorded)
            return Principal(id=entry["id"], method=entry["method"],
                             claims=entry["claims"], expires_at=entry["expires_at"])

        return d.addCallback(spent)
