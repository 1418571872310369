"""
The admission order, driven directly: actions out, scripted answers in.
No reactor, no protocol, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securews.rules.actions import (
    FINAL,
    Accept,
    Action,
    AdmissionRules,
    Answer,
    Arrival,
    Authenticate,
    Authenticated,
    CheckRevoked,
    Claim,
    Claimed,
    Denied,
    DropUnread,
    Hold,
    IssueTicket,
    ReadBody,
    ReadHead,
    Refuse,
    Release,
    Settled,
    TakeToken,
    TicketRefused,
    Unavailable,
    Upgrade,
    Vouch,
    Vouched,
)
from securews.rules.admission import admission
from securews.rules.counters import Lease
from securews.rules.head import Refusal
from securews.rules.origin import parse_allow_list
from tests.support.memory import FUZZ, ORIGIN, request

PEER = "203.0.113.7"
RULES = AdmissionRules(
    websocket_path="/ws", ticket_path="/tickets", ticket_ttl=30, tls=True,
    trusted=(ipaddress.ip_network("10.0.0.0/8"),), reads_forwarded_for=False,
    ipv6_prefix=64, max_header_bytes=8192, max_headers=64,
    origins=parse_allow_list([ORIGIN]), allow_missing_origin=False)


@attrs.frozen
class Who:
    id: str = "alice"
    method: str = "jwt"
    expires_at: float | None = None
    claims: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Verdict:
    admitted: bool
    retry_after: float = 0.0


ALICE = Who()
NOW = 1_000.0


def answers(*, tokens: bool = True, places: frozenset[str] = frozenset(
                {"pending", "client", "capacity", "principal"}),
            principal: Who | Denied = ALICE, revoked: bool = False,
            ticket: str | TicketRefused = "T", offered: tuple[str, ...] = (),
            data: bytes = request(), shared_tokens: bool = True,
            ) -> Callable[[Action], object]:
    """What a world of backends answers, by action."""

    def answer(action: Action) -> object:
        match action:
            case TakeToken():
                return Verdict(tokens, 0.0 if tokens else 2.4)
            case Hold(counter=counter):
                return counter in places
            case Claim(rate=rate):
                if rate and not shared_tokens:
                    return Claimed(None, 0.3)
                return Claimed(Lease(lambda: None) if "client" in places else None)
            case CheckRevoked():
                return revoked
            case Vouch():
                if revoked:
                    return Vouched(True, None)
                return Vouched(False, Lease(lambda: None)
                               if "principal" in places else None)
            case ReadHead() | ReadBody():
                return data
            case Upgrade():
                return list(offered)
            case Authenticate():
                if isinstance(principal, Denied):
                    return principal
                return Authenticated(principal, NOW)
            case IssueTicket():
                return ticket
        return None

    return answer


FROM_PEER = Arrival(PEER)


def play(answer: Callable[[Action], object], *, rules: AdmissionRules = RULES,
         arrival: Arrival = FROM_PEER,
         fail_at: type | None = None) -> list[Action]:
    """Every action admission takes, up to and including the final one."""
    steps = admission(rules, arrival)
    taken = [next(steps)]
    while not isinstance(taken[-1], FINAL):
        action = taken[-1]
        if fail_at is not None and isinstance(action, fail_at):
            taken.append(steps.throw(Unavailable()))
        else:
            taken.append(steps.send(answer(action)))
    with pytest.raises(StopIteration):
        steps.send(None)
    return taken


def kinds(actions: list[Action]) -> list[str]:
    out = []
    for a in actions:
        name = type(a).__name__
        if isinstance(a, Hold | Release):
            name += f":{a.counter}"
        elif isinstance(a, Claim) and a.rate:
            name += ":rate"
        out.append(name)
    return out


def final(actions: list[Action]) -> Action:
    return actions[-1]


def test_the_order_of_a_successful_upgrade() -> None:
    """The order the module docstring promises, from accept to 101."""
    actions = play(answers())
    assert kinds(actions) == [
        "Settled", "TakeToken", "Hold:pending", "ReadHead", "HeadRead",
        "Release:pending", "Claim", "Hold:capacity", "Upgrade",
        "Authenticate", "Vouch", "Accept"]
    assert final(actions) == Accept(ALICE)
    assert actions[0] == Settled(actions[0].peer, attempt=True)  # type: ignore[union-attr]


@pytest.mark.parametrize(("world", "expected"), [
    ({"tokens": False}, DropUnread("connect_rate")),
    ({"places": frozenset()}, DropUnread("too_many_pending")),
    ({"places": frozenset({"pending"})},
     Refuse(Refusal(429, "too_many_connections", (("Retry-After", "1"),)))),
    ({"places": frozenset({"pending", "client"})},
     Refuse(Refusal(503, "server_full", (("Retry-After", "5"),)))),
    ({"places": frozenset({"pending", "client", "capacity"})},
     Refuse(Refusal(429, "too_many_sessions", (("Retry-After", "1"),)),
            method="jwt")),
    ({"principal": Denied(Refusal(401, "bad_signature"), "jwt")},
     Refuse(Refusal(401, "bad_signature"), method="jwt")),
    ({"principal": Who(expires_at=NOW)}, Refuse(Refusal(401, "expired"),
                                                method="jwt")),
    ({"revoked": True}, Refuse(Refusal(401, "revoked"), method="jwt")),
    ({"data": request(origin="https://evil.example")}, Refuse(Refusal(403, "origin"))),
    ({"data": request(path="/nope")}, Refuse(Refusal(404, "not_found"))),
    ({"data": b"x" * 9000}, Refuse(Refusal(431, "header_too_large"))),
])
def test_each_check_refuses_as_documented(world: dict[str, Any],
                                          expected: Action) -> None:
    assert final(play(answers(**world))) == expected


def test_anonymous_principals_are_neither_revoked_nor_counted() -> None:
    actions = play(answers(principal=Who("anonymous", "anonymous"),
                           places=frozenset({"pending", "client", "capacity"})))
    assert "Vouch" not in kinds(actions)
    assert isinstance(final(actions), Accept)


def test_a_flood_is_turned_away_before_any_authenticator_runs() -> None:
    for world in ({"tokens": False}, {"places": frozenset()},
                  {"places": frozenset({"pending"})}):
        assert "Authenticate" not in kinds(play(answers(**world)))  # type: ignore[arg-type]


def test_plaintext_from_an_untrusted_peer_is_dropped_before_anything() -> None:
    rules = attrs.evolve(RULES, tls=False, reads_forwarded_for=True)
    actions = play(answers(), rules=rules)
    assert kinds(actions) == ["Settled", "DropUnread"]
    assert actions[0] == Settled(actions[0].peer, attempt=False)  # type: ignore[union-attr]
    assert final(actions) == DropUnread("untrusted_peer")


def test_behind_a_terminating_proxy_the_head_names_the_client() -> None:
    """The proxy's connection is not charged at accept; the client named by
    X-Forwarded-For is, once the head is read: 429, summarised."""
    rules = attrs.evolve(RULES, tls=False, reads_forwarded_for=True)
    data = request(extra=("X-Forwarded-For: 192.0.2.50",))
    actions = play(answers(data=data, tokens=False), rules=rules,
                   arrival=Arrival("10.1.2.3"))
    assert kinds(actions)[:6] == ["Settled", "ReadHead", "HeadRead", "Release:pending",
                                  "Settled", "TakeToken"]
    first, later = actions[0], actions[4]
    assert isinstance(first, Settled)
    assert isinstance(later, Settled)
    assert (first.peer.address, first.attempt) == ("10.1.2.3", False)
    assert (later.peer.address, later.attempt) == ("192.0.2.50", True)
    assert final(actions) == Refuse(
        Refusal(429, "rate_limited", (("Retry-After", "3"),)), summarised=True)


def test_in_a_cluster_the_rate_is_claimed_with_the_place() -> None:
    """One action, so one round trip: the cluster's connect rate and the
    network's place, after the route."""
    rules = attrs.evolve(RULES, shared_rate=True)
    actions = play(answers(), rules=rules)
    assert kinds(actions)[5:7] == ["Release:pending", "Claim:rate"]
    refused = play(answers(shared_tokens=False), rules=rules)
    assert final(refused) == Refuse(
        Refusal(429, "rate_limited", (("Retry-After", "1"),)), summarised=True)
    assert "Upgrade" not in kinds(refused)


