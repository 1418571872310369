"""
Attacks on the server's capacity before any session exists: connection
floods (from one address, and from one IPv6 /64 behind the trusted
proxy), handshake floods, slowloris on the TLS handshake and on the
request head, and header floods.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import time
from contextlib import ExitStack, suppress

import pytest

from .harness import (
    ALERT_WINDOW,
    CONNECT_BURST,
    CONNECT_RATE,
    CONNECTIONS_PER_IP,
    HANDSHAKE_TIMEOUT,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    SESSIONS_PER_PRINCIPAL,
    Addresses,
    KiB,
    Target,
    attack,
    bearer,
    client,
    echo,
    handshake_bound,
    handshakes,
    sessions_bound,
)
from .wire import Wire, Wires, upgrade_request

EXTRA = 2  # attacking connections beyond a per-client limit


def test_connection_flood_from_one_address_gets_429(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    Sessions beyond connections_per_ip from one address: 429 with
    Retry-After; the address's open sessions and every other address
    are still served.
    """
    target = tls_server
    since = target.mark()
    bound = sessions_bound(CONNECTIONS_PER_IP + EXTRA)
    with attack(target, who, "connection flood", bound) as bystander, \
            ExitStack() as stack:
        held = [stack.enter_context(client(target, who.attacker))
                for _ in range(CONNECTIONS_PER_IP)]
        bystander.during()
        for _ in range(EXTRA):
            response = wires(target, who.attacker).upgrade(
                headers=bearer(target, who.attacker))
            assert response.status == 429
            assert response.header("retry-after") == "1"
        bystander.during()
        with client(target, who.other) as ws:
            echo(ws, "another address")
        for ws in held:
            echo(ws, "still served")
    assert handshakes(target, since, who.attacker, CONNECTIONS_PER_IP + EXTRA) == (
        [(101, None)] * CONNECTIONS_PER_IP + [(429, "too_many_connections")] * EXTRA)


