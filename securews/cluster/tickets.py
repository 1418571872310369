"""
Tickets shared by every node: minted on any, spent once on any.

The rules are :class:`~securews.auth.tickets.TicketBook`'s: a principal
holds at most ``max_outstanding`` tickets minted within ``ttl``, spent or
not; the first presentation spends a ticket whatever comes of it; the
refusals are told apart (``bad_ticket``, ``reused``, ``expired``,
``wrong_origin``, ``wrong_client``).  The engine holds a digest of each
ticket, never the ticket, and what the ticket stands for (the principal:
id, method, claims, expiry; the Origin and client it is bound to) sealed
with AES-GCM under a key derived from the ticket itself (HKDF): only the
ticket's holder can open it, so a look at the engine learns no identity,
no claim, no address.  A principal's ``renew`` (an introspected cookie's
re-check) does not travel between nodes: a session opened with such a
ticket ends at the credential's expiry (4401) and the page mints a new
ticket.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
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


def _key(ticket: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"securews ticket").derive(ticket.encode("utf-8"))


def seal(ticket: str, record: dict[str, Any]) -> str:
    """``record`` encrypted and authenticated under the ticket's key."""
    nonce = os.urandom(12)
    sealed = AESGCM(_key(ticket)).encrypt(
        nonce, json.dumps(record, separators=(",", ":")).encode("utf-8"),
        digest(ticket).encode("ascii"))
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def unseal(ticket: str, text: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(text)
        plain = AESGCM(_key(ticket)).decrypt(raw[:12], raw[12:],
                                             digest(ticket).encode("ascii"))
        record = json.loads(plain)
    except (ValueError, InvalidTag):
        return None
    return record if isinstance(record, dict) else None


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
            sealed = seal(ticket, {
                "id": principal.id, "method": principal.method,
                "claims": dict(principal.claims),
                "expires_at": principal.expires_at,
                "origin": origin, "client": client})
        except (TypeError, ValueError):
            return fail(TicketRejected("server_busy"))
        d = engine.script(
            SCRIPTS["ticket_issue"],
            [keys.ticket(digest(ticket)), keys.tickets_of(digest(principal.id))],
            [engine.time_arg(), int(self.ttl * 1000), self.max_outstanding,
             digest(ticket), sealed])

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
            entry = unseal(ticket, _text(reply[1]))
            if entry is None:
                raise TicketRejected("bad_ticket")
            if entry["origin"] != origin:
                raise TicketRejected("wrong_origin")
            if self.bind_ip and entry["client"] != client:
                raise TicketRejected("wrong_client")
            return Principal(id=entry["id"], method=entry["method"],
                             claims=entry["claims"], expires_at=entry["expires_at"])

        return d.addCallback(spent)
