"""
Attacks on the connection itself, before any request: TLS handshakes
that never send a head, floods of bad connections (and of the log lines
they once wrote), and forged client addresses through TCP load balancers
(X-Forwarded-For inside TLS, PROXY headers that name no client).
"""

from __future__ import annotations

import itertools
import socket
import ssl
import threading
import time
from contextlib import suppress

import pytest

from tests.support.proxyheaders import v1_unknown, v2

from .conftest import PROXY_PROTOCOL_BALANCER
from .harness import (
    ALERT_WINDOW,
    CONNECT_BURST,
    CONNECT_RATE,
    HANDSHAKE_TIMEOUT,
    Addresses,
    Target,
    attack,
    handshake_bound,
    handshakes,
)
from .wire import Wire, Wires

DROPPED = 'securews_connections_dropped_total{reason="connect_rate"}'
ACCEPTED = "securews_connections_accepted_total"


def completes_tls(wire: Wire) -> bool:
    """Whether the server went through a TLS handshake with ``wire`` (False:
    the connection was dropped as it was accepted)."""
    try:
        wire.start_tls()
    except (AssertionError, OSError):
        return False
    return True


def failure_lines(target: Target, since: int, reason: str) -> list[dict[str, object]]:
    return [e for e in target.events(since)
            if e.get("event") == "connection_failures" and e.get("reason") == reason]


