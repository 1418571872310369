"""
Admission: everything securews decides between accepting a connection
and answering it (101, a ticket, a refusal, or a silent drop), in order.

:func:`admission` is a generator in the sans-I/O style of h11 and the
``websockets`` library: it yields *actions* (frozen values) and is sent
each one's result.  It reads no clock, touches no socket and imports no
reactor, so the order below is the whole policy and can be tested line
by line; :mod:`securews.policy` carries the actions out, against
limiters and stores that may answer at once (in memory) or later (in a
cluster).

The order, cheapest and most flood-resistant first::

    at accept, before a byte is read, from local memory only
      1  plaintext is for trusted proxies only .......... drop untrusted_peer
      2  the client's connect rate on this node ......... drop connect_rate
      3  one of its unfinished-handshake places ......... drop too_many_pending
    the request head, bounded ............................ 400, 431
      4  behind a TLS-terminating proxy: the client
         named by X-Forwarded-For, and its connect rate .. 429 rate_limited
      5  the route ....................................... 404, 405, 426, 505
         (development mode's page at / is answered here)
      6  in a cluster, its connect rate across the nodes . 429 rate_limited
         and one of its concurrent-connection places ..... 429 too_many_connections
      7  the Origin ...................................... 403 origin
         (the ticket endpoint goes on in :func:`_ticket`)
      8  one of the server's places ...................... 503 server_full
      9  the upgrade itself (RFC 6455) ................... 400 bad_handshake
     10  authentication .................................. 401, 400, 500
     11  the credential's expiry ......................... 401 expired
     12  revocation ...................................... 401 revoked
         and one of the principal's session places ....... 429 too_many_sessions
      -> 101

Steps 6 and 12 are one action each (:class:`~securews.rules.actions.Claim`,
:class:`~securews.rules.actions.Vouch`), so a cluster answers each in one
round trip to its engine.  Places are held until the connection ends,
except the unfinished-handshake place, which is given back once the head
is read.  A limiter or store that cannot answer makes the driver throw
:exc:`Unavailable` into the generator: the answer is then 503 (fail
closed), never a 101.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import attrs

from securews.rules.actions import (
    UNAVAILABLE,
    Accept,
    AdmissionRules,
    Answer,
    Arrival,
    Authenticate,
    CheckRevoked,
    Claim,
    Denied,
    DropUnread,
    HeadRead,
    Hold,
    IssueTicket,
    ReadBody,
    ReadHead,
    Refuse,
    Release,
    Settled,
    Steps,
    TakeToken,
    TicketRefused,
    Unavailable,
    Upgrade,
    Vouch,
)
from securews.rules.devpage import PAGE_PATH
from securews.rules.head import HeadScanner, Refusal, RequestHead, route
from securews.rules.origin import OriginError, origin_allowed, parse_origin
from securews.rules.peer import Peer, accepted_peer, forwarded_peer
from securews.rules.ticket_http import (
    Preflight,
    check_body,
    cors_headers,
    inspect_ticket_request,
    preflight_response,
    ticket_response,
)

__all__ = ["admission", "allowed_origin", "printable_origin"]


# -- the order -----------------------------------------------------------------


def admission(rules: AdmissionRules, arrival: Arrival) -> Steps:
    """
    Admit (or not) one connection; see the module docstring for the order.
    The generator ends after one of
    :data:`~securews.rules.actions.FINAL`.
    """
    try:
        yield from _admission(rules, arrival)
    except Unavailable:
        yield Refuse(UNAVAILABLE, summarised=True)


def _admission(rules: AdmissionRules, arrival: Arrival) -> Steps:
    peer = accepted_peer(
        arrival.host, proxy_header=arrival.proxy_header, carried=arrival.carried,
        trusted=rules.trusted, reads_forwarded_for=rules.reads_forwarded_for,
        ipv6_prefix=rules.ipv6_prefix)
    # Plaintext needs a trusted TCP peer: the proxy itself, or a proxy that
    # vouched for the client in a PROXY header.
    untrusted = not rules.tls and not (peer.forwarding or arrival.proxy_header)
    yield Settled(peer, attempt=not (untrusted or peer.forwarding))
    if untrusted:
        yield DropUnread("untrusted_peer")
        return
    if not peer.forwarding:
        if not (yield TakeToken(peer.key)).admitted:
            yield DropUnread("connect_rate")
            return
        if not (yield Hold("pending", peer.key)):
            yield DropUnread("too_many_pending")
            return

    scanner = HeadScanner(max_bytes=rules.max_header_bytes,
                          max_headers=rules.max_headers)
    received = yield ReadHead()
    while (read := scanner.scan(received)) is None:
        received = yield ReadHead()
    if isinstance(read, Refusal):
        yield Refuse(read)
        return
    head = read
    yield HeadRead(head)
    yield Release("pending")

    if peer.forwarding:
        # Behind a proxy that terminated TLS: the client is known now.
        peer = forwarded_peer(peer, head.values("x-forwarded-for"), rules.trusted,
                              rules.ipv6_prefix)
        yield Settled(peer)
        verdict = yield TakeToken(peer.key)
        if not verdict.admitted:
            yield _rate_limited(verdict.retry_after)
            return

    if rules.dev_page is not None and head.path == PAGE_PATH:
        yield _dev_page(rules, head, rules.dev_page)
        return
    tickets = rules.ticket_path is not None and head.path == rules.ticket_path
    if not tickets and (wrong := route(head, websocket_path=rules.websocket_path)):
        yield Refuse(wrong)
        return
    claimed = yield Claim(peer.key, rate=rules.shared_rate)
    if claimed.retry_after is not None:
        yield _rate_limited(claimed.retry_after)
        return
    if claimed.lease is None:
        yield Refuse(Refusal(429, "too_many_connections", (("Retry-After", "1"),)))
        return
    origin = allowed_origin(head, rules)
    if origin is False:
        yield Refuse(Refusal(403, "origin"))
        return
    if tickets:
        yield from _ticket(rules, head, peer, origin, received)
        return
    if not (yield Hold("capacity", "")):
        yield Refuse(Refusal(503, "server_full", (("Retry-After", "5"),)))
        return

    yield Upgrade(head)
    result = yield Authenticate(head, peer.address, head.get("origin"))
    if isinstance(result, Denied):
        yield Refuse(result.refusal, method=result.method)
        return
    principal = result.principal
    method = principal.method
    if principal.expires_at is not None and principal.expires_at <= result.now:
        # Whatever vouched for it, a session never starts on a credential
        # that is over (no hook runs, no 101 then 4401).
        yield Refuse(Refusal(401, "expired"), method=method)
        return
    if method != "anonymous":
        # Anonymous (development) principals are all one id: left to the
        # per-address limits.
        vouched = yield Vouch(principal)
        if vouched.revoked:
            yield Refuse(Refusal(401, "revoked"), method=method)
            return
        if vouched.lease is None:
            yield Refuse(Refusal(429, "too_many_sessions", (("Retry-After", "1"),)),
                         method=method)
            return
    yield Accept(principal)


def _rate_limited(retry_after: float) -> Refuse:
    """Over a connect rate, known from the request head: 429 with the wait;
    a flood's answers are summarised, not logged one by one."""
    wait = max(1, math.ceil(retry_after))
    return Refuse(Refusal(429, "rate_limited", (("Retry-After", str(wait)),)),
                  summarised=True)


