"""Reading and routing the request head: pure code, no transport."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securews.rules.head import HeadScanner, Refusal, RequestHead, read_head, route
from securews.rules.responses import render_refusal

HEAD = (b"GET /ws?ticket=abc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nOrigin: https://a.example\r\n\r\n")


def parse(data: bytes, max_bytes: int = 8192,
          max_headers: int = 64) -> RequestHead | Refusal | None:
    return read_head(data, max_bytes=max_bytes, max_headers=max_headers)


def test_complete_head_is_parsed() -> None:
    """Method, path, query and headers (lower-cased names) come out."""
    head = parse(HEAD + b"\x81\x80")
    assert isinstance(head, RequestHead)
    assert (head.method, head.path, head.query) == ("GET", "/ws", "ticket=abc")
    assert head.get("ORIGIN") == "https://a.example"
    assert head.has_token("connection", "upgrade")
    assert head.size == len(HEAD)


def test_incomplete_head_asks_for_more() -> None:
    """Without the blank line, and within limits, the answer is 'read more'."""
    assert parse(HEAD[:-2]) is None


@pytest.mark.parametrize("data", [
    b"GET /ws HTTP/1.1\r\nHost: h\r\nX: a\x85Origin: evil\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nX: a\rOrigin: evil\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\n folded: value\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
    b"GET  /ws HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /w\xffs HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://h/ws HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /ws#frag HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /ws HTTP/1.1 extra\r\nHost: h\r\n\r\n",
    b"GET /ws HTTX/1.1\r\nHost: h\r\n\r\n",
])
def test_heads_another_parser_could_read_differently_are_bad_requests(
    data: bytes
) -> None:
    """Line breaks inside values, folding and odd request lines are 400."""
    assert parse(data) == Refusal(400, "bad_request")


def test_oversized_head_is_refused() -> None:
    """A head past max_bytes is 431, complete or not."""
    assert parse(HEAD, max_bytes=len(HEAD) - 5) == Refusal(431, "header_too_large")
    assert parse(b"GET /ws HTTP/1.1\r\nX: " + b"a" * 100,
                 max_bytes=64) == Refusal(431, "header_too_large")


def test_too_many_header_lines_are_refused() -> None:
    """More than max_headers lines is 431, even before the head ends."""
    lines = b"".join(b"X-%d: y\r\n" % i for i in range(5))
    assert parse(b"GET /ws HTTP/1.1\r\n" + lines, max_headers=3) == Refusal(
        431, "header_too_large")
    assert isinstance(parse(b"GET /ws HTTP/1.1\r\n" + lines + b"\r\n",
                            max_headers=5), RequestHead)


@pytest.mark.parametrize(("data", "expected"), [
    (HEAD, None),
    (HEAD.replace(b"/ws?", b"/other?"), 404),
    (HEAD.replace(b"GET", b"POST"), 405),
    (HEAD.replace(b"Upgrade: websocket\r\n", b""), 426),
    (HEAD.replace(b"Upgrade: websocket", b"Upgrade: h2c"), 426),
    (HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"), 505),
    (HEAD.replace(b"Host: h\r\n", b""), 400),
    (HEAD.replace(b"Host: h\r\n", b"Host: h\r\nHost: i\r\n"), 400),
])
def test_route(data: bytes, expected: int | None) -> None:
    """Only a GET upgrade to the WebSocket path goes on to the handshake."""
    head = parse(data)
    assert isinstance(head, RequestHead)
    decision = route(head, websocket_path="/ws")
    assert (decision.status if decision else None) == expected


def test_refusal_is_fixed_text() -> None:
    """Status line, standard headers and a body made only of the status."""
    body = render_refusal(429, [("Retry-After", "3")])
    assert body.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"\r\nRetry-After: 3\r\n" in body
    assert b"\r\nCache-Control: no-store\r\n" in body
    assert body.endswith(b"\r\nContent-Length: 22\r\n\r\n429 Too Many Requests\n")
    assert render_refusal(999).startswith(b"HTTP/1.1 500 Internal Server Error")


heads = st.one_of(
    st.just(HEAD),
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"GET /ws HTTP/1.1", b"X: y", b"Host: h", b"",
                              b"\r", b"\n", b"a" * 50, b"\x85"]),
             max_size=30).map(b"\r\n".join),
)


@given(data=heads, cuts=st.lists(st.integers(0, 400), max_size=12),
       max_bytes=st.integers(16, 400), max_headers=st.integers(1, 20))
def test_scanner_decides_like_a_single_parse_whatever_the_chunking(
    data: bytes, cuts: list[int], max_bytes: int, max_headers: int
) -> None:
    """Feeding the head in any chunks gives the verdict of parsing it whole."""
    scanner = HeadScanner(max_bytes=max_bytes, max_headers=max_headers)
    verdict = None
    for end in [*sorted(c for c in cuts if c < len(data)), len(data)]:
        verdict = scanner.scan(data[:end])
        if verdict is not None:
            break
    whole = read_head(data, max_bytes=max_bytes, max_headers=max_headers)
    if verdict is None:
        assert whole is None
    elif isinstance(verdict, RequestHead):
        assert verdict == whole
    else:
        assert whole == verdict


@given(st.binary(max_size=2000))
def test_read_head_never_raises_and_stays_bounded(data: bytes) -> None:
    """Arbitrary bytes give a verdict; never an exception or a 2xx."""
    verdict = parse(data, max_bytes=512, max_headers=8)
    assert verdict is None or isinstance(verdict, Refusal | RequestHead)
    if isinstance(verdict, RequestHead):
        assert verdict.size <= 512 + 4
        assert len(verdict.headers) <= 8
