"""The PROXY header reader: v1 and v2, bounded, strict, decided early."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securews.rules.proxy_header import (
    MAX_V1_HEADER,
    MAX_V2_HEADER,
    BadProxyHeader,
    read_header,
)
from tests.support.proxyheaders import V2_SIGNATURE, carried, client_hello, v1, v2

# -- the pure reader ------------------------------------------------------


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_v1_tcp4_header_gives_its_source(ip: ipaddress.IPv4Address, port: int) -> None:
    """A v1 TCP4 header is read whole, with the source address and port."""
    data = v1(str(ip), sport=port)
    header = read_header(data + b"\x16\x03")
    assert carried(header) == (str(ip), port)
    assert header is not None
    assert (header.version, header.size) == (1, len(data))


@given(st.ip_addresses(v=6), st.integers(0, 65535))
def test_v1_tcp6_header_gives_its_canonical_source(
    ip: ipaddress.IPv6Address, port: int
) -> None:
    """TCP6 sources come out canonical; IPv4-mapped ones as IPv4."""
    header = read_header(v1(ip.exploded, sport=port))
    want = ip.ipv4_mapped or ip
    assert carried(header) == (str(want), port)


@given(st.ip_addresses(), st.integers(0, 65535), st.binary(max_size=64))
def test_v2_header_gives_its_source(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, tlvs: bytes
) -> None:
    """A v2 PROXY header over TCP4/TCP6, TLVs skipped, gives the source."""
    data = v2(str(ip), sport=port, tlvs=tlvs)
    header = read_header(data + b"rest")
    want = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    assert carried(header) == (str(want or ip), port)
    assert header is not None
    assert (header.version, header.size) == (2, len(data))


@pytest.mark.parametrize("data", [
    v1("203.0.113.7"), v1("2001:db8::7"), v2("203.0.113.7"), v2("2001:db8::7"),
    v2(command=0), b"PROXY UNKNOWN\r\n",
])
def test_every_prefix_of_a_header_asks_for_more(data: bytes) -> None:
    """However the header is split, nothing is decided before its last byte."""
    for end in range(len(data)):
        assert read_header(data[:end]) is None
    assert read_header(data) is not None


@pytest.mark.parametrize("data", [
    v2(command=0),
    v2("203.0.113.7", command=0),
    v2(family_proto=0x00),
    v2("203.0.113.7", family_proto=0x12),
    v2(family_proto=0x31, tlvs=b"/run/a".ljust(108, b"\0") * 2),
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ::1 ::2 1 2\r\n",
])
def test_headers_without_a_tcp_source_keep_the_proxy_address(data: bytes) -> None:
    """LOCAL, UNKNOWN, UNSPEC, UDP and UNIX carry no client address to use."""
    header = read_header(data)
    assert header is not None
    assert header.source is None
    assert header.size == len(data)


@pytest.mark.parametrize(("data", "reason"), [
    (client_hello(), "missing"),
    (b"GET /ws HTTP/1.1\r\n", "missing"),
    (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "missing"),
    (b"PROXY " + b"A" * MAX_V1_HEADER, "too_long"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2" + b" " * 80 + b"\r\n", "too_long"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2  \r\n", "malformed"),
    (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_HEADER), "too_long"),
    (b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", "malformed"),
    (b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n", "malformed"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 70000 2\r\n", "malformed"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 2\r\n", "malformed"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2 3\r\n", "malformed"),
    (b"PROXY TCP4 203.0.113.07 192.0.2.1 1 2\r\n", "malformed"),
    (b"PROXY TCP4 example.com 192.0.2.1 1 2\r\n", "malformed"),
    (b"PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n", "malformed"),
    (b"PROXY TCP4 203.0.113.7\t192.0.2.1 1 2\r\n", "malformed"),
    ("PROXY TCP4 203.0.113.\u0667 192.0.2.1 1 2\r\n".encode(), "malformed"),
    (b"PROXY UDP4 203.0.113.7 192.0.2.1 1 2\r\n", "malformed"),
    (b"PROXY\r\n", "missing"),
    (V2_SIGNATURE + b"\x11\x11\x00\x00", "malformed"),
    (V2_SIGNATURE + b"\x22\x11\x00\x00", "malformed"),
    (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x7f\x00\x00\x01", "malformed"),
    (V2_SIGNATURE + b"\x21\x41\x00\x00", "malformed"),
    (V2_SIGNATURE + b"\x21\x13\x00\x0c" + b"\x00" * 12, "malformed"),
])
def test_bad_headers_are_refused_with_a_category(data: bytes, reason: str) -> None:
    """Missing, oversized and malformed headers raise BadProxyHeader, decided early."""
    with pytest.raises(BadProxyHeader) as raised:
        read_header(data)
    assert raised.value.reason == reason
    assert str(raised.value) == reason


def test_oversized_v2_length_is_refused_from_the_fixed_part() -> None:
    """A v2 length beyond the cap is refused before any of the body arrives."""
    size = MAX_V2_HEADER - 16
    assert read_header(v2(tlvs=b"\0" * size)[:16]) is None
    with pytest.raises(BadProxyHeader):
        read_header(v2(tlvs=b"\0" * (size + 1))[:16])


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_bad_proxy_header(data: bytes) -> None:
    """Whatever the peer sends, the reader returns or raises BadProxyHeader."""
    with contextlib.suppress(BadProxyHeader):
        read_header(data)


@given(st.sampled_from([b"PROXY ", V2_SIGNATURE + b"\x21"]), st.binary(max_size=300))
def test_near_miss_headers_raise_only_bad_proxy_header(
    prefix: bytes, tail: bytes
) -> None:
    """Data that starts like a header, then anything: no other exception."""
    with contextlib.suppress(BadProxyHeader):
        read_header(prefix + tail)


@given(st.binary(max_size=2000))
def test_undecided_input_is_always_bounded(data: bytes) -> None:
    """The reader never asks for more beyond the largest header it accepts."""
    for prefix in (b"PROXY ", V2_SIGNATURE + b"\x21\x11"):
        try:
            undecided = read_header(prefix + data) is None
        except BadProxyHeader:
            continue
        if undecided:
            assert len(prefix + data) < max(MAX_V1_HEADER, MAX_V2_HEADER)


