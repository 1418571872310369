"""Ticket rules, the in-memory store, the ticket authenticator and the chain."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from securews.auth.chain import ChainAuthenticator
from securews.auth.credentials import explicit_credentials
from securews.auth.interfaces import (
    AmbiguousCredentials,
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    ITicketStore,
    Principal,
    TicketRejected,
)
from securews.auth.tickets import (
    InMemoryTicketStore,
    TicketAuthenticator,
    TicketBook,
    new_ticket,
)
from securews.rules.head import RequestHead, read_head
from tests.support.memory import result_of

ALICE = Principal("alice", "cookie", {"role": "user"})
ORIGIN = "https://app.example.com"
IP = "203.0.113.5"


def book(**kw: Any) -> TicketBook:
    kw.setdefault("ttl", 30)
    kw.setdefault("max_outstanding", 5)
    kw.setdefault("bind_ip", True)
    return TicketBook(**kw)


def head(query: str = "") -> RequestHead:
    parsed = read_head(f"GET /ws?{query} HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
                       max_bytes=8192, max_headers=64)
    assert isinstance(parsed, RequestHead)
    return parsed


def rejected(call: Any) -> str:
    with pytest.raises(TicketRejected) as info:
        call()
    return info.value.reason


def test_ticket_is_spent_once() -> None:
    """Issue, redeem, then the same ticket again is 'reused'."""
    tickets = book()
    tickets.issue("t1", ALICE, ORIGIN, IP, now=0)
    assert tickets.redeem("t1", ORIGIN, IP, now=1) == ALICE
    assert rejected(lambda: tickets.redeem("t1", ORIGIN, IP, now=2)) == "reused"


def test_ticket_expires_after_ttl() -> None:
    """At ttl the ticket is 'expired'; later it is simply unknown."""
    tickets = book(ttl=30)
    tickets.issue("t1", ALICE, ORIGIN, IP, now=0)
    tickets.issue("t2", ALICE, ORIGIN, IP, now=0)
    assert tickets.redeem("t2", ORIGIN, IP, now=29.9) == ALICE
    assert rejected(lambda: tickets.redeem("t1", ORIGIN, IP, now=30)) == "expired"
    tickets.issue("t3", ALICE, ORIGIN, IP, now=0)
    assert rejected(lambda: tickets.redeem("t3", ORIGIN, IP, now=61)) == "bad_ticket"


@pytest.mark.parametrize(("origin", "ip", "reason"), [
    ("https://evil.example", IP, "wrong_origin"),
    (None, IP, "wrong_origin"),
    (ORIGIN, "198.51.100.9", "wrong_client"),
])
def test_ticket_is_bound_to_origin_and_client(origin: str | None, ip: str,
                                              reason: str) -> None:
    """A ticket spent from elsewhere is refused and burnt."""
    tickets = book()
    tickets.issue("t1", ALICE, ORIGIN, IP, now=0)
    assert rejected(lambda: tickets.redeem("t1", origin, ip, now=1)) == reason
    assert rejected(lambda: tickets.redeem("t1", ORIGIN, IP, now=1)) == "reused"


def test_client_binding_can_be_switched_off() -> None:
    """bind_ip = false: a ticket may be spent from another address."""
    tickets = book(bind_ip=False)
    tickets.issue("t1", ALICE, ORIGIN, IP, now=0)
    assert tickets.redeem("t1", ORIGIN, "198.51.100.9", now=1) == ALICE


def test_tickets_per_principal_are_capped_per_ttl() -> None:
    """The (n+1)th ticket within ttl is refused, spent or not; expiry frees."""
    tickets = book(max_outstanding=2)
    tickets.issue("a", ALICE, ORIGIN, IP, now=0)
    tickets.issue("b", ALICE, ORIGIN, IP, now=0)
    assert rejected(lambda: tickets.issue("c", ALICE, ORIGIN, IP, now=1)) == "too_many"
    tickets.issue("d", Principal("bob", "jwt"), ORIGIN, IP, now=1)
    tickets.redeem("a", ORIGIN, IP, now=2)
    assert rejected(lambda: tickets.issue("c", ALICE, ORIGIN, IP, now=2)) == "too_many"
    tickets.issue("c", ALICE, ORIGIN, IP, now=30)


def test_one_principal_cannot_fill_the_book_by_minting_and_spending() -> None:
    """Mint-and-spend in a loop stays within max_outstanding per ttl."""
    tickets = book(max_outstanding=5, max_tickets=50)
    now, minted = 0.0, 0
    for i in range(1000):
        now += 0.1
        try:
            tickets.issue(f"t{i}", ALICE, ORIGIN, IP, now)
        except TicketRejected:
            continue
        minted += 1
        tickets.redeem(f"t{i}", ORIGIN, IP, now)
        assert len(tickets) <= 10
    assert minted <= 5 * (now / 30 + 1)
    tickets.issue("other", Principal("bob", "jwt"), ORIGIN, IP, now)


def test_book_is_bounded() -> None:
    """Past max_tickets new tickets are refused; sweeping frees memory."""
    tickets = book(max_tickets=3, max_outstanding=10)
    for name in "abc":
        tickets.issue(name, ALICE, ORIGIN, IP, now=0)
    assert rejected(lambda: tickets.issue("d", ALICE, ORIGIN, IP, now=1)) == (
        "server_busy")
    tickets.sweep(now=60)
    assert len(tickets) == 0
    tickets.issue("d", ALICE, ORIGIN, IP, now=60)


def test_only_a_digest_is_stored() -> None:
    """The ticket text itself is nowhere in the book's memory."""
    tickets = book()
    ticket = new_ticket()
    tickets.issue(ticket, ALICE, ORIGIN, IP, now=0)
    assert ticket not in repr(vars(tickets))
    assert ticket.encode() not in b"".join(tickets._entries)