@pytest.mark.parametrize("at", [Claim, Hold, Vouch])
def test_a_backend_that_cannot_answer_is_503_never_a_101(at: type) -> None:
    rules = attrs.evolve(RULES, shared_rate=True)
    steps = admission(rules, Arrival(PEER))
    answer = answers()
    action = next(steps)
    while not isinstance(action, FINAL):
        # The accept-time checks are this node's memory, which answers.
        failing = isinstance(action, at) and not (
            isinstance(action, Hold) and action.counter == "pending")
        action = steps.throw(Unavailable()) if failing else steps.send(answer(action))
    assert action == Refuse(Refusal(503, "unavailable", (("Retry-After", "1"),)),
                            summarised=True)


# -- the ticket endpoint ---------------------------------------------------------


def post(body: bytes = b"", *, origin: str | None = ORIGIN, method: str = "POST",
         extra: tuple[str, ...] = ()) -> bytes:
    lines = [f"{method} /tickets HTTP/1.1", "Host: ws.example.com",
             f"Content-Length: {len(body)}", *extra]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if body:
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CORS = (("Access-Control-Allow-Origin", ORIGIN),
        ("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin"))


def test_a_ticket_is_minted_after_the_body_and_the_issuer() -> None:
    actions = play(answers(data=post(b'{"a": 1}')))
    assert kinds(actions) == [
        "Settled", "TakeToken", "Hold:pending", "ReadHead", "HeadRead",
        "Release:pending", "Claim", "Authenticate", "CheckRevoked", "IssueTicket",
        "Answer"]
    authenticate = actions[7]
    assert isinstance(authenticate, Authenticate)
    assert authenticate.issuer
    answer = final(actions)
    assert isinstance(answer, Answer)
    assert (answer.outcome, answer.status) == ("ticket_issued", 201)


