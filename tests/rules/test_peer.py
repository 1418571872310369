"""The client address behind trusted proxies, and its rate-limit key."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from securews.rules.peer import (
    LOCAL_KEY,
    MAX_FORWARDED_ENTRIES,
    Peer,
    accepted_peer,
    client_address,
    forwarded_peer,
    network_key,
    parse_forwarded_entry,
    peer_is_trusted,
)

TRUSTED = (ipaddress.IPv4Network("10.0.0.0/8"),
           ipaddress.IPv6Network("2001:db8:ffff::/48"))


def client(peer: str, *lines: str) -> str:
    return client_address(peer, list(lines), TRUSTED)


def test_untrusted_peer_headers_are_ignored() -> None:
    """A peer that is not a proxy cannot name another client."""
    assert client("203.0.113.7", "198.51.100.1") == "203.0.113.7"
    assert client("203.0.113.7", "198.51.100.1, 10.0.0.2") == "203.0.113.7"


def test_trusted_peer_gives_the_rightmost_untrusted_entry() -> None:
    """Entries the client prepended, left of its real address, are not read."""
    assert client("10.0.0.1", "1.1.1.1, 203.0.113.7") == "203.0.113.7"


def test_chain_of_trusted_proxies_is_walked() -> None:
    """Trusted hops on the right are passed over to reach the client."""
    assert client("10.0.0.1", "198.51.100.1, 203.0.113.7, 10.0.0.3, 10.0.0.2"
                  ) == "203.0.113.7"


def test_all_trusted_chain_gives_the_farthest_hop() -> None:
    """When every entry is a proxy, the leftmost one originated the request."""
    assert client("10.0.0.1", "10.0.0.3, 10.0.0.2") == "10.0.0.3"


def test_trusted_peer_without_header_is_the_client() -> None:
    """A request a proxy sent without X-Forwarded-For comes from the proxy."""
    assert client("10.0.0.1") == "10.0.0.1"
    assert client("10.0.0.1", "") == "10.0.0.1"


@pytest.mark.parametrize("garbage", [
    "unknown", "_hidden", "example.com", "1.2.3", "01.2.3.4", "[::1",
    "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:", "[1.2.3.4]", "[::1]x",
    "::ffff:1.2.3.4:80", "1.2.3.4 5.6.7.8", "1" * 101, "\u0661.2.3.4",
])
def test_garbage_stops_the_walk_at_the_last_trusted_hop(garbage: str) -> None:
    """An entry that is no address blames the hop that wrote it, never itself."""
    assert parse_forwarded_entry(garbage) is None
    assert client("10.0.0.1", f"203.0.113.7, {garbage}, 10.0.0.2") == "10.0.0.2"
    assert client("10.0.0.1", f"203.0.113.7, {garbage}") == "10.0.0.1"


def test_several_header_lines_form_one_list() -> None:
    """Repeated X-Forwarded-For lines are read as if joined by commas."""
    assert client("10.0.0.1", "198.51.100.1", "203.0.113.7, 10.0.0.2"
                  ) == "203.0.113.7"
    assert client("10.0.0.1", "203.0.113.7", "10.0.0.2") == "203.0.113.7"


def test_empty_list_elements_are_skipped() -> None:
    """Empty elements (a,,b or a trailing comma) are ignored as RFC 9110 asks."""
    assert client("10.0.0.1", "203.0.113.7,, 10.0.0.2 ,") == "203.0.113.7"


@pytest.mark.parametrize(("entry", "address"), [
    ("203.0.113.7:5555", "203.0.113.7"),
    ("[2001:db8::7]:443", "2001:db8::7"),
    ("[2001:db8::7]", "2001:db8::7"),
    ("2001:DB8:0:0::7", "2001:db8::7"),
    ("fe80::7%eth0", "fe80::7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
])
def test_ports_brackets_zones_and_mapped_forms_are_normalised(
    entry: str, address: str
) -> None:
    """The well-defined forms reduce to a canonical bare address."""
    assert client("10.0.0.1", entry) == address


def test_ipv6_proxies_and_clients() -> None:
    """A trusted IPv6 proxy is walked past like an IPv4 one."""
    assert client("2001:db8:ffff::1", "2001:db8:1:2::5, 2001:db8:ffff::2"
                  ) == "2001:db8:1:2::5"
    assert client("2001:db8:1::1", "203.0.113.7") == "2001:db8:1::1"


def test_mapped_peers_are_checked_as_ipv4() -> None:
    """::ffff:10.0.0.1 is the trusted proxy 10.0.0.1; a mapped client is IPv4."""
    assert client("::ffff:10.0.0.1", "::ffff:203.0.113.7") == "203.0.113.7"
    assert client("::ffff:203.0.113.9", "198.51.100.1") == "203.0.113.9"


@pytest.mark.parametrize(("peer", "trusted"), [
    ("10.0.0.1", True), ("::ffff:10.0.0.1", True), ("2001:db8:ffff::9", True),
    ("203.0.113.7", False), ("::ffff:203.0.113.7", False), ("unix", False),
    ("local", False), ("", False),
])
def test_peer_is_trusted_uses_the_same_rule(peer: str, trusted: bool) -> None:
    """The plaintext-listener check agrees with the X-Forwarded-For walk."""
    assert peer_is_trusted(peer, TRUSTED) is trusted
    assert (client(peer, "198.51.100.1") == "198.51.100.1") is trusted


def test_unix_socket_peer_is_returned_as_is() -> None:
    """A peer that is no IP address is not a trusted proxy; its key is local."""
    assert client("unix", "203.0.113.7") == "unix"
    assert network_key("unix", 64) == LOCAL_KEY
    assert network_key("", 64) == LOCAL_KEY


def test_walk_looks_at_a_bounded_number_of_entries() -> None:
    """Past MAX_FORWARDED_ENTRIES proxies the walk stops at the last one."""
    proxies = ["10.0.0.2"] * (MAX_FORWARDED_ENTRIES - 1)
    assert client("10.0.0.1", ", ".join(["203.0.113.7", *proxies])
                  ) == "203.0.113.7"
    assert client("10.0.0.1", ", ".join(["203.0.113.7", "10.0.0.3", *proxies])
                  ) == "10.0.0.3"
    assert client("10.0.0.1", "203.0.113.7, " + "10.0.0.2," * 5000
                  ) == "10.0.0.2"


def test_ipv6_addresses_in_one_64_share_a_key() -> None:
    """One host rotating through its /64 gets one budget; its neighbour another."""
    assert network_key("2001:db8::1", 64) == "2001:db8::/64"
    assert network_key("2001:db8::ffff:1", 64) == "2001:db8::/64"
    assert network_key("2001:db8:0:1::1", 64) == "2001:db8:0:1::/64"
    assert network_key("2001:db8::1", 128) != network_key("2001:db8::ffff:1", 128)


def test_ipv4_key_is_the_address() -> None:
    """IPv4 clients, mapped or not, are keyed by their own address."""
    assert network_key("203.0.113.7", 64) == "203.0.113.7"
    assert network_key("::ffff:203.0.113.7", 64) == "203.0.113.7"


@pytest.mark.parametrize("prefix", [-1, 129])
def test_bad_prefix_is_refused(prefix: int) -> None:
    """An IPv6 prefix outside 0..128 is a ValueError."""
    with pytest.raises(ValueError, match="ipv6_prefix"):
        network_key("2001:db8::1", prefix)


v6_ints = st.integers(0, 2**128 - 1)


@given(a=v6_ints, b=v6_ints, prefix=st.integers(0, 128), near=st.booleans())
def test_ipv6_keys_are_equal_exactly_within_one_prefix(
    a: int, b: int, prefix: int, near: bool
) -> None:
    """Two IPv6 addresses share a key iff their first ipv6_prefix bits agree."""
    if near:
        b = a ^ (b >> prefix) if prefix < 128 else a
    addresses = [ipaddress.IPv6Address(x) for x in (a, b)]
    if any(ip.ipv4_mapped for ip in addresses):
        return
    same = a >> (128 - prefix) == b >> (128 - prefix)
    assert (network_key(str(addresses[0]), prefix)
            == network_key(str(addresses[1]), prefix)) == same


# -- the walk, stated as a property ------------------------------------------

def _v4(net: str) -> st.SearchStrategy[ipaddress.IPv4Address]:
    network = ipaddress.IPv4Network(net)
    return st.integers(0, network.num_addresses - 1).map(
        lambda i: network.network_address + i)


def _v6(net: str) -> st.SearchStrategy[ipaddress.IPv6Address]:
    network = ipaddress.IPv6Network(net)
    return st.integers(0, 2**16 - 1).map(lambda i: network.network_address + i)


def _render(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
            ) -> st.SearchStrategy[str]:
    if isinstance(ip, ipaddress.IPv4Address):
        return st.sampled_from([str(ip), f"{ip}:8080", f"::ffff:{ip}",
                                f"[::ffff:{ip}]:1"])
    return st.sampled_from([str(ip), f"[{ip}]", f"[{ip}]:443", str(ip).upper()])


trusted_ips = st.one_of(_v4("10.0.0.0/30"), _v6("2001:db8:ffff::/48"))
untrusted_ips = st.one_of(_v4("203.0.113.0/30"), _v6("2001:db8:1::/48"))
garbage = st.sampled_from(["unknown", "_hidden", "host.example", "1.2.3", "[::1",
                           "1.2.3.4:99999", "a b"])
entries = st.one_of(trusted_ips.flatmap(_render), trusted_ips.flatmap(_render),
                    untrusted_ips.flatmap(_render), garbage, st.just(""))
lines = st.lists(st.lists(entries, max_size=12).map(", ".join), max_size=4)
peers = st.one_of(trusted_ips.flatmap(_render), untrusted_ips.map(str),
                  st.just("unix"))

_EMPTY = "empty"


def _is_trusted(ip: object) -> bool:
    return any(ip in net for net in TRUSTED)


def walk_ends_at(peer: str, forwarded: list[str], result: str) -> bool:
    """
    The exact guarantee for a trusted peer: ``result`` is the peer or one of
    the last MAX_FORWARDED_ENTRIES entries, everything to its right is empty
    or a trusted address, and either it is untrusted, or the next non-empty
    entry is not an address, or no entry is left.
    """
    flat = [e.strip() for line in forwarded for e in line.split(",")]
    examined = [_EMPTY if not e else parse_forwarded_entry(e)
                for e in reversed(flat)][:MAX_FORWARDED_ENTRIES]
    hops = [(-1, parse_forwarded_entry(peer)), *enumerate(examined)]
    for j, ip in hops:
        if ip is None or ip == _EMPTY or str(ip) != result:
            continue
        right = examined[:j] if j >= 0 else []
        if not all(p == _EMPTY or (p is not None and _is_trusted(p)) for p in right):
            continue
        if not _is_trusted(ip):
            return True
        left = [p for p in examined[j + 1:] if p != _EMPTY]
        if not left or left[0] is None:
            return True
    return False


@given(peer=peers, forwarded=lines)
def test_client_address_is_the_rightmost_untrusted_entry(
    peer: str, forwarded: list[str]
) -> None:
    """Untrusted peer: itself; trusted peer: where the right-to-left walk stops."""
    result = client_address(peer, forwarded, TRUSTED)
    parsed = parse_forwarded_entry(peer)
    if parsed is None:
        assert result == peer
    elif not _is_trusted(parsed):
        assert result == str(parsed)
    else:
        assert walk_ends_at(peer, forwarded, result)
    if parsed is not None:
        canonical = ipaddress.ip_address(result)
        assert str(canonical) == result
        assert not (isinstance(canonical, ipaddress.IPv6Address)
                    and canonical.ipv4_mapped)


@given(peer=peers, forwarded=lines, prefix=st.lists(entries, min_size=1))
def test_prepended_entries_never_change_an_untrusted_result(
    peer: str, forwarded: list[str], prefix: list[str]
) -> None:
    """Whatever a client writes in front, the address its proxy saw wins."""
    result = client_address(peer, forwarded, TRUSTED)
    parsed = parse_forwarded_entry(result)
    if parsed is None or _is_trusted(parsed):
        return
    spoofed = [", ".join([*prefix, *forwarded[:1]]), *forwarded[1:]]
    assert client_address(peer, spoofed, TRUSTED) == result


@given(peer=peers, forwarded=lines)
def test_header_lines_behave_as_one_joined_line(
    peer: str, forwarded: list[str]
) -> None:
    """Splitting the list over several header lines changes nothing."""
    assert (client_address(peer, forwarded, TRUSTED)
            == client_address(peer, [", ".join(forwarded)], TRUSTED))


# -- the three deployments: which source names the client -------------------------


def accepted(host: str, *, proxy_header: bool = False, carried: bool = False,
             reads_forwarded_for: bool = False) -> Peer:
    return accepted_peer(host, proxy_header=proxy_header, carried=carried,
                         trusted=TRUSTED, reads_forwarded_for=reads_forwarded_for,
                         ipv6_prefix=64)


def test_direct_peer_is_the_client_and_forwards_nothing() -> None:
    """No proxy: the TCP peer is the client, known at accept time."""
    peer = accepted("203.0.113.7", reads_forwarded_for=True)
    assert peer == Peer("203.0.113.7", "203.0.113.7", "tcp", forwarding=False)


def test_trusted_peer_forwards_only_when_it_terminated_tls() -> None:
    """A trusted TCP peer names the client by X-Forwarded-For only when it
    terminated TLS; a TCP load balancer with passthrough does not."""
    assert accepted("10.0.0.2", reads_forwarded_for=True).forwarding
    assert not accepted("10.0.0.2", reads_forwarded_for=False).forwarding


@pytest.mark.parametrize("carried", [True, False])
def test_a_proxy_header_never_forwards(carried: bool) -> None:
    """After a PROXY header, X-Forwarded-For is never read, even when the
    carried (or the proxy's own) address lies inside trusted_proxies."""
    peer = accepted("10.1.2.3", proxy_header=True, carried=carried,
                    reads_forwarded_for=True)
    assert not peer.forwarding
    assert peer.learned == ("proxy_header" if carried else "proxy_local")
    assert forwarded_peer(peer, ["198.51.100.99"], TRUSTED, 64) is peer


def test_mapped_and_zoned_peers_are_normalised_at_accept() -> None:
    """The address limits and logs use is canonical from the start."""
    assert accepted("::ffff:203.0.113.7").address == "203.0.113.7"
    assert accepted("local").key == LOCAL_KEY


def test_forwarded_peer_names_the_client_behind_the_proxy() -> None:
    """The head's X-Forwarded-For settles a forwarding peer, and its key."""
    peer = accepted("10.0.0.2", reads_forwarded_for=True)
    client = forwarded_peer(peer, ["2001:db8:1:2::7"], TRUSTED, 64)
    assert client == Peer("2001:db8:1:2::7", "2001:db8:1:2::/64", "forwarded_for")


@given(host=peers, forwarded=lines, proxy_header=st.booleans(),
       carried=st.booleans(), reads=st.booleans())
def test_forwarded_for_is_read_only_from_a_forwarding_proxy(
    host: str, forwarded: list[str], proxy_header: bool, carried: bool, reads: bool
) -> None:
    """Whatever the header says, it changes the client only when the TCP
    peer is a trusted proxy that terminated TLS and sent no PROXY header."""
    peer = accepted(host, proxy_header=proxy_header, carried=carried,
                    reads_forwarded_for=reads)
    settled = forwarded_peer(peer, forwarded, TRUSTED, 64)
    if proxy_header or not reads or not peer_is_trusted(host, TRUSTED):
        assert settled == peer
    assert settled.key == network_key(settled.address, 64)
    assert not settled.forwarding


def test_network_keys_are_remembered_within_a_bound() -> None:
    """Every client address of a flood is a new key: the remembered ones
    stay bounded, and a bad prefix is refused every time."""
    from securews.rules.peer import _network_key

    for i in range(5000):
        assert network_key(f"10.0.{i >> 8}.{i & 255}", 64) == f"10.0.{i >> 8}.{i & 255}"
    assert _network_key.cache_info().currsize <= 1024
    for _ in range(2):
        with pytest.raises(ValueError, match="between 0 and 128"):
            network_key("10.0.0.1", 129)


_addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=4).map(lambda ip: f"::ffff:{ip}"),
    st.ip_addresses(v=6).map(lambda ip: f"{ip}%eth0"),
    st.ip_addresses(v=6).map(lambda ip: str(ip).upper()),
    st.text(max_size=20),
)


