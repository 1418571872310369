"""
Which address a connection comes from, and which rate-limit key it shares.

Three deployments, three sources of the client address (see
:func:`accepted_peer`): the TCP peer itself; the PROXY header a trusted
TCP load balancer sent before TLS; or ``X-Forwarded-For`` from a trusted
proxy that terminated TLS in front of securews.  Only the last reads a
header, and only when no one but that proxy can have written it.

Behind a reverse proxy the TCP peer is the proxy; the client is in
``X-Forwarded-For``, which every proxy extends on the right with the
address it received the request from.  Only the entries that trusted
proxies appended can be believed, so the list is read from the right,
past trusted proxies, up to the first address that is not one: the
"rightmost untrusted" rule.  Whatever a client writes itself ends up to
the left of that address and is never read.

Pure code: no I/O, no reactor.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator, Sequence

import attrs

__all__ = [
    "LOCAL_KEY",
    "MAX_FORWARDED_ENTRIES",
    "Peer",
    "accepted_peer",
    "client_address",
    "forwarded_peer",
    "network_key",
    "parse_forwarded_entry",
    "peer_is_trusted",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``X-Forwarded-For`` entries looked at, from the right, at most.
MAX_FORWARDED_ENTRIES = 32
#: The key of every peer that is not an IP address (UNIX sockets).
LOCAL_KEY = "local"

# Long enough for "[ipv6%zone]:port"; anything longer is not an address.
_MAX_ENTRY_LENGTH = 100
_BRACKETED = re.compile(r"\[([^\[\]]+)\](?::([0-9]{1,5}))?")
_V4_PORT = re.compile(r"([0-9.]+):([0-9]{1,5})")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: An IPv4 address exactly as ``str(IPv4Address(...))`` writes it (what
#: the socket layer reports): already normalised, its own network key.
_CANONICAL_V4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def _normalise(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 becomes IPv4; an IPv6 zone (``%eth0``) is dropped."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id is not None:
            return ipaddress.IPv6Address(int(ip))
    return ip


def parse_forwarded_entry(text: str) -> IPAddress | None:
    """
    Parse one ``X-Forwarded-For`` entry (already stripped of spaces).

    Accepted, and nothing else: ``a.b.c.d``, ``a.b.c.d:port``, ``v6``,
    ``[v6]`` and ``[v6]:port``, where ``v6`` may carry a ``%zone`` and
    ``port`` is 1 to 65535.  The port and zone are dropped and an
    IPv4-mapped address becomes IPv4.

    :returns: the address, or ``None`` for anything else (``unknown``,
        RFC 7239 obfuscated identifiers, host names, ``v6:port`` without
        brackets, which is ambiguous).
    """
    if not text or len(text) > _MAX_ENTRY_LENGTH or not text.isascii():
        return None
    port = None
    bracketed = _BRACKETED.fullmatch(text)
    if bracketed is not None:
        host, port = bracketed.groups()
    elif text.startswith("["):
        return None
    else:
        v4_port = _V4_PORT.fullmatch(text)
        host, port = v4_port.groups() if v4_port else (text, None)
    if port is not None and not 0 < int(port) <= 65535:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if bracketed is not None and ip.version != 6:
        return None
    return _normalise(ip)


def _trusted(ip: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(ip in network for network in trusted)


def peer_is_trusted(peer: str, trusted: Sequence[IPNetwork]) -> bool:
    """
    Whether the TCP peer is a trusted proxy, by the same rule as
    :func:`client_address` (so ``::ffff:10.0.0.1`` is ``10.0.0.1``).
    """
    if not trusted:  # the usual case: nothing to parse
        return False
    ip = parse_forwarded_entry(peer)
    return ip is not None and _trusted(ip, trusted)


def _from_right(lines: Sequence[str], limit: int) -> Iterator[str]:
    """The last ``limit`` comma-separated entries of ``lines``, right first."""
    left = limit
    for line in reversed(lines):
        # rsplit bounds the work however many commas a line holds.
        for entry in reversed(line.rsplit(",", left)[-left:]):
            yield entry.strip(" \t")
            left -= 1
            if left == 0:
                return


def client_address(peer: str, forwarded_for: Sequence[str],
                   trusted: Sequence[IPNetwork]) -> str:
    """
    The address of the client behind ``peer``.

    :param peer: the TCP peer's host (``"unix"`` or ``""`` for a UNIX
        socket).
    :param forwarded_for: every ``X-Forwarded-For`` header line, in
        arrival order; together they form one comma-separated list.
    :param trusted: the proxies' networks (``ServerSettings.trusted_proxies``).
        List proxies by their IPv4 address: mapped addresses are compared
        as IPv4.

    :returns: if ``peer`` is not an IP address, ``peer`` itself.  If it is
        an address outside ``trusted``, that address (normalised) and the
        headers are ignored.  Otherwise the walk: from the right, over at
        most :data:`MAX_FORWARDED_ENTRIES` entries (empty entries are
        skipped but counted), each trusted address is a proxy hop and is
        passed; the first untrusted address is the result.  The walk stops
        without one at an entry that is not an address (see
        :func:`parse_forwarded_entry`), at the left end or at the bound;
        the result is then the last hop passed (the peer if none was), so
        a client the proxies could not name shares its proxy's address.
        Every address returned is normalised: canonical text, IPv4-mapped
        IPv6 as IPv4, no zone, no port.
    """
    hop = parse_forwarded_entry(peer)
    if hop is None:
        return peer
    if not _trusted(hop, trusted):
        return str(hop)
    for entry in _from_right(forwarded_for, MAX_FORWARDED_ENTRIES):
        if not entry:
            continue
        ip = parse_forwarded_entry(entry)
        if ip is None:
            break
        if not _trusted(ip, trusted):
            return str(ip)
        hop = ip
    return str(hop)


def network_key(address: str, ipv6_prefix: int) -> str:
    """
    The rate-limit key of ``address``.

    Asked for each connection's client by admission and again by the
    alerts: the last answers are remembered (a pure function of two
    immutable values), bounded to 1,024; an exception is not.

    :returns: the address itself for IPv4 (and IPv4-mapped IPv6), the
        enclosing ``/ipv6_prefix`` network for IPv6 (``2001:db8::/64``):
        one host can use every address in its /64, so each of them must
        not get a budget of its own.  :data:`LOCAL_KEY` for anything that
        is not an IP address.
    :raises ValueError: unless ``0 <= ipv6_prefix <= 128``.
    """
    if 0 <= ipv6_prefix <= 128 and _CANONICAL_V4.fullmatch(address):
        return address
    return _network_key(address, ipv6_prefix)


@functools.lru_cache(maxsize=1024)
def _network_key(address: str, ipv6_prefix: int) -> str:
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be between 0 and 128, got {ipv6_prefix!r}")
    try:
        ip = _normalise(ipaddress.ip_address(address))
    except ValueError:
        return LOCAL_KEY
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))


@attrs.frozen
class Peer:
    """
    Who a connection is, for limits, tickets and logs.

    :ivar address: the client's address, normalised (IPv4-mapped IPv6 as
        IPv4, no zone), or the peer's own text when it is not an IP
        address (a UNIX socket: ``"local"``).
    :ivar key: the rate-limit key of ``address`` (:func:`network_key`).
    :ivar learned: where ``address`` comes from: ``"tcp"`` (the TCP
        peer), ``"proxy_header"`` (a PROXY header's source),
        ``"proxy_local"`` (a PROXY header without a client address: the
        proxy's own connection, a health check), or ``"forwarded_for"``.
    :ivar forwarding: the TCP peer is a trusted proxy that terminated TLS:
        the client is named by ``X-Forwarded-For`` once the request head
        is read (:func:`forwarded_peer`); until then ``address`` is the
        proxy's.
    """

    address: str
    key: str
    learned: str
    forwarding: bool = False


def _normalised_host(host: str) -> str:
    if _CANONICAL_V4.fullmatch(host):
        return host
    ip = parse_forwarded_entry(host)
    return host if ip is None else str(ip)


def accepted_peer(host: str, *, proxy_header: bool, carried: bool,
                  trusted: Sequence[IPNetwork], reads_forwarded_for: bool,
                  ipv6_prefix: int) -> Peer:
    """
    The peer of a connection just accepted, before any byte is read.

    :param host: the transport's peer address: the TCP peer, or, behind a
        PROXY header, the address it carried (the proxy's own when it
        carried none).
    :param proxy_header: the connection began with a PROXY header (from a
        trusted proxy: the PROXY layer checked that).
    :param carried: the header carried a client address.
    :param reads_forwarded_for: ``Config.reads_forwarded_for``: a trusted
        proxy terminated TLS in front of securews.  Never true together
        with ``proxy_header``: the PROXY header is then the only source.
    """
    address = _normalised_host(host)
    key = network_key(address, ipv6_prefix)
    if proxy_header:
        return Peer(address, key, "proxy_header" if carried else "proxy_local")
    forwarding = reads_forwarded_for and peer_is_trusted(address, trusted)
    return Peer(address, key, "tcp", forwarding)


def forwarded_peer(peer: Peer, forwarded_for: Sequence[str],
                   trusted: Sequence[IPNetwork], ipv6_prefix: int) -> Peer:
    """
    The client behind a forwarding proxy, once the request head is read.

    :param forwarded_for: every ``X-Forwarded-For`` line of the head.
    :returns: ``peer`` itself unless it is forwarding; else the client
        :func:`client_address` finds (the proxy itself when the header
        names no one it can believe).
    """
    if not peer.forwarding:
        return peer
    address = client_address(peer.address, forwarded_for, trusted)
    return Peer(address, network_key(address, ipv6_prefix), "forwarded_for")