def test_tls_handshakes_without_a_head_are_charged_at_accept(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    One address completing TLS handshake after TLS handshake and never
    sending a request head: every connection costs a connect token as it is
    accepted, so the server does at most connect_burst + connect_rate * t
    TLS handshakes for it; the rest are dropped before any TLS work.  They
    are counted and summarised once per window.
    """
    target = tls_server
    since = target.mark()
    before = target.metrics()
    completed = dropped = 0
    with attack(target, who, "TLS without a head", handshake_bound(1)) as bystander:
        began = time.monotonic()
        while time.monotonic() - began < 3:
            wire = wires(target, who.attacker)
            if completes_tls(wire):
                completed += 1
            else:
                dropped += 1
            wire.close()
            if completed + dropped == 2 * CONNECT_BURST:
                bystander.during()
        lasted = time.monotonic() - began
    print(f"TLS without a head: {completed} TLS handshakes done, {dropped} "
          f"dropped at accept in {lasted:.1f} s")
    assert CONNECT_BURST <= completed <= CONNECT_BURST + CONNECT_RATE * lasted + 1
    assert dropped > completed
    time.sleep(ALERT_WINDOW + 0.5)
    after = target.metrics()
    # The bystander's connection is accepted too.
    assert after[ACCEPTED] - before[ACCEPTED] == completed + dropped + 1
    assert after[DROPPED] - before.get(DROPPED, 0) == dropped
    lines = failure_lines(target, since, "connect_rate")
    assert sum(int(e["count"]) for e in lines) == dropped  # type: ignore[call-overload]
    assert len(lines) <= lasted / ALERT_WINDOW + 2
    network = who.attacker.rsplit(".", 1)[0] + ".0/24"
    assert all(e["offenders"] == [{"network": network, "count": e["count"]}]
               for e in lines)
    assert handshakes(target, since, who.attacker, 0) == []


BAD_CONNECTIONS = {
    "plaintext-http": b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "junk": bytes(range(256)) * 4,
    "sslv2-hello": bytes.fromhex("80 2e 01 00 02 00 15 00 00 00 10") + b"\x00" * 37,
}
FLOOD = 2000
SOURCES = 200  # ten connections each: within connect_burst, so all reach TLS
WORKERS = 8


def _bad_connections(target: Target, sources: list[str], payload: bytes,
                     errors: list[str]) -> None:
    for source in sources:
        for _ in range(FLOOD // SOURCES):
            try:
                with socket.socket() as sock:
                    sock.settimeout(HANDSHAKE_TIMEOUT + 2)
                    sock.bind((source, 0))
                    sock.connect(("127.0.0.1", target.port))
                    sock.sendall(payload)
                    with suppress(ConnectionResetError):
                        while sock.recv(4096):
                            pass
            except OSError as e:
                errors.append(repr(e))
                return


@pytest.mark.parametrize("kind", list(BAD_CONNECTIONS))
def test_a_flood_of_bad_connections_writes_a_handful_of_lines(
    tls_server: Target, who: Addresses, kind: str
) -> None:
    """
    2,000 connections that are not TLS (plain HTTP, junk, an SSLv2 hello)
    from 200 addresses: each fails its TLS handshake and is counted, and
    the log gets one INFO summary per window (a client-caused TLS failure is
    never a warning or an error), not a line per connection.
    """
    target = tls_server
    sources = [f"127.{100 + list(BAD_CONNECTIONS).index(kind)}.{i // 250}."
               f"{i % 250 + 1}" for i in range(SOURCES)]
    before = target.metrics()
    errors: list[str] = []
    with attack(target, who, f"{kind} flood", handshake_bound(WORKERS)) as bystander:
        since = target.mark()
        began = time.monotonic()
        threads = [threading.Thread(target=_bad_connections, args=(
            target, sources[i::WORKERS], BAD_CONNECTIONS[kind], errors))
            for i in range(WORKERS)]
        for thread in threads:
            thread.start()
        bystander.during()
        for thread in threads:
            thread.join(120)
        lasted = time.monotonic() - began
    assert not errors, errors[:5]
    time.sleep(ALERT_WINDOW + 0.5)
    failures = 'securews_connections_dropped_total{reason="tls_failure"}'
    counted = target.metrics()[failures] - before.get(failures, 0)
    events = target.events(since)
    summaries = [e for e in events if e.get("event") == "connection_failures"]
    other = [e for e in events if e.get("event") not in (
        "connection_failures", "alert", "handshake")]
    print(f"{kind}: {FLOOD} connections in {lasted:.1f} s, {counted:.0f} TLS "
          f"failures counted, {len(events)} log lines: "
          f"{[(e['event'], e.get('reason'), e.get('count')) for e in events]}")
    assert counted == FLOOD
    assert sum(int(e["count"]) for e in summaries  # type: ignore[call-overload]
               if e["reason"] == "tls_failure") == FLOOD
    assert {e["level"] for e in summaries} == {"info"}
    assert other == []
    assert len(events) <= 2 * (lasted / ALERT_WINDOW + 2)


def test_forged_forwarded_for_through_tls_passthrough_is_ignored(
    passthrough_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    A TCP load balancer in trusted_proxies passes TLS through: the
    X-Forwarded-For inside is the client's own word.  Sixty handshakes with
    sixty forged addresses through it are one client (the balancer's
    address): the first connect_burst answered, the rest dropped at accept;
    no forged address reaches the log.
    """
    target = passthrough_server
    assert target.balancer is not None
    since = target.mark()
    forged = [f"198.51.{n // 250}.{n % 250 + 1}" for n in range(60)]
    answers: list[int | None] = []
    with attack(target, who, "forged X-Forwarded-For", handshake_bound(1)) as bystander:
        for address in forged:
            wire = wires(target, target.balancer)
            try:
                answers.append(wire.upgrade(headers={"X-Forwarded-For": address})
                               .status)
            except (AssertionError, OSError):
                answers.append(None)
            wire.close()
            if len(answers) == CONNECT_BURST:
                bystander.during()
    print(f"forged X-Forwarded-For: {answers}")
    assert answers[:CONNECT_BURST] == [401] * CONNECT_BURST
    assert answers.count(None) >= len(forged) - CONNECT_BURST - 2
    logged = handshakes(target, since, target.balancer, CONNECT_BURST)
    assert {status for status, _ in logged} == {401}
    assert not any(address in target.log()[since:] for address in forged)


#: What a trusted load balancer may send that names no client, or names
#: another trusted proxy: the connection is then the balancer's own.
NO_CLIENT = {
    "v2-local": v2(command=0),
    "v2-unspec": v2(family_proto=0x00),
    "v1-unknown": v1_unknown(),
    "carried-trusted-proxy": v2(PROXY_PROTOCOL_BALANCER),
}


def test_proxy_headers_naming_no_client_make_the_balancers_own_connection(
    proxy_protocol_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    PROXY headers without a client address (v2 LOCAL, v2 UNSPEC, v1
    UNKNOWN), or carrying a trusted proxy's, followed by a forged
    X-Forwarded-For: X-Forwarded-For is never read after a PROXY header,
    so every such connection is the balancer's own, limited as one client.
    """
    target = proxy_protocol_server
    balancer = target.balancer
    assert balancer is not None
    since = target.mark()
    answers: list[tuple[str, int | None]] = []
    kinds = itertools.cycle(NO_CLIENT.items())
    with attack(target, who, "PROXY headers naming no client",
                handshake_bound(1)) as bystander:
        for n in range(40):
            kind, header = next(kinds)
            wire = wires(target, balancer, proxy_header=header)
            try:
                status: int | None = wire.upgrade(
                    headers={"X-Forwarded-For": f"198.51.100.{n + 1}"}).status
            except (AssertionError, OSError, ssl.SSLError):
                status = None
            answers.append((kind, status))
            wire.close()
            if n == CONNECT_BURST:
                bystander.during()
    print(f"PROXY headers naming no client: {answers}")
    assert [status for _, status in answers[:CONNECT_BURST]] == [401] * CONNECT_BURST
    assert {kind for kind, _ in answers[:CONNECT_BURST]} == set(NO_CLIENT)
    assert [status for _, status in answers].count(None) >= 40 - CONNECT_BURST - 2
    logged = handshakes(target, since, balancer, CONNECT_BURST)
    assert {status for status, _ in logged} == {401}
    assert "198.51.100." not in target.log()[since:]