def test_new_tickets_are_long_and_distinct() -> None:
    """At least 128 bits of randomness; no repeats."""
    made = {new_ticket() for _ in range(1000)}
    assert len(made) == 1000
    assert all(len(t) >= 22 for t in made)


operations = st.lists(st.tuples(
    st.sampled_from(["issue", "redeem", "wait"]),
    st.sampled_from(["alice", "bob"]),
    st.integers(0, 5),
    st.floats(0, 20),
), max_size=60)


@given(operations)
def test_book_matches_a_simple_model(ops: list[tuple[str, str, int, float]]) -> None:
    """Against a naive model: each ticket admits at most once, within ttl."""
    tickets = book(ttl=30, max_outstanding=3, max_tickets=8)
    now = 0.0
    issued: dict[str, tuple[str, float]] = {}
    spent: set[str] = set()
    for op, who, n, dt in ops:
        name = f"{who}-{n}"
        if op == "wait":
            now += dt
        elif op == "issue" and name not in issued:
            try:
                tickets.issue(name, Principal(who, "x"), ORIGIN, IP, now)
            except TicketRejected as e:
                reason = e.reason
            else:
                reason = "issued"
                issued[name] = (who, now)
                spent.discard(name)
            assert reason in ("issued", "too_many", "server_busy")
        elif op == "redeem":
            try:
                principal = tickets.redeem(name, ORIGIN, IP, now)
            except TicketRejected:
                spent.add(name)
                continue
            assert name in issued
            assert name not in spent
            assert now < issued[name][1] + 30
            assert principal.id == issued[name][0]
            spent.add(name)
        assert len(tickets) <= 8


