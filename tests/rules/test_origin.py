"""Origin normalisation and allow-list matching (CSWSH defence)."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from securews.rules.origin import (
    Origin,
    OriginError,
    origin_allowed,
    parse_allow_list,
    parse_origin,
)

ALLOWED = parse_allow_list(["https://app.example.com", "https://*.example.org",
                            "http://localhost:3000"])


def allowed(header: str | None, *, allow_missing: bool = False) -> bool:
    return origin_allowed(header, ALLOWED, allow_missing=allow_missing)


@pytest.mark.parametrize("header", [
    "https://app.example.com",
    "https://APP.Example.COM",
    "HTTPS://app.example.com",
    "https://app.example.com:443",
    "https://a.example.org",
    "https://a.b.example.org",
    "http://localhost:3000",
])
def test_listed_origins_are_accepted(header: str) -> None:
    """Case and an explicit default port do not matter."""
    assert allowed(header)


@pytest.mark.parametrize("header", [
    "https://example.org",
    "https://example.org.evil.net",
    "https://a.example.org.evil.net",
    "http://a.example.org",
    "https://evilexample.org",
    "https://a.example.org:8443",
    "https://app.example.com:444",
    "http://app.example.com",
    "wss://app.example.com",
    "https://app.example.com.",
    "https://app.example.com/",
    "https://app.example.com/path",
    "https://user@app.example.com",
    "https://app.example.com?x",
    "http://localhost",
    "null",
    "",
    "*",
    "https://*.example.org",
])
def test_foreign_and_malformed_origins_are_refused(header: str) -> None:
    """Subdomain wildcards never match the apex, lookalikes or other schemes."""
    assert not allowed(header)


def test_missing_origin_depends_on_allow_missing() -> None:
    """A request without Origin passes only when allow_missing is set."""
    assert not allowed(None)
    assert allowed(None, allow_missing=True)


def test_null_origin_is_refused_even_when_missing_is_allowed() -> None:
    """'null' comes from sandboxed browser frames, so it is not 'missing'."""
    assert not allowed("null", allow_missing=True)


def test_default_ports_are_elided_when_printed() -> None:
    """An Origin prints in its canonical serialised form."""
    assert str(parse_origin("HTTPS://Example.COM:443")) == "https://example.com"
    assert str(parse_origin("http://[::1]:8080")) == "http://[::1]:8080"


@pytest.mark.parametrize("entry", [
    "example.com", "https://", "https://a.example.com/", "https://*",
    "https://*.com", "https://a.*.example.com", "https://a.example.com:0",
    "https://a.example.com:99999", "ftp://files.example.com",
    "https://exa mple.com",
])
def test_bad_allow_list_entries_are_rejected(entry: str) -> None:
    """A typo in the allow-list is a startup error, not a silent non-match."""
    with pytest.raises(OriginError, match=entry.replace("*", r"\*")[:5]):
        parse_allow_list([entry])


labels = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1,
                 max_size=8)
domains = st.lists(labels, min_size=2, max_size=4).map(".".join)
schemes = st.sampled_from(["http", "https"])
ports = st.one_of(st.none(), st.integers(1, 65535))


def render(scheme: str, host: str, port: int | None) -> str:
    return f"{scheme}://{host}" + ("" if port is None else f":{port}")


@given(suffix=domains, scheme=schemes, port=ports,
       header=st.text(alphabet=string.printable, max_size=60))
def test_wildcard_never_accepts_a_host_outside_its_suffix(
    suffix: str, scheme: str, port: int | None, header: str
) -> None:
    """Whatever the header, a wildcard entry admits only strict subdomains."""
    allow = parse_allow_list([render(scheme, "*." + suffix, port)])
    if origin_allowed(header, allow, allow_missing=False):
        origin = parse_origin(header)
        assert origin.host.endswith("." + suffix)
        assert origin.scheme == scheme


@given(suffix=domains, scheme=schemes, port=ports, sub=labels,
       other=domains)
def test_wildcard_accepts_exactly_the_subdomains(
    suffix: str, scheme: str, port: int | None, sub: str, other: str
) -> None:
    """sub.suffix matches; suffix, other.suffix-lookalikes and suffix.other do not."""
    assume(not other.endswith(suffix))
    # suffix.other can itself be a subdomain of suffix ("0.0.0" and "0.0"
    # make "0.0.0.0.0"): then admitting it is right.
    assume(not f"{suffix}.{other}".endswith("." + suffix))
    allow = parse_allow_list([render(scheme, "*." + suffix, port)])
    ok = lambda host: origin_allowed(  # noqa: E731
        render(scheme, host, port), allow, allow_missing=False)
    assert ok(f"{sub}.{suffix}")
    assert not ok(suffix)
    assert not ok(f"{suffix}.{other}")
    assert not ok(f"{sub}{suffix}")
    assert not ok(f"{other}")


@given(host=domains, scheme=schemes, port=ports)
def test_parse_origin_round_trips(host: str, scheme: str, port: int | None) -> None:
    """Parsing the printed form of an origin gives the same origin."""
    origin = parse_origin(render(scheme, host, port))
    assert parse_origin(str(origin)) == origin
    assert isinstance(origin, Origin)


@given(st.text(max_size=80))
def test_parse_origin_raises_only_origin_error(text: str) -> None:
    """Arbitrary header text is refused cleanly or parses to a stable origin."""
    try:
        origin = parse_origin(text)
    except OriginError:
        return
    assert parse_origin(str(origin)) == origin


@given(host=domains, scheme=schemes, port=ports, wildcard=st.booleans())
def test_allow_list_entries_round_trip(
    host: str, scheme: str, port: int | None, wildcard: bool
) -> None:
    """An allow-list printed (startup logs, settings) parses back to itself."""
    allow = parse_allow_list([render(scheme, ("*." if wildcard else "") + host, port)])
    assert parse_allow_list(allow.entries) == allow


@pytest.mark.parametrize(("entry", "header", "expected"), [
    ("http://localhost:*", "http://localhost:5173", True),
    ("http://localhost:*", "http://localhost", True),
    ("http://localhost:*", "http://LOCALHOST:8000", True),
    ("http://localhost:*", "https://localhost:5173", False),
    ("http://localhost:*", "http://localhost.evil.net:5173", False),
    ("http://localhost:*", "http://127.0.0.1:5173", False),
    ("https://[::1]:*", "https://[::1]:8443", True),
    ("https://[::1]:*", "https://[0:0::1]:9", True),
    ("https://[::1]:*", "https://[::2]:8443", False),
    ("https://*.example.com:*", "https://a.example.com:4443", True),
    ("https://*.example.com:*", "https://example.com:4443", False),
])
def test_any_port_entries_match_every_port_of_their_host(
    entry: str, header: str, expected: bool
) -> None:
    """``:*`` relaxes the port only: scheme and host still match exactly."""
    assert origin_allowed(header, parse_allow_list([entry]),
                          allow_missing=False) is expected


@pytest.mark.parametrize("header", ["http://localhost:*", "https://[::1]:*"])
def test_a_header_never_carries_a_port_wildcard(header: str) -> None:
    """``:*`` is allow-list syntax; a browser never sends it."""
    with pytest.raises(OriginError):
        parse_origin(header)
    assert not origin_allowed(header, parse_allow_list(["http://localhost:*"]),
                              allow_missing=True)


@given(host=domains, scheme=schemes, wildcard=st.booleans())
def test_any_port_entries_round_trip(host: str, scheme: str, wildcard: bool) -> None:
    """``:*`` survives printing (startup banner) and parsing back."""
    entry = f"{scheme}://{'*.' if wildcard else ''}{host}:*"
    allow = parse_allow_list([entry])
    assert allow.entries == (entry,)
    assert parse_allow_list(allow.entries) == allow


def test_parsed_origins_are_remembered_within_a_bound() -> None:
    """A flood of distinct Origins cannot grow the remembered parses, an
    Origin padded with characters ``str.strip`` removes parses as it did
    before it was remembered, and a refused one is refused again."""
    from securews.rules.origin import _parse_origin

    for i in range(1000):
        parse_origin(f"https://h{i}.example.com")
    assert _parse_origin.cache_info().currsize <= 256
    assert parse_origin("https://h999.example.com") == Origin(
        "https", "h999.example.com", 443)
    padded = "\xa0" * 600 + "https://app.example.com" + "\xa0" * 600
    assert parse_origin(padded) == parse_origin("https://app.example.com")
    for _ in range(2):
        with pytest.raises(OriginError):
            parse_origin("https://app.example.com/path")
