"""
Attacks on the handshake's credentials: Cross-Site WebSocket Hijacking
with the victim's cookie, a replayed (or stolen) ticket, a token in the
query string that must never reach the server's log, and sessions that
would outlive their credential.
"""

from __future__ import annotations

import functools
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from .harness import (
    AUDIENCE,
    ISSUER,
    JWT_LEEWAY,
    MAX_HEADER_BYTES,
    ORIGIN,
    Addresses,
    Target,
    attack,
    client,
    echo,
    handshake_bound,
    handshakes,
    ticket_post,
)
from .wire import Wires

#: Pages that are not the application, as browsers write their Origin.
FOREIGN_ORIGINS = [
    "https://evil.example",
    "null",  # sandboxed iframes, data: URLs
    "https://app.example.com.evil.example",
    "http://app.example.com",  # same host, other scheme
]


def test_cswsh_foreign_origin_with_a_valid_cookie_gets_403(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    A page on another site opens a WebSocket (or asks for a ticket) and
    the browser attaches the victim's valid session cookie: 403, decided
    by the Origin before any authenticator looks at the cookie.
    """
    target = tls_server
    cookie = {"Cookie": "session=" + target.credentials.cookie("victim")}
    since = target.mark()
    with attack(target, who, "CSWSH", handshake_bound(1)) as bystander:
        # The cookie is valid: from the application's own page it opens a session.
        with client(target, who.attacker, auth=cookie) as ws:
            echo(ws, "the victim's own session")
        for origin in FOREIGN_ORIGINS:
            response = wires(target, who.attacker).upgrade(headers=cookie,
                                                           origin=origin)
            assert response.status == 403
            assert response.header("sec-websocket-accept") is None
            assert response.body == b"403 Forbidden\n"
            bystander.during()
        minted = wires(target, who.attacker).request(
            ticket_post(cookie, origin="https://evil.example"))
        assert minted.status == 403
        assert b"ticket" not in minted.body
    logged = handshakes(target, since, who.attacker, 2 + len(FOREIGN_ORIGINS))
    assert logged == [(101, None)] + [(403, "origin")] * (1 + len(FOREIGN_ORIGINS))
    # The refusals came before authentication: no method was tried.
    methods = [e["method"] for e in target.events(since)
               if e.get("event") == "handshake" and e.get("client") == who.attacker]
    assert methods == ["cookie"] + [None] * (1 + len(FOREIGN_ORIGINS))


def test_replayed_ticket_gets_401(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    A ticket is spent by its first handshake: replayed afterwards (from the
    same address or from the attacker's), 401 ``reused``.
    """
    target = tls_server
    cookie = {"Cookie": "session=" + target.credentials.cookie(f"user-{who.good}")}
    since = target.mark()
    with attack(target, who, "ticket replay", handshake_bound(1)) as bystander:
        issued = wires(target, who.attacker).request(ticket_post(cookie))
        assert issued.status == 201
        assert issued.header("cache-control") == "no-store"
        assert issued.header("access-control-allow-origin") == ORIGIN
        ticket = json.loads(issued.body)["ticket"]
        with client(target, who.attacker, query=f"?ticket={ticket}") as ws:
            echo(ws, "spent the ticket")
            bystander.during()
        for source in (who.attacker, who.other):
            replay = wires(target, source).upgrade(f"/ws?ticket={ticket}")
            assert replay.status == 401
            assert replay.body == b"401 Unauthorized\n"
            bystander.during()
    assert handshakes(target, since, who.attacker, 3) == [
        (201, None), (101, None), (401, "reused")]
    assert handshakes(target, since, who.other, 1) == [(401, "reused")]
    assert ticket not in target.log()


def test_stolen_ticket_is_burnt_by_use_from_elsewhere(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    A ticket intercepted before its owner spends it: from another address
    401 ``wrong_client``, and it is burnt, so the owner's own try is 401
    ``reused`` (ask again) rather than a second chance for the thief.
    """
    target = tls_server
    cookie = {"Cookie": "session=" + target.credentials.cookie(f"user-{who.good}")}
    since = target.mark()
    with attack(target, who, "stolen ticket", handshake_bound(1)) as bystander:
        issued = wires(target, who.attacker).request(ticket_post(cookie))
        ticket = json.loads(issued.body)["ticket"]
        thief = wires(target, who.other).upgrade(f"/ws?ticket={ticket}")
        assert thief.status == 401
        bystander.during()
        owner = wires(target, who.attacker).upgrade(f"/ws?ticket={ticket}")
        assert owner.status == 401
    assert handshakes(target, since, who.other, 1) == [(401, "wrong_client")]
    assert handshakes(target, since, who.attacker, 2) == [(201, None), (401, "reused")]


@functools.cache
def foreign_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def foreign_token(sub: str) -> str:
    """Well-formed, fresh, but signed by a key the server does not trust."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 300, "iss": ISSUER,
                       "aud": AUDIENCE}, foreign_key(), algorithm="RS256")


@pytest.mark.parametrize("server", ["tls_server", "proxy_server"],
                         ids=["json-log", "text-log"])