def test_store_and_authenticator_with_a_clock() -> None:
    """The store runs the book on the clock; ?ticket= authenticates once."""
    clock = Clock()
    store = InMemoryTicketStore(book(ttl=30), clock)
    verifyObject(ITicketStore, store)
    auth = TicketAuthenticator(store, clock=clock)
    verifyObject(IAuthenticator, auth)
    ticket = result_of(store.issue(ALICE, ORIGIN, IP))
    request = HandshakeRequest(head(f"ticket={ticket}"), IP, ORIGIN)
    principal = result_of(auth.authenticate(request))
    assert (principal.id, principal.method) == ("alice", "ticket")
    assert principal.claims["issued_via"] == "cookie"
    with pytest.raises(TicketRejected, match="reused"):
        result_of(auth.authenticate(request))
    late = result_of(store.issue(ALICE, ORIGIN, IP))
    clock.advance(30)
    with pytest.raises(TicketRejected, match="expired"):
        result_of(auth.authenticate(HandshakeRequest(head(f"ticket={late}"), IP,
                                                     ORIGIN)))


def test_authenticator_without_ticket_passes_on() -> None:
    """No ?ticket= is 'no credential of mine'; two of them is a bad request."""
    clock = Clock()
    auth = TicketAuthenticator(InMemoryTicketStore(book(), clock), clock=clock)
    no_ticket = HandshakeRequest(head("a=b"), IP, ORIGIN)
    assert result_of(auth.authenticate(no_ticket)) is None
    with pytest.raises(AuthenticationFailed, match="bad_request"):
        result_of(auth.authenticate(HandshakeRequest(
            head("ticket=a&ticket=b"), IP, ORIGIN)))


@implementer(IAuthenticator)
class Fixed:
    def __init__(self, method: str, result: Any) -> None:
        self.method = method
        self.result = result
        self.calls = 0

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        self.calls += 1
        if isinstance(self.result, Exception):
            return fail(self.result)
        return succeed(self.result)


def test_chain_tries_methods_in_order_until_one_recognises_a_credential() -> None:
    """None passes on; a Principal wins; later methods are not asked."""
    first, second, third = Fixed("a", None), Fixed("b", ALICE), Fixed("c", None)
    chain = ChainAuthenticator([first, second, third])
    assert result_of(chain.authenticate(HandshakeRequest(head(), IP, None))) == ALICE
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)


def test_chain_stops_at_a_rejected_credential_and_names_the_method() -> None:
    """A bad credential is a refusal, not an invitation to try the next method."""
    bad, good = Fixed("jwt", AuthenticationFailed("expired")), Fixed("cookie", ALICE)
    chain = ChainAuthenticator([bad, good])
    with pytest.raises(AuthenticationFailed) as info:
        result_of(chain.authenticate(HandshakeRequest(head(), IP, None)))
    assert (info.value.reason, info.value.method) == ("expired", "jwt")
    assert good.calls == 0


def test_empty_chain_recognises_nobody() -> None:
    """With no methods every request is unauthenticated."""
    chain = ChainAuthenticator([])
    assert result_of(chain.authenticate(HandshakeRequest(head(), IP, None))) is None


def test_a_ticket_session_inherits_the_minting_credentials_expiry() -> None:
    """The session a ticket opens ends when the credential that minted the
    ticket does, and renews as that credential does."""
    clock = Clock()
    store = InMemoryTicketStore(book(ttl=30), clock)

    def renew() -> Deferred[Principal]:
        return succeed(minter)

    minter = Principal("alice", "cookie", expires_at=500.0, renew=renew)
    ticket = result_of(store.issue(minter, ORIGIN, IP))
    principal = result_of(TicketAuthenticator(store, clock=clock).authenticate(
        HandshakeRequest(head(f"ticket={ticket}"), IP, ORIGIN)))
    assert (principal.method, principal.expires_at) == ("ticket", 500.0)
    assert principal.renew is renew


# -- credentials of the client's own choosing ---------------------------------------

EXPLICIT = functools.partial(explicit_credentials, ticket_param="ticket",
                             token_param="token")


def with_headers(query: str, *headers: str) -> RequestHead:
    lines = [f"GET /ws?{query} HTTP/1.1", "Host: h", *headers]
    parsed = read_head(("\r\n".join(lines) + "\r\n\r\n").encode(),
                       max_bytes=8192, max_headers=64)
    assert isinstance(parsed, RequestHead)
    return parsed