def _ticket(rules: AdmissionRules, head: RequestHead, peer: Peer,
            origin: str | None, received: bytes) -> Steps:
    """
    ``POST {ticket_path}`` (and its CORS preflight), past the Origin check:
    a foreign page got 403 and no CORS headers, so it learnt nothing.
    From here every answer, refusals included, carries CORS headers for
    the allowed Origin, so the application's page can read its status and
    ``Retry-After`` instead of seeing "Failed to fetch".
    """
    cors = cors_headers(origin)

    def refuse(refusal: Refusal, method: str | None = None) -> Refuse:
        return Refuse(attrs.evolve(refusal, headers=refusal.headers + cors),
                      method=method)

    kind = inspect_ticket_request(head)
    if isinstance(kind, Refusal):
        yield refuse(kind)
        return
    if isinstance(kind, Preflight):
        if origin is None:
            yield Refuse(Refusal(403, "origin"))
        else:
            yield Answer(preflight_response(origin), "preflight", 204)
        return
    end = head.size + kind.length
    while len(received) < end:
        received = yield ReadBody(end)
    if (refusal := check_body(received[head.size:end])) is not None:
        yield refuse(refusal)
        return
    try:
        result = yield Authenticate(head, peer.address, head.get("origin"),
                                    issuer=True)
        if isinstance(result, Denied):
            yield refuse(result.refusal, result.method)
            return
        principal = result.principal
        method = principal.method
        if principal.expires_at is not None and principal.expires_at <= result.now:
            yield refuse(Refusal(401, "expired"), method)
            return
        if method != "anonymous" and (yield CheckRevoked(principal)):
            yield refuse(Refusal(401, "revoked"), method)
            return
        ticket = yield IssueTicket(principal, head.get("origin"), peer.address)
    except Unavailable:
        yield attrs.evolve(refuse(UNAVAILABLE), summarised=True)
        return
    if isinstance(ticket, TicketRefused):
        if ticket.reason == "server_busy":
            yield refuse(Refusal(503, "server_busy"))
        else:
            yield refuse(Refusal(429, ticket.reason, (
                ("Retry-After", str(math.ceil(rules.ticket_ttl))),)))
        return
    issued = Answer(ticket_response(ticket, rules.ticket_ttl, origin),
                    "ticket_issued", 201)
    yield attrs.evolve(issued, principal=result.principal)


def _dev_page(rules: AdmissionRules, head: RequestHead,
              page: bytes) -> Refuse | Answer:
    """
    Development mode's page at ``GET /`` (:mod:`securews.rules.devpage`):
    fixed bytes, after the head was read within its bounds and the connect
    rate charged; a foreign Origin is refused as anywhere else.
    """
    if head.version != "HTTP/1.1":
        return Refuse(Refusal(505, "http_version"))
    if head.method != "GET":
        return Refuse(Refusal(405, "method_not_allowed", (("Allow", "GET"),)))
    if allowed_origin(head, rules) is False:
        return Refuse(Refusal(403, "origin"))
    return Answer(page, "page", 200)


def allowed_origin(head: RequestHead,
                   rules: AdmissionRules) -> str | Literal[False] | None:
    """
    :returns: the normalised Origin when allowed, ``None`` when absent and
        that is allowed, ``False`` when refused (a repeated Origin is).
    """
    values = head.values("origin")
    if len(values) > 1:
        return False
    origin = values[0] if values else None
    if not origin_allowed(origin, rules.origins,
                          allow_missing=rules.allow_missing_origin):
        return False
    return None if origin is None else str(parse_origin(origin))


def printable_origin(values: Sequence[str]) -> str | None:
    """An Origin for a log line: normalised, or ``"invalid"``; never the
    client's text as sent."""
    if not values:
        return None
    if len(values) > 1:
        return "invalid"
    try:
        return str(parse_origin(values[0]))
    except OriginError:
        return "invalid"