def test_a_body_split_across_reads_is_waited_for() -> None:
    data = post(b'{"purpose": "chat"}')
    steps = admission(RULES, Arrival(PEER))
    answer = answers()
    action = next(steps)
    reads = 0
    while not isinstance(action, ReadHead):
        action = steps.send(answer(action))
    action = steps.send(data[:-5])
    while not isinstance(action, ReadBody):
        action = steps.send(answer(action))
    assert action == ReadBody(len(data))
    while isinstance(action, ReadBody):
        reads += 1
        action = steps.send(data[: len(data) - 5 + reads])
    assert reads == 5


@pytest.mark.parametrize(("world", "expected"), [
    ({"data": post(b"{")}, Refusal(400, "bad_json", CORS)),
    ({"data": post(method="PUT")},
     Refusal(405, "method_not_allowed", (("Allow", "POST, OPTIONS"), *CORS))),
    ({"data": post(), "principal": Denied(Refusal(401, "no_credentials"))},
     Refusal(401, "no_credentials", CORS)),
    ({"data": post(), "ticket": TicketRefused("too_many")},
     Refusal(429, "too_many", (("Retry-After", "30"), *CORS))),
    ({"data": post(), "ticket": TicketRefused("server_busy")},
     Refusal(503, "server_busy", CORS)),
    ({"data": post(), "revoked": True}, Refusal(401, "revoked", CORS)),
    ({"data": post(), "principal": Who(expires_at=NOW)}, Refusal(401, "expired", CORS)),
])
def test_ticket_refusals_carry_cors_for_the_allowed_origin(
    world: dict[str, Any], expected: Refusal
) -> None:
    answer = final(play(answers(**world)))
    assert isinstance(answer, Refuse)
    assert answer.refusal == expected


def test_a_foreign_page_learns_nothing_from_the_ticket_endpoint() -> None:
    answer = final(play(answers(data=post(origin="https://evil.example"))))
    assert answer == Refuse(Refusal(403, "origin"))


def test_a_preflight_needs_an_origin() -> None:
    assert final(play(answers(data=post(method="OPTIONS", origin=None)))) == Refuse(
        Refusal(403, "origin"))
    answer = final(play(answers(data=post(method="OPTIONS"))))
    assert isinstance(answer, Answer)
    assert (answer.outcome, answer.status) == ("preflight", 204)


def test_a_ticket_store_that_fails_is_503_with_cors() -> None:
    answer = final(play(answers(data=post()), fail_at=IssueTicket))
    assert answer == Refuse(Refusal(503, "unavailable", (("Retry-After", "1"), *CORS)),
                            summarised=True)


# -- properties ------------------------------------------------------------------


@FUZZ
@given(tokens=st.booleans(),
       places=st.sets(st.sampled_from(["pending", "client", "capacity", "principal"])),
       principal=st.sampled_from([ALICE, Who(expires_at=NOW - 1),
                                  Who("anonymous", "anonymous"),
                                  Denied(Refusal(401, "expired"), "jwt")]),
       revoked=st.booleans(),
       data=st.sampled_from([request(), post(), post(b"{}"), request(path="/x"),
                             request(origin=None), b"GET / HTTP/1.1\r\n\r\n"]))
def test_one_final_action_and_a_101_only_when_every_check_passed(
    tokens: bool, places: set[str], principal: Who | Denied, revoked: bool,
    data: bytes
) -> None:
    actions = play(answers(tokens=tokens, places=frozenset(places),
                           principal=principal, revoked=revoked, data=data))
    assert sum(isinstance(a, FINAL) for a in actions) == 1
    if isinstance(final(actions), Accept):
        assert tokens
        assert {"pending", "client", "capacity"} <= places
        assert isinstance(principal, Who)
        assert principal.expires_at is None
        anonymous = principal.method == "anonymous"
        assert anonymous or (not revoked and "principal" in places)
        # Every place asked for was granted, in the documented order.
        held = [a.counter if isinstance(a, Hold) else type(a).__name__
                for a in actions if isinstance(a, Hold | Claim | Vouch)]
        assert held == ["pending", "Claim", "capacity"] + (
            [] if anonymous else ["Vouch"])
    if any(isinstance(a, Authenticate) for a in actions):
        assert tokens
        assert {"pending", "client"} <= places
