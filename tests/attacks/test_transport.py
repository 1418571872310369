"""
Attacks on the transport: a client that only speaks TLS 1.0 or 1.1,
plaintext HTTP sent to the TLS port, and a browser page reading the
admin listener through DNS rebinding.
"""

from __future__ import annotations

import http.client
import ssl
from contextlib import suppress

import pytest

from .harness import HANDSHAKE_TIMEOUT, Addresses, Target, attack, handshake_bound
from .wire import Wires, upgrade_request

ALERT, FATAL, PROTOCOL_VERSION = 0x15, 2, 70


def tls_records(data: bytes) -> list[tuple[int, bytes]]:
    """``(content type, fragment)`` of each complete TLS record in ``data``."""
    records, i = [], 0
    while len(data) - i >= 5:
        length = int.from_bytes(data[i + 3:i + 5], "big")
        if len(data) - i - 5 < length:
            break
        records.append((data[i], data[i + 5:i + 5 + length]))
        i += 5 + length
    assert i == len(data), f"not TLS records: {data[:40]!r}"
    return records


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(("version", "wire_version"), [
    (ssl.TLSVersion.TLSv1, b"\x03\x01"), (ssl.TLSVersion.TLSv1_1, b"\x03\x02"),
], ids=["TLSv1.0", "TLSv1.1"])
def test_tls_1_0_and_1_1_clients_are_refused(
    tls_server: Target, who: Addresses, wires: Wires, version: ssl.TLSVersion,
    wire_version: bytes,
) -> None:
    """
    A client offering at most TLS 1.0 (or 1.1), with every cipher it has:
    the server answers a fatal protocol_version alert and drops it.
    """
    target = tls_server
    # SECLEVEL=0: OpenSSL's default level will not offer these versions.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(target.ca_cert)
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with attack(target, who, f"{version.name} client", handshake_bound(1)) as bystander:
        for _ in range(3):
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
            with suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            hello = outgoing.read()
            # The ClientHello's highest version (after the record and
            # handshake headers) really is the old one.
            assert hello[9:11] == wire_version
            wire = wires(target, who.attacker)
            wire.sock.sendall(hello)
            wire.wait_closed(HANDSHAKE_TIMEOUT + 1)
            [(kind, alert)] = tls_records(bytes(wire.raw))
            assert (kind, alert[0], alert[1]) == (ALERT, FATAL, PROTOCOL_VERSION)
            incoming.write(bytes(wire.raw))
            with pytest.raises(ssl.SSLError, match=r"(?i)version"):
                tls.do_handshake()
            bystander.during()


PLAINTEXT = {
    "websocket-upgrade": upgrade_request(),
    "http-1.0": b"GET / HTTP/1.0\r\n\r\n",
    "status-page-redirect":
        b"GET /ws?redirect=https://evil.example/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}


@pytest.mark.parametrize("request_", list(PLAINTEXT))
def test_plaintext_http_on_the_tls_port_gets_no_http_answer(
    tls_server: Target, who: Addresses, wires: Wires, request_: str
) -> None:
    """
    Plain HTTP to the wss:// port: no HTTP response (nothing the request
    could have shaped), at most a TLS alert, and the connection is dropped.
    """
    target = tls_server
    with attack(target, who, f"plaintext {request_}", handshake_bound(1)) as bystander:
        for _ in range(3):
            wire = wires(target, who.attacker)
            wire.sock.sendall(PLAINTEXT[request_])
            wire.wait_closed(HANDSHAKE_TIMEOUT + 1)
            print(f"answer to plaintext: {bytes(wire.raw)!r}")
            assert b"HTTP" not in wire.raw
            assert all(kind == ALERT for kind, _ in tls_records(bytes(wire.raw)))
            bystander.during()


def admin_get(target: Target, host: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", target.admin_port, timeout=5)
    try:
        conn.putrequest("GET", "/metrics", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_dns_rebinding_cannot_read_the_admin_listener(
    tls_server: Target, who: Addresses
) -> None:
    """
    A page at http://rebind.evil.example:PORT whose name now resolves to
    127.0.0.1 asks for /metrics: its Host names no address of the listener,
    so it gets 421 and no metric; a scrape by address is served.
    """
    target = tls_server
    with attack(target, who, "DNS rebinding", handshake_bound(1)) as bystander:
        status, body = admin_get(target, f"rebind.evil.example:{target.admin_port}")
        bystander.during()
    assert (status, body) == (421, b"421 Misdirected Request\n")
    status, body = admin_get(target, f"127.0.0.1:{target.admin_port}")
    assert status == 200
    assert b"securews_connections_accepted_total" in body


def test_a_refused_connection_is_read_no_more(
    tls_server: Target, who: Addresses, wires: Wires
) -> None:
    """
    404, then tens of MiB pushed behind it: the server answered and reads
    (and decrypts) nothing more, so the push stalls on full kernel buffers
    within a few MiB instead of costing the server CPU until close_timeout.
    """
    target = tls_server
    with attack(target, who, "stream after a refusal", handshake_bound(1)) as bystander:
        wire = wires(target, who.attacker)
        assert wire.upgrade("/nope").status == 404
        chunk = b"x" * 65536
        wire.sock.settimeout(1.0)
        pushed = 0
        with suppress(TimeoutError, ssl.SSLError, OSError):
            while pushed < 64 * 2**20:
                wire.send(chunk)
                pushed += len(chunk)
        bystander.during()
    print(f"pushed {pushed / 2**20:.1f} MiB behind a 404 before the push stalled")
    assert pushed < 16 * 2**20
