"""
PROXY protocol headers (v1 and v2) as a load balancer writes them, built
by hand from the specification.  Shared by test_proxy_protocol.py and the
attack suite (tests/attacks/).
"""

from __future__ import annotations

import socket
import ssl
import struct

from securews.rules.proxy_header import ProxyHeader

__all__ = ["V2_SIGNATURE", "carried", "client_hello", "v1", "v1_unknown", "v2"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, destination: str | None = None, sport: int = 56324,
       dport: int = 443) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    if destination is None:
        destination = "2001:db8::443" if family == "TCP6" else "192.0.2.1"
    return f"PROXY {family} {source} {destination} {sport} {dport}\r\n".encode()


def v1_unknown() -> bytes:
    """A v1 header that names no client (the proxy could not tell)."""
    return b"PROXY UNKNOWN\r\n"


def v2(source: str | None = None, destination: str | None = None, *,
       sport: int = 56324, dport: int = 443, command: int = 1,
       family_proto: int | None = None, tlvs: bytes = b"") -> bytes:
    """A v2 header: PROXY (1) or LOCAL (0); TCP over IPv4/IPv6, or UNSPEC."""
    block = b""
    if source is not None:
        v6 = ":" in source
        kind = socket.AF_INET6 if v6 else socket.AF_INET
        destination = destination or ("2001:db8::443" if v6 else "192.0.2.1")
        block = (socket.inet_pton(kind, source) + socket.inet_pton(kind, destination)
                 + struct.pack("!HH", sport, dport))
        if family_proto is None:
            family_proto = 0x21 if v6 else 0x11
    block += tlvs
    return (V2_SIGNATURE + bytes([0x20 | command, family_proto or 0])
            + struct.pack("!H", len(block)) + block)


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (what a client sends where no
    PROXY header came first)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing,
                                                server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("a TLS handshake completed with no server")


def carried(header: ProxyHeader | None) -> tuple[str, int] | None:
    """The client address and port a parsed header carries."""
    assert header is not None
    source = header.source
    return None if source is None else (source.host, source.port)