@given(st.lists(st.tuples(_addresses, st.sampled_from([0, 32, 48, 56, 64, 128])),
                max_size=20))
def test_a_remembered_network_key_is_the_one_computed(
        asked: list[tuple[str, int]]) -> None:
    """Whatever was asked before, each answer is the one computed afresh:
    IPv6 networks of different prefixes, mapped and zoned addresses and
    text that is no address never share an entry."""
    from securews.rules.peer import _network_key

    for address, prefix in asked + asked[::-1]:
        assert network_key(address, prefix) == _network_key.__wrapped__(address, prefix)


_dotted = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.lists(st.integers(0, 999).map(str), min_size=3, max_size=5).map(".".join),
    st.lists(st.text("0123456789", min_size=1, max_size=4),
             min_size=4, max_size=4).map(".".join),
    st.text("0123456789.:", max_size=20),
)


@given(_dotted)
@example("\u0661.\u0662.\u0663.\u0664")  # Arabic-Indic digits: \\d would match
@example("1.2.3.4\n")  # a trailing newline: match() with $ would take it
@example("01.2.3.4")
@example("256.1.1.1")
def test_the_ipv4_shortcut_answers_as_the_parser_does(host: str) -> None:
    """A dotted quad as the socket layer writes it skips the address
    parser; whatever else looks like one (leading zeros, octets over 255,
    too few or many parts, a port) still goes through it, and every
    answer is the parser's."""
    from securews.rules.peer import _network_key, _normalised_host

    parsed = parse_forwarded_entry(host)
    assert _normalised_host(host) == (host if parsed is None else str(parsed))
    for prefix in (0, 64, 128):
        assert network_key(host, prefix) == _network_key.__wrapped__(host, prefix)
    for prefix in (-1, 129):  # refused, whatever the address
        with pytest.raises(ValueError, match="between 0 and 128"):
            network_key(host, prefix)