def test_one_account_from_many_addresses_gets_429_past_its_sessions(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    One JWT (sub=hog) spread over several addresses, each under its own
    limits: past sessions_per_principal, 429 with Retry-After; another
    account is served, from the same addresses too.
    """
    target = tls_server
    since = target.mark()
    sources = who.flooders(SESSIONS_PER_PRINCIPAL // 2 + 1)
    hog = bearer(target, f"hog-{who.attacker}")
    with attack(target, who, "one account", sessions_bound(SESSIONS_PER_PRINCIPAL + 1)
                ) as bystander, ExitStack() as stack:
        held = [stack.enter_context(client(target, source, auth=hog))
                for source in sources[:-1] for _ in range(2)]
        assert len(held) == SESSIONS_PER_PRINCIPAL
        bystander.during()
        response = wires(target, sources[-1]).upgrade(headers=hog)
        assert response.status == 429
        assert response.header("retry-after") == "1"
        with client(target, sources[0]) as ws:
            echo(ws, "another account from the hog's address")
        held.pop().close()
        time.sleep(0.2)
        with client(target, sources[-1], auth=hog) as ws:
            echo(ws, "a place was freed")
    assert handshakes(target, since, sources[-1], 2) == [
        (429, "too_many_sessions"), (101, None)]


def test_handshake_flood_from_one_address_is_dropped_at_accept(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    Handshakes faster than connect_rate past connect_burst: dropped as they
    are accepted (no TLS, no answer), before any authenticator runs.
    """
    target = tls_server
    since = target.mark()
    answers: list[int | None] = []
    with attack(target, who, "handshake flood", handshake_bound(1)) as bystander:
        began = time.monotonic()
        while answers.count(None) < 3:
            assert len(answers) < 100, answers
            wire = wires(target, who.attacker)
            try:
                answers.append(wire.upgrade().status)  # no credential at all
            except (AssertionError, OSError):
                answers.append(None)
            wire.close()
            if len(answers) == CONNECT_BURST:
                bystander.during()
        lasted = time.monotonic() - began
    print(f"handshake flood: {answers}")
    assert answers[:CONNECT_BURST] == [401] * CONNECT_BURST
    served = len(answers) - answers.count(None)
    assert served <= CONNECT_BURST + CONNECT_RATE * lasted + 1
    logged = handshakes(target, since, who.attacker, served)
    assert {reason for _, reason in logged} == {"no_credentials"}


def test_connection_flood_from_one_ipv6_64_behind_the_proxy_gets_429(
    proxy_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    Behind the trusted proxy, clients rotating addresses inside one /64
    (``X-Forwarded-For``) share one budget: sessions beyond
    connections_per_ip and handshakes beyond connect_burst get 429 (the
    latter, a flood's answers, logged only in aggregate), while an address
    in the neighbouring /64 is served.
    """
    target = proxy_server
    net = who.attacker_net
    neighbour = str(ipaddress.IPv6Network(
        (int(net.network_address) + 2**64, 64))[1])
    assert ipaddress.IPv6Address(neighbour) not in net
    addresses = (who.in_attacker_net(i) for i in itertools.count())
    since = target.mark()
    tried: list[str] = []
    bound = sessions_bound(CONNECTIONS_PER_IP + EXTRA)
    with attack(target, who, "IPv6 /64 flood", bound) as bystander, \
            ExitStack() as stack:
        held = {a: stack.enter_context(client(target, who.attacker, forwarded_for=a))
                for a in itertools.islice(addresses, CONNECTIONS_PER_IP)}
        bystander.during()
        # Each address is new, and each attempt takes a connect token: the
        # first find the /64's sessions all taken, the later an empty bucket.
        for address in itertools.islice(addresses, 3 * CONNECT_BURST):
            response = wires(target, who.attacker).upgrade(
                headers={**bearer(target, address), **target.forwarded(address)})
            assert response.status == 429
            assert response.header("retry-after") is not None
            tried.append(address)
            if len(tried) == EXTRA:
                bystander.during()
        with client(target, who.attacker, forwarded_for=neighbour) as ws:
            echo(ws, "the next /64 is another client")
        for ws in held.values():
            echo(ws, "still served")
    for address in held:
        assert handshakes(target, since, address, 1) == [(101, None)]
    time.sleep(ALERT_WINDOW + 0.5)
    log = target.log()[since:]
    over_connections = [a for a in tried if f"from {a} " in log]
    assert over_connections, "the /64's places were never the reason"
    for address in over_connections:
        assert handshakes(target, since, address, 1) == [
            (429, "too_many_connections")]
    summarised = sum(int(n) for n in re.findall(
        r"(\d+) requests answered 429: over the client's connect rate", log))
    assert summarised == len(tried) - len(over_connections) > 0
    assert handshakes(target, since, neighbour, 1) == [(101, None)]


def dropped_for_pending(target: Target, since: int, client: str) -> int:
    """How many of ``client``'s connections the aggregated log lines say were
    dropped for too many unfinished handshakes (one line per window, never
    one per connection)."""
    network = client.rsplit(".", 1)[0] + ".0/24"
    target.wait_event(since, timeout=ALERT_WINDOW + 2, event="connection_failures",
                      reason="too_many_pending")
    time.sleep(ALERT_WINDOW + 0.2)  # the window still open, if any, ends
    lines = [e for e in target.events(since)
             if e.get("event") == "connection_failures"
             and e.get("reason") == "too_many_pending"]
    assert not [e for e in target.events(since) if e.get("event") == "connection"]
    return sum(o["count"] for e in lines for o in e["offenders"]
               if o["network"] == network)


def dribble(wires: list[Wire], data: list[bytes], limit: float) -> None:
    """Send each wire its ``data`` a byte every 0.1 s until the server
    drops it (at most ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    position = 0
    while not all(wire.closed for wire in wires):
        assert time.monotonic() < deadline, "still open"
        for wire, text in zip(wires, data, strict=True):
            if not wire.closed and position < len(text):
                with suppress(OSError):
                    wire.sock.sendall(text[position:position + 1])
        position += 1
        step = time.monotonic() + 0.1
        for wire in wires:
            wire.pump(max(0.0, step - time.monotonic()))


def assert_dropped_in_time(held: list[Wire]) -> None:
    """Dropped, unanswered, within handshake_timeout + 1 s of connecting."""
    for wire in held:
        wire.wait_closed(HANDSHAKE_TIMEOUT + 2)
        assert wire.closed_at is not None
        lasted = wire.closed_at - wire.started
        print(f"dropped after {lasted:.2f} s")
        assert HANDSHAKE_TIMEOUT - 0.1 <= lasted <= HANDSHAKE_TIMEOUT + 1
        assert wire.received == b""


@pytest.mark.parametrize("stall", ["silent", "half-hello", "dribble"])
def test_slowloris_on_the_tls_handshake_is_dropped(
    tls_server: Target, who: Addresses, wires: Wires, stall: str
) -> None:
    """
    Connections that never finish TLS (nothing sent, half a ClientHello,
    a byte every 0.1 s): dropped within handshake_timeout + 1 s, sent
    nothing; beyond connections_per_ip unfinished handshakes from one
    address, new connections are dropped at once.
    """
    target = tls_server
    since = target.mark()
    bound = handshake_bound(CONNECTIONS_PER_IP + EXTRA)
    with attack(target, who, f"slowloris TLS {stall}", bound) as bystander:
        held = [wires(target, who.attacker) for _ in range(CONNECTIONS_PER_IP)]
        hellos = [wire.client_hello() for wire in held]
        if stall == "half-hello":
            for wire, hello in zip(held, hellos, strict=True):
                wire.sock.sendall(hello[:len(hello) // 2])
        extra = [wires(target, who.attacker) for _ in range(EXTRA)]
        for wire in extra:
            wire.wait_closed(HANDSHAKE_TIMEOUT + 1)
            assert wire.raw == b""
        bystander.during()
        if stall == "dribble":
            dribble(held, hellos, HANDSHAKE_TIMEOUT + 2)
        assert_dropped_in_time(held)
        assert all(wire.raw == b"" for wire in held)
    assert dropped_for_pending(target, since, who.attacker) == EXTRA


@pytest.mark.parametrize("stall", ["byte-by-byte", "unfinished-head"])
def test_slowloris_on_the_request_head_is_dropped(
    tls_server: Target, who: Addresses, wires: Wires, stall: str
) -> None:
    """
    TLS done, then the request head a byte every 0.1 s, or all of it but
    the final CRLF: dropped without an answer within handshake_timeout +
    1 s of connecting.
    """
    target = tls_server
    request = upgrade_request(headers=bearer(target, who.attacker))
    since = target.mark()
    bound = handshake_bound(CONNECTIONS_PER_IP + EXTRA)
    with attack(target, who, f"slowloris head {stall}", bound) as bystander:
        held = [wires(target, who.attacker) for _ in range(CONNECTIONS_PER_IP)]
        for wire in held:
            wire.start_tls()
            if stall == "unfinished-head":
                wire.send(request[:-2])
        extra = [wires(target, who.attacker) for _ in range(EXTRA)]
        for wire in extra:
            wire.wait_closed(HANDSHAKE_TIMEOUT + 1)
        bystander.during()
        if stall == "byte-by-byte":
            deadline = time.monotonic() + HANDSHAKE_TIMEOUT + 2
            for i in itertools.count():
                open_ = [wire for wire in held if not wire.closed]
                if not open_:
                    break
                assert time.monotonic() < deadline, "still open"
                for wire in open_:
                    with suppress(OSError):
                        wire.send(request[i:i + 1])
                step = time.monotonic() + 0.1
                for wire in open_:
                    wire.pump(max(0.0, step - time.monotonic()))
        assert_dropped_in_time(held)
    assert dropped_for_pending(target, since, who.attacker) == EXTRA
    assert handshakes(target, since, who.attacker, 0) == []


HEADER_FLOODS = {
    "many-headers": "".join(f"X-Flood-{i}: {i}\r\n" for i in range(MAX_HEADERS + 1)),
    "huge-header": "X-Flood: " + "a" * MAX_HEADER_BYTES + "\r\n",
}


@pytest.mark.parametrize("flood", [*HEADER_FLOODS, "endless"])
def test_header_flood_gets_431(
    tls_server: Target, who: Addresses, wires: Wires, flood: str
) -> None:
    """
    A request head with more than max_headers lines, more than
    max_header_bytes, or that never ends (16 MiB of header lines): 431,
    and nothing more is read into memory.
    """
    target = tls_server
    since = target.mark()
    start = upgrade_request(headers=bearer(target, who.attacker))[:-2]
    with attack(target, who, f"header flood {flood}", handshake_bound(1)) as bystander:
        wire = wires(target, who.attacker)
        wire.start_tls()
        if flood == "endless":
            lines = "".join(f"X-Flood-{i}: {'a' * 50}\r\n" for i in range(1000))
            chunk = lines.encode()
            wire.stream([start, chunk])
            bystander.during()
            wire.stream(itertools.repeat(chunk, 16 * 1024 * KiB // len(chunk)))
        else:
            wire.send(start + HEADER_FLOODS[flood].encode() + b"\r\n")
            bystander.during()
        response = wire.response()
    assert response.status == 431
    assert response.body == b"431 Request Header Fields Too Large\n"
    assert handshakes(target, since, who.attacker, 1) == [(431, "header_too_large")]
