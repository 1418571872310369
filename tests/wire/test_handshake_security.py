"""
Handshake security glue, in memory: per-client limits, trusted proxies,
and the ticket endpoint from POST to spent ticket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent
from twisted.python.failure import Failure

from securews.auth.anonymous import AnonymousAuthenticator
from securews.auth.interfaces import AuthenticationFailed, Principal
from securews.auth.tickets import InMemoryTicketStore, TicketAuthenticator, TicketBook
from securews.wire.factory import SecureServerFactory
from tests.support.memory import (
    ORIGIN,
    FixedAuthenticator,
    connect,
    handshake,
    make_factory,
    metric,
    request,
    result_of,
    status,
)

ALICE = Principal("alice", "cookie")


def limited(clock: Clock, **ratelimit: Any) -> SecureServerFactory:
    return make_factory(clock, AnonymousAuthenticator(), ratelimit=ratelimit)


# -- per-client limits ----------------------------------------------------------


def answer(transport: StringTransport) -> int | None:
    """The response status, or ``None`` for a connection dropped unanswered."""
    if transport.value() == b"":
        assert transport.disconnecting or transport.disconnected
        return None
    return status(transport)


def test_connect_burst_then_dropped_at_accept(clock: Clock) -> None:
    """
    connect_burst connections pass at once; the next is dropped as it is
    accepted, before TLS or a request byte, until the rate refills.
    """
    factory = limited(clock, connect_rate=0.5, connect_burst=3)
    codes = [answer(handshake(factory)[1]) for _ in range(4)]
    assert codes == [101, 101, 101, None]
    clock.advance(1.9)
    proto, transport = connect(factory)
    # Dropped before any protocol (or TLS state) was built for it.
    assert proto is None
    assert transport.disconnecting
    clock.advance(0.1)
    assert answer(handshake(factory)[1]) == 101
    assert metric(factory, "securews_connections_dropped_total",
                  reason="connect_rate") == 2
    assert metric(factory, "securews_connections_accepted_total") == 6


def test_connect_burst_behind_a_terminating_proxy_is_429(clock: Clock) -> None:
    """Behind a proxy that terminated TLS the client is known from the head:
    past connect_burst, 429 with Retry-After."""
    factory = make_factory(clock, AnonymousAuthenticator(), tls={"enabled": False},
                           server={"trusted_proxies": ["10.0.0.0/8"]},
                           ratelimit={"connect_rate": 0.5, "connect_burst": 3})
    codes = []
    for _ in range(4):
        proto, transport = connect(factory, peer="10.0.0.2")
        proto.dataReceived(request(extra=("X-Forwarded-For: 192.0.2.50",)))
        codes.append(answer(transport))
    assert codes == [101, 101, 101, 429]
    assert b"\r\nRetry-After: 2\r\n" in transport.value()


def test_concurrent_connections_per_client_are_capped(clock: Clock) -> None:
    """The (n+1)th open WebSocket from one address gets 429; closing frees one."""
    factory = limited(clock, connections_per_ip=2, connect_burst=100)
    first, _ = handshake(factory)
    handshake(factory)
    _, transport = handshake(factory)
    assert status(transport) == 429
    assert b"\r\nRetry-After: 1\r\n" in transport.value()
    proto, other = connect(factory, peer="198.51.100.1")
    proto.dataReceived(request())
    assert status(other) == 101
    first.connectionLost(Failure(ConnectionLost()))
    assert status(handshake(factory)[1]) == 101


def test_ipv6_clients_are_counted_per_64(clock: Clock) -> None:
    """Rotating addresses inside one /64 does not escape the limit."""
    factory = limited(clock, connections_per_ip=1, connect_burst=100)
    for peer, code in [("2001:db8:1:2::1", 101), ("2001:db8:1:2::ffff", 429),
                       ("2001:db8:1:3::1", 101)]:
        proto, transport = connect(factory, peer=peer)
        proto.dataReceived(request())
        assert status(transport) == code, peer


@pytest.mark.parametrize("deployment", [
    {"tls": {"enabled": False}, "server": {"trusted_proxies": ["10.0.0.0/8"]}},
    {"server": {"trusted_proxies": ["10.0.0.0/8"], "trust_forwarded_for": True}},
], ids=["tls-terminated-upstream", "re-encrypting-proxy"])
def test_forwarded_for_is_believed_only_from_trusted_proxies(
    clock: Clock, deployment: dict[str, Any]
) -> None:
    """X-Forwarded-For names the client behind a trusted proxy that terminated
    TLS, else is ignored."""
    factory = make_factory(clock, AnonymousAuthenticator(), **deployment,
                           ratelimit={"connections_per_ip": 1, "connect_burst": 100})
    xff = ("X-Forwarded-For: 192.0.2.50",)
    via_proxy, transport = connect(factory, peer="10.0.0.2")
    via_proxy.dataReceived(request(extra=xff))
    assert status(transport) == 101
    assert via_proxy.client == "192.0.2.50"
    same_client, transport = connect(factory, peer="10.0.0.3")
    same_client.dataReceived(request(extra=xff))
    assert status(transport) == 429
    spoofer, transport = connect(factory, peer="203.0.113.66")
    if spoofer is not None:
        spoofer.dataReceived(request(extra=xff))
    if factory.config.tls.enabled:
        assert status(transport) == 101
        assert spoofer.client == "203.0.113.66"
    else:  # plaintext is served to the trusted proxies only
        assert answer(transport) is None


def test_forwarded_for_is_ignored_when_securews_terminates_tls(
    clock: Clock
) -> None:
    """
    With TLS passthrough (securews terminates TLS), X-Forwarded-For rode
    inside TLS from the end client: a TCP load balancer in trusted_proxies
    does not make it believable.  Each forged address is the same client.
    """
    factory = make_factory(clock, AnonymousAuthenticator(),
                           server={"trusted_proxies": ["10.0.0.0/8"]},
                           ratelimit={"connect_burst": 3, "connect_rate": 0.01})
    codes, clients = [], []
    for n in range(5):
        proto, transport = connect(factory, peer="10.0.0.2")
        if proto is not None:
            proto.dataReceived(request(extra=(f"X-Forwarded-For: 192.0.2.{n}",)))
            clients.append(proto.client)
        codes.append(answer(transport))
    assert codes == [101, 101, 101, None, None]
    assert clients == ["10.0.0.2"] * 3


def test_rate_limit_comes_before_authentication(clock: Clock) -> None:
    """A flood is turned away before the authenticator is ever asked."""
    auth = FixedAuthenticator(None)
    factory = make_factory(clock, auth, ratelimit={"connect_burst": 2,
                                                   "connect_rate": 1})
    codes = [answer(handshake(factory)[1]) for _ in range(5)]
    assert codes == [401, 401, None, None, None]
    assert len(auth.requests) == 2


# -- the ticket endpoint ------------------------------------------------------------


def ticket_factory(clock: Clock, issuer_result: Any = ALICE,
                   **sections: Any) -> SecureServerFactory:
    store = InMemoryTicketStore(
        TicketBook(ttl=30, max_outstanding=2, bind_ip=True), clock)
    return make_factory(clock, TicketAuthenticator(store, clock=clock),
                        ticket_store=store,
                        ticket_issuer=FixedAuthenticator(issuer_result), **sections)


def post(factory: SecureServerFactory, body: bytes = b"", *,
         origin: str | None = ORIGIN, headers: tuple[str, ...] = (),
         method: str = "POST", peer: str = "203.0.113.7") -> tuple[int, bytes]:
    proto, transport = connect(factory, peer=peer)
    lines = [f"{method} /tickets HTTP/1.1", "Host: ws.example.com",
             f"Content-Length: {len(body)}", *headers]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if body:
        lines.append("Content-Type: application/json")
    proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    response = transport.value()
    return status(transport), response


def ticket_of(response: bytes) -> str:
    document = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert document["expires_in"] == 30
    return str(document["ticket"])


def test_ticket_issue_use_reuse_and_expiry(
    clock: Clock, events: list[LogEvent]
) -> None:
    """201 with a ticket; it opens one session; reuse and expiry are 401."""
    factory = ticket_factory(clock)
    code, response = post(factory, b'{"purpose": "chat"}')
    assert code == 201
    assert b"\r\nCache-Control: no-store\r\n" in response
    assert b"\r\nContent-Type: application/json\r\n" in response
    assert f"\r\nAccess-Control-Allow-Origin: {ORIGIN}\r\n".encode() in response
    ticket = ticket_of(response)
    proto, transport = handshake(factory, path=f"/ws?ticket={ticket}")
    assert status(transport) == 101
    assert proto.principal.id == "alice"
    assert status(handshake(factory, path=f"/ws?ticket={ticket}")[1]) == 401
    late = ticket_of(post(factory)[1])
    clock.advance(30)
    assert status(handshake(factory, path=f"/ws?ticket={late}")[1]) == 401
    reasons = [e.get("reason") for e in events if e.get("event") == "handshake"]
    assert "reused" in reasons
    assert "expired" in reasons
    assert ticket not in repr(events)
    assert late not in repr(events)


def test_ticket_is_bound_to_origin_and_address(clock: Clock) -> None:
    """A ticket spent from another Origin or address is 401."""
    factory = ticket_factory(clock, origin={"allowed": [ORIGIN, "https://b.example"]})
    ticket = ticket_of(post(factory)[1])
    assert status(handshake(factory, path=f"/ws?ticket={ticket}",
                            origin="https://b.example")[1]) == 401
    ticket = ticket_of(post(factory)[1])
    proto, transport = connect(factory, peer="198.51.100.77")
    proto.dataReceived(request(path=f"/ws?ticket={ticket}"))
    assert status(transport) == 401


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"origin": "https://evil.example"}, 403),
    ({"origin": None}, 403),
    ({"method": "GET"}, 405),
    ({"method": "PUT"}, 405),
    ({"body": b"not json"}, 400),
    ({"body": b"x" * 5000}, 413),
    ({"headers": ("Transfer-Encoding: chunked",)}, 411),
    ({"headers": ("Content-Type: text/plain",), "body": b""}, 415),
])
def test_ticket_endpoint_refusals(clock: Clock, kwargs: dict[str, Any],
                                  code: int) -> None:
    """Cross-site, wrong method, bad or oversized bodies are refused."""
    factory = ticket_factory(clock)
    assert post(factory, **kwargs)[0] == code


def test_form_post_cannot_mint_a_ticket(clock: Clock) -> None:
    """A cross-site form (text/plain or urlencoded body) is 415 even from our Origin."""
    factory = ticket_factory(clock)
    proto, transport = connect(factory)
    proto.dataReceived(
        b"POST /tickets HTTP/1.1\r\nHost: h\r\nOrigin: " + ORIGIN.encode() +
        b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 3\r\n\r\na=b")
    assert status(transport) == 415


def test_ticket_needs_an_authenticated_caller(clock: Clock) -> None:
    """No credential is 401; a rejected credential is 401 with its reason logged."""
    assert post(ticket_factory(clock, None))[0] == 401
    assert post(ticket_factory(clock, AuthenticationFailed("expired")))[0] == 401


def test_outstanding_ticket_limit_is_429(clock: Clock) -> None:
    """Past max_outstanding live tickets the caller gets 429."""
    factory = ticket_factory(clock)
    assert [post(factory)[0] for _ in range(3)] == [201, 201, 429]


def test_preflight_allows_only_listed_origins(clock: Clock) -> None:
    """OPTIONS from an allowed Origin gets CORS headers; others 403."""
    factory = ticket_factory(clock)
    code, response = post(factory, method="OPTIONS")
    assert code == 204
    assert b"\r\nAccess-Control-Allow-Credentials: true\r\n" in response
    assert b"Access-Control-Allow-Methods: POST" in response
    assert post(factory, method="OPTIONS", origin="https://evil.example")[0] == 403


def test_body_may_arrive_in_pieces(clock: Clock) -> None:
    """The endpoint waits for Content-Length bytes before answering."""
    factory = ticket_factory(clock)
    proto, transport = connect(factory)
    proto.dataReceived(
        b"POST /tickets HTTP/1.1\r\nHost: h\r\nOrigin: " + ORIGIN.encode() +
        b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{")
    assert transport.value() == b""
    proto.dataReceived(b"}")
    assert status(transport) == 201


# -- per-principal sessions ----------------------------------------------------------


def test_one_principal_holds_at_most_sessions_per_principal(clock: Clock) -> None:
    """
    One account from many addresses: past sessions_per_principal, 429
    with Retry-After (after authentication); closing one frees its place;
    another account is not affected.
    """
    factory = make_factory(clock, FixedAuthenticator(ALICE),
                           ratelimit={"sessions_per_principal": 2})
    opened = []
    for n in range(2):
        proto, transport = connect(factory, peer=f"198.51.100.{n + 1}")
        proto.dataReceived(request())
        assert status(transport) == 101
        opened.append(proto)
    proto, transport = connect(factory, peer="2001:db8:77::1")
    proto.dataReceived(request())
    assert status(transport) == 429
    assert b"\r\nRetry-After: 1\r\n" in transport.value()
    assert result_of(factory.policy.per_principal.count("alice")) == 2
    opened[0].connectionLost(Failure(ConnectionLost()))
    assert result_of(factory.policy.per_principal.count("alice")) == 1
    proto, transport = connect(factory, peer="2001:db8:77::1")
    proto.dataReceived(request())
    assert status(transport) == 101
    factory.policy.authenticator = FixedAuthenticator(Principal("bob", "jwt"))
    proto, transport = connect(factory, peer="198.51.100.9")
    proto.dataReceived(request())
    assert status(transport) == 101


def test_refused_for_the_principal_is_logged_and_counted(
    clock: Clock, events: list[LogEvent]
) -> None:
    factory = make_factory(clock, FixedAuthenticator(ALICE),
                           ratelimit={"sessions_per_principal": 1})
    for peer in ("198.51.100.1", "198.51.100.2"):
        proto, _ = connect(factory, peer=peer)
        proto.dataReceived(request())
    [refused] = [e for e in events if e.get("event") == "handshake"
                 and e.get("status") == 429]
    assert (refused["reason"], refused["method"]) == ("too_many_sessions", "cookie")
    assert metric(factory, "securews_handshakes_total", outcome="refused",
                  status="429", reason="too_many_sessions") == 1


def test_anonymous_development_sessions_are_not_one_principal(clock: Clock) -> None:
    """Everyone is "anonymous" under --dev: per-address limits apply instead."""
    factory = make_factory(clock, AnonymousAuthenticator(), dev=True,
                           ratelimit={"sessions_per_principal": 1})
    for n in range(3):
        proto, transport = connect(factory, peer=f"198.51.100.{n + 1}")
        proto.dataReceived(request())
        assert status(transport) == 101


# -- refusals a page can read --------------------------------------------------------

CORS = b"\r\nAccess-Control-Allow-Origin: https://app.example.com\r\n"


@pytest.mark.parametrize(("issuer_result", "body", "headers", "code"), [
    (None, b"", (), 401),
    (AuthenticationFailed("expired"), b"", (), 401),
    (ALICE, b"x" * 5000, (), 413),
    (ALICE, b"", ("Content-Type: text/plain", "Content-Length: 1"), 415),
])
def test_ticket_refusals_carry_cors_for_the_allowed_origin(
    clock: Clock, issuer_result: Any, body: bytes, headers: tuple[str, ...],
    code: int
) -> None:
    """A page on the allowed Origin can read why its POST was refused."""
    factory = ticket_factory(clock, issuer_result)
    if headers:  # a body that is not JSON, sent as what it is
        proto, transport = connect(factory)
        proto.dataReceived(b"POST /tickets HTTP/1.1\r\nHost: h\r\nOrigin: "
                           + ORIGIN.encode() + b"\r\n"
                           + "\r\n".join(headers).encode() + b"\r\n\r\nx")
        got, response = status(transport), transport.value()
    else:
        got, response = post(factory, body)
    assert got == code
    assert CORS in response
    assert b"\r\nAccess-Control-Allow-Credentials: true\r\n" in response


def test_ticket_429_carries_cors_and_retry_after(clock: Clock) -> None:
    factory = ticket_factory(clock)
    codes = [post(factory, b"{}")[0] for _ in range(3)]
    assert codes == [201, 201, 429]
    _, response = post(factory, b"{}")
    assert CORS in response
    assert b"\r\nRetry-After: 30\r\n" in response


def test_foreign_origin_ticket_refusal_carries_no_cors(clock: Clock) -> None:
    """403: a foreign page learns nothing, not even the status."""
    got, response = post(ticket_factory(clock), b"{}", origin="https://evil.example")
    assert got == 403
    assert b"Access-Control" not in response


def test_the_log_names_who_got_a_ticket_and_who_was_admitted(
    clock: Clock, events: list[LogEvent]
) -> None:
    """ticket_issued names the issuer's method and the principal; the 101
    spent with the ticket names the principal too (never the ticket)."""
    factory = ticket_factory(clock)
    ticket = ticket_of(post(factory)[1])
    assert status(handshake(factory, path=f"/ws?ticket={ticket}")[1]) == 101
    lines = [formatEvent(e) for e in events if e.get("event") == "handshake"]
    assert lines == [
        "handshake ticket_issued 201 from 203.0.113.7 path=/tickets "
        f"origin={ORIGIN} method=cookie reason=None principal=alice",
        "handshake accepted 101 from 203.0.113.7 path=/ws "
        f"origin={ORIGIN} method=ticket reason=None principal=alice",
    ]
    assert [e.get("principal") for e in events if e.get("event") == "handshake"
            ] == ["alice", "alice"]
