"""
The PROXY protocol header (versions 1 and 2), read from the first bytes
of a connection.

A TCP load balancer (HAProxy ``send-proxy-v2``, an AWS NLB, nginx
``stream`` with ``proxy_protocol on``) says who the client is in this
header, before the TLS ClientHello.  Whoever can open a TCP connection to
securews can send one, so it is believed only from ``trusted_proxies``
(the wire layer checks that), and it is read here with bounds and
strictness of its own: securews owns this parser rather than leaning on
Twisted's private one, because it is small and everything a client can
claim about itself passes through it.

The specification (haproxy ``doc/proxy-protocol.txt``):

* v1: ``PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\\r\\n``, ASCII,
  at most 107 bytes.  ``UNKNOWN`` may be followed by anything up to CRLF.
* v2: a 12-byte signature, a version/command byte (version 2; command
  ``LOCAL`` or ``PROXY``), a family/protocol byte, a 16-bit length, then
  the addresses (and TLVs, skipped).  ``LOCAL`` (the proxy's own health
  check), ``UNSPEC``, ``UNIX`` and datagram families carry no client
  address that a TCP connection could use.

Pure code: bytes in, a frozen :class:`ProxyHeader` or
:class:`BadProxyHeader` out.
"""

from __future__ import annotations

import ipaddress
import re
import struct

import attrs

__all__ = [
    "MAX_V1_HEADER",
    "MAX_V2_HEADER",
    "V2_SIGNATURE",
    "BadProxyHeader",
    "CarriedAddress",
    "ProxyHeader",
    "read_header",
]

#: The longest v1 header, CRLF included (the specification's bound).
MAX_V1_HEADER = 107
#: The longest v2 header securews reads, TLVs included: the 16-byte fixed
#: part, 216 bytes of UNIX addresses at most, and room for TLVs (ALPN,
#: authority, unique ID, a cloud provider's endpoint ID).
MAX_V2_HEADER = 1024
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_V1_SIGNATURE = b"PROXY "
_CRLF = b"\r\n"
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
#: v2 family/protocol byte -> address block length (TCP over IPv4/IPv6).
_TCP_BLOCKS = {0x11: 12, 0x21: 36}
#: Every other family/protocol byte the specification defines.
_OTHER_BLOCKS = {0x00: 0, 0x01: 0, 0x02: 0, 0x10: 0, 0x12: 12, 0x20: 0, 0x22: 36,
                 0x30: 0, 0x31: 216, 0x32: 216}


class BadProxyHeader(ValueError):
    """
    The connection does not start with an acceptable PROXY header.

    :ivar reason: a fixed category for logs: ``missing`` (no PROXY
        signature), ``too_long`` or ``malformed``.  The header itself is
        never part of the exception.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class CarriedAddress:
    """
    An address a header carries, canonical: compressed IPv6, IPv4-mapped
    IPv6 as IPv4 (as the peer rules compare them).

    :ivar version: 4 or 6, that of ``host`` as written here.
    """

    host: str
    port: int
    version: int


@attrs.frozen
class ProxyHeader:
    """
    A complete, valid PROXY header.

    :ivar version: 1 or 2.
    :ivar source: the client's address, or ``None`` to keep the proxy's own
        (v2 ``LOCAL``, v1 ``UNKNOWN``, families other than TCP/IP).
    :ivar destination: the address the client connected to, or ``None``.
    :ivar size: how many bytes the header took; what follows belongs to
        the wrapped protocol.
    """

    version: int
    source: CarriedAddress | None
    destination: CarriedAddress | None
    size: int


def _canonical(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
               port: int) -> CarriedAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return CarriedAddress(str(ip), port, ip.version)


def _v1_address(text: bytes, port: bytes, version: int) -> CarriedAddress:
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise BadProxyHeader("malformed")
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except ValueError:
        raise BadProxyHeader("malformed") from None
    if ip.version != version or getattr(ip, "scope_id", None):
        raise BadProxyHeader("malformed")
    return _canonical(ip, int(port))


def _read_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(_CRLF, 0, MAX_V1_HEADER)
    if end < 0:
        if len(data) >= MAX_V1_HEADER:
            raise BadProxyHeader("too_long")
        return None
    line = data[:end]
    if not all(0x20 <= c < 0x7F for c in line):
        raise BadProxyHeader("malformed")
    fields = line.split(b" ")
    if fields[1] == b"UNKNOWN":
        # "PROXY UNKNOWN" and anything after it up to CRLF: the proxy could
        # not tell (the specification lets a receiver ignore the rest).
        return ProxyHeader(1, None, None, end + 2)
    versions = {b"TCP4": 4, b"TCP6": 6}
    if len(fields) != 6 or fields[1] not in versions:
        raise BadProxyHeader("malformed")
    version = versions[fields[1]]
    return ProxyHeader(1, _v1_address(fields[2], fields[4], version),
                       _v1_address(fields[3], fields[5], version), end + 2)


def _read_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    version_command, family = data[12], data[13]
    if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
        raise BadProxyHeader("malformed")
    size = 16 + int(struct.unpack("!H", data[14:16])[0])
    if size > MAX_V2_HEADER:
        raise BadProxyHeader("too_long")
    if len(data) < size:
        return None
    block = _TCP_BLOCKS.get(family, _OTHER_BLOCKS.get(family))
    if block is None or size - 16 < block:
        raise BadProxyHeader("malformed")
    if version_command & 0x0F == 0 or family not in _TCP_BLOCKS:
        # LOCAL (the proxy's own connection), or no TCP client address.
        return ProxyHeader(2, None, None, size)
    width = 4 if family == 0x11 else 16
    addresses = data[16:16 + 2 * width]
    sport, dport = struct.unpack("!HH", data[16 + 2 * width:16 + 2 * width + 4])
    kind = ipaddress.IPv4Address if width == 4 else ipaddress.IPv6Address
    return ProxyHeader(2, _canonical(kind(addresses[:width]), sport),
                       _canonical(kind(addresses[width:]), dport), size)


def read_header(data: bytes) -> ProxyHeader | None:
    """
    Read a PROXY header (v1 or v2) from the start of a connection.

    Call it again with more bytes appended until it decides.

    :param data: every byte received so far.
    :returns: the header once complete, or ``None`` while ``data`` is a
        valid beginning of one (never beyond :data:`MAX_V1_HEADER` or
        :data:`MAX_V2_HEADER` bytes).
    :raises BadProxyHeader: as soon as ``data`` cannot begin an acceptable
        header.
    """
    for signature, read in ((_V1_SIGNATURE, _read_v1), (V2_SIGNATURE, _read_v2)):
        common = min(len(data), len(signature))
        if common and data[:common] == signature[:common]:
            return read(data) if len(data) >= len(signature) else None
    if not data:
        return None
    raise BadProxyHeader("missing")