@pytest.mark.parametrize(("query", "headers", "found"), [
    ("", (), []),
    ("ticket=t", (), ["ticket"]),
    ("token=a", (), ["jwt"]),
    ("", ("Authorization: Bearer b",), ["jwt"]),
    ("", ("Authorization: Basic b",), []),
    ("token=a", ("Authorization: bearer b",), ["jwt", "jwt"]),
    ("ticket=t&token=a", (), ["ticket", "jwt"]),
    ("ticket=t", ("Cookie: session=c",), ["ticket"]),
])
def test_explicit_credentials_are_the_ones_the_client_chose(
    query: str, headers: tuple[str, ...], found: list[str]
) -> None:
    """Query parameters and a bearer header count; the browser's cookie not."""
    assert EXPLICIT(with_headers(query, *headers)) == found


@pytest.mark.parametrize(("query", "headers"), [
    ("token=a", ("Authorization: Bearer b",)),
    ("ticket=t&token=a", ()),
    ("ticket=t", ("Authorization: Bearer b",)),
])
def test_two_chosen_credentials_are_ambiguous_whatever_would_work(
    query: str, headers: tuple[str, ...]
) -> None:
    """Never "the first that works": no method is even asked."""
    methods = [Fixed("ticket", ALICE), Fixed("jwt", ALICE), Fixed("cookie", ALICE)]
    chain = ChainAuthenticator(methods, explicit=EXPLICIT)
    with pytest.raises(AmbiguousCredentials):
        result_of(chain.authenticate(HandshakeRequest(
            with_headers(query, *headers), IP, None)))
    assert [m.calls for m in methods] == [0, 0, 0]


def test_a_chosen_credential_is_read_by_its_method_only() -> None:
    """With a token in the request, the browser's cookie is not consulted,
    even when the cookie method comes first."""
    cookie, jwt_method = Fixed("cookie", ALICE), Fixed("jwt", None)
    chain = ChainAuthenticator([cookie, jwt_method], explicit=EXPLICIT)
    request = HandshakeRequest(with_headers("token=a", "Cookie: session=c"), IP, None)
    assert result_of(chain.authenticate(request)) is None
    assert (cookie.calls, jwt_method.calls) == (0, 1)


def test_credentials_of_methods_not_configured_do_not_count() -> None:
    """A ?token= to a server without JWTs is no credential: the cookie decides."""
    cookie = Fixed("cookie", ALICE)
    chain = ChainAuthenticator([cookie], explicit=EXPLICIT)
    request = HandshakeRequest(with_headers("token=a&ticket=t"), IP, None)
    assert result_of(chain.authenticate(request)) == ALICE


def test_a_ticket_whose_minting_credential_expired_is_refused() -> None:
    """The JWT that minted it is over by the handshake: 401 expired, no
    session (not 101 and 4401 after the application ran)."""
    clock = Clock()
    store = InMemoryTicketStore(book(ttl=30), clock)
    ticket = result_of(store.issue(Principal("alice", "jwt", expires_at=5.0),
                                   ORIGIN, IP))
    clock.advance(5)
    with pytest.raises(AuthenticationFailed, match="expired"):
        result_of(TicketAuthenticator(store, clock=clock).authenticate(
            HandshakeRequest(head(f"ticket={ticket}"), IP, ORIGIN)))


def test_a_renewable_minting_credential_is_renewed_at_redemption() -> None:
    """An introspected cookie's re-check time passed: it is asked again."""
    clock = Clock()
    store = InMemoryTicketStore(book(ttl=30), clock)
    renewed = Principal("alice", "cookie", expires_at=100.0)
    ticket = result_of(store.issue(
        Principal("alice", "cookie", expires_at=5.0, renew=lambda: succeed(renewed)),
        ORIGIN, IP))
    clock.advance(6)
    principal = result_of(TicketAuthenticator(store, clock=clock).authenticate(
        HandshakeRequest(head(f"ticket={ticket}"), IP, ORIGIN)))
    assert (principal.method, principal.expires_at) == ("ticket", 100.0)