def test_token_in_query_string_never_reaches_the_log(
    request: pytest.FixtureRequest, server: str, who: Addresses, wires: Wires
) -> None:
    """
    A JWT in the URL, accepted and refused every way a handshake can be
    refused: the token's text is nowhere in the server's output, in
    either log format.
    """
    target: Target = request.getfixturevalue(server)
    credentials = target.credentials
    token = credentials.token(f"query-{who.attacker}")
    expired = credentials.token(f"query-{who.attacker}", lifetime=-120)
    forged = foreign_token(f"query-{who.attacker}")
    attacker = who.in_attacker_net(0) if target.proxied else who.attacker
    xff = target.forwarded(attacker)
    attempts: list[tuple[str, str, dict[str, str], int]] = [
        # path and query, Origin, extra headers, expected status
        (f"/ws?token={expired}", ORIGIN, {}, 401),
        (f"/ws?token={forged}", ORIGIN, {}, 401),
        (f"/ws?token={token}&token={token}", ORIGIN, {}, 401),
        (f"/ws?token={token}", "https://evil.example", {}, 403),
        (f"/elsewhere?token={token}", ORIGIN, {}, 404),
        (f"/ws/{token}", ORIGIN, {}, 404),
        ("/ws", ORIGIN, {"Authorization": f"Bearer {expired}"}, 401),
    ]
    since = target.mark()
    with attack(target, who, "token in query", handshake_bound(1)) as bystander:
        with client(target, who.attacker, forwarded_for=attacker,
                    query=f"?token={token}") as ws:
            echo(ws, "authenticated by the query string")
        for path, origin, headers, status in attempts:
            response = wires(target, who.attacker).upgrade(
                path, headers={**headers, **xff}, origin=origin)
            assert response.status == status, path
            bystander.during()
        # Too large to be read, so logged for the TCP peer (the proxy).
        oversized = wires(target, who.attacker).upgrade(
            f"/ws?token={token}", headers={"X-Pad": "a" * MAX_HEADER_BYTES, **xff})
        assert oversized.status == 431
    logged = handshakes(target, since, attacker, 1 + len(attempts))[:1 + len(attempts)]
    assert [status for status, _ in logged] == [101] + [s for *_, s in attempts]
    assert logged[1:3] == [(401, "expired"), (401, "bad_signature")]
    assert (431, "header_too_large") in handshakes(
        target, since, target.source(who.attacker), 1)
    log = target.log()[since:]
    for secret in (token, expired, forged):
        _, payload, signature = secret.split(".")
        assert payload not in log
        assert signature not in log
        assert signature[:16] not in log
    if target.json_log:
        lines = [line for line in log.splitlines() if line]
        assert all(json.loads(line) for line in lines)


def echo_until_closed(ws: ClientConnection) -> None:
    while True:
        echo(ws, "still good?")
        time.sleep(0.1)


@pytest.mark.parametrize("credential", ["jwt", "cookie", "ticket"])
def test_a_session_ends_when_its_credential_does(
    tls_server: Target, who: Addresses, wires: Wires, credential: str
) -> None:
    """
    A JWT (exp + leeway), a signed cookie (its exp) and a ticket (the
    credential that minted it) valid for two more seconds: the session
    echoes until then and is closed with 4401 "credential expired" at that
    moment, not at max_lifetime.
    """
    target = tls_server
    since = target.mark()
    lifetime = 2.0
    token = target.credentials.token(who.attacker, lifetime=lifetime)
    cookie = target.credentials.cookie(who.attacker, lifetime=lifetime)
    with attack(target, who, f"expiring {credential}", handshake_bound(1)) as bystander:
        if credential == "jwt":
            session = client(target, who.attacker, query=f"?token={token}")
        elif credential == "cookie":
            session = client(target, who.attacker,
                             auth={"Cookie": f"session={cookie}"})
        else:
            issued = wires(target, who.attacker).request(
                ticket_post({"Authorization": f"Bearer {token}"}))
            assert issued.status == 201
            ticket = json.loads(issued.body)["ticket"]
            session = client(target, who.attacker, query=f"?ticket={ticket}")
        with session as ws:
            echo(ws, "while the credential is good")
            bystander.during()
            with pytest.raises(ConnectionClosed) as closed:
                echo_until_closed(ws)
            ended = time.time()
    exp = jwt.decode(cookie if credential == "cookie" else token,
                     options={"verify_signature": False})["exp"]
    expiry = exp + (0 if credential == "cookie" else JWT_LEEWAY)
    print(f"{credential} session closed {ended - expiry:+.2f} s from the "
          "credential's expiry")
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        4401, "credential expired")
    assert expiry - 0.5 <= ended <= expiry + 1.5
    target.wait_event(since, event="session_closed", reason="credential_expired",
                      code=4401)


@pytest.mark.parametrize("where", ["token+bearer", "ticket+token"])
def test_two_credentials_in_one_handshake_are_400(
    tls_server: Target, who: Addresses, wires: Wires, where: str
) -> None:
    """
    A valid token in the query and another in Authorization (or a ticket
    and a token): 400, never "the first that works"; the valid one alone
    still opens a session.
    """
    target = tls_server
    valid = target.credentials.token(who.attacker)
    other = target.credentials.token(f"someone-else-{who.attacker}")
    since = target.mark()
    with attack(target, who, "ambiguous credentials", handshake_bound(1)) as bystander:
        if where == "token+bearer":
            response = wires(target, who.attacker).upgrade(
                f"/ws?token={valid}", headers={"Authorization": f"Bearer {other}"})
        else:
            response = wires(target, who.attacker).upgrade(
                f"/ws?ticket=anything&token={valid}")
        assert response.status == 400
        bystander.during()
        with client(target, who.attacker, query=f"?token={valid}") as ws:
            echo(ws, "one credential")
    assert handshakes(target, since, who.attacker, 2) == [
        (400, "ambiguous_credentials"), (101, None)]
