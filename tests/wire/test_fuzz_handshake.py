"""
Hypothesis against the real handshake path, in memory: request lines,
header names, values, order, repeats and sizes, bytes before and after
the head, every TCP segmentation.

The oracle is README.rst ("Security model", "Handshake"; RFC 6455 where
the README is silent), not the code: the checks run in the documented
order (head size 431, the route 404/405/426/505, the Origin 403, then
authentication), a request with no fault must be accepted, a refusal
has the standard reason phrase, a fixed body, ``Cache-Control:
no-store`` and echoes nothing, there is one log event per answered
handshake, what a client can make the server buffer is bounded, and
every connection ends: accepted, refused or dropped by the handshake
timeout, its places given back.
"""

from __future__ import annotations

import base64
import hashlib
import string
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import attrs
from hypothesis import event, example, given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import LogEvent
from twisted.python.failure import Failure

from securews.auth.interfaces import Principal
from tests.support.memory import (
    ALICE,
    FUZZ,
    ORIGIN,
    FixedAuthenticator,
    HTTPResponse,
    assert_clean_log,
    assert_released,
    captured_events,
    connect,
    frame_bytes,
    make_factory,
    metric,
    read_response,
    read_server_frames,
    segment,
    split_at,
    txaio_clock,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HANDSHAKE_TIMEOUT = 3.0
CLOSE_TIMEOUT = 2.0
MAX_FRAME = 4096
#: Headers a refusal may carry: securews's fixed set (README: "only
#: headers it chose").
REFUSAL_HEADERS = {
    "cache-control", "x-content-type-options", "connection", "content-type",
    "content-length", "retry-after", "allow", "upgrade", "sec-websocket-version",
}
#: Names whose meaning the handshake depends on; "irrelevant" extra
#: headers never use them.
MEANINGFUL = {"host", "upgrade", "connection", "origin", "content-length",
              "transfer-encoding", "expect"}

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=16)
markers = st.text(string.ascii_letters, min_size=16, max_size=16)
# Header value characters both parsers read alike: visible latin-1, space
# and tab, never a control character or NEL.
_VALUE_ALPHABET = st.characters(codec="latin-1", exclude_categories=("Cc",),
                                include_characters=" \t")
_NAME_ALPHABET = st.characters(codec="latin-1", exclude_categories=("Cc",),
                               exclude_characters=":", include_characters=" ")
safe_values = st.text(_VALUE_ALPHABET, max_size=40)
irrelevant_names = tokens.filter(
    lambda n: n.lower() not in MEANINGFUL and not n.lower().startswith("sec-websocket"))


# -- the model: a request, its faults, and what the README says follows -------------


@attrs.frozen
class Case:
    """A request head and the outcomes the documentation allows for it."""

    head: bytes
    allowed: frozenset[int]
    max_header_bytes: int
    max_headers: int
    marker: str
    key: str | None = None
    protocol: str | None = None


@attrs.define
class Faults:
    """What is wrong with a request, by the stage that catches it."""

    parse: bool = False          # a malformed head: 400 while reading it
    route: set[int] = attrs.Factory(set)   # 404/405/426/505 (400: Host)
    origin: bool = False         # 403
    late: set[int] = attrs.Factory(set)    # RFC 6455 checks (key, version, ...)

    def allowed(self) -> frozenset[int]:
        """
        README, Security model: the head is read (431 is decided apart),
        then routed, then the Origin checked, then authenticated; where the
        RFC 6455 checks fall in that order is not documented, so they may
        answer instead of any later stage.
        """
        if self.parse:
            return frozenset({400})
        if self.route:
            return frozenset(self.route | self.late)
        if self.origin:
            return frozenset({403} | self.late)
        return frozenset(self.late or {101})


def _cased(name: str, how: int) -> str:
    """Header names are case-insensitive; only ASCII ones are recased
    (``"µ".upper()`` is not latin-1)."""
    if not name.isascii():
        return name
    return (name.lower(), name.upper(), name.title(), name)[how]


@st.composite
def upgrade_requests(draw: st.DrawFn, *, must_accept: bool = False) -> Case:
    """
    A GET upgrade to ``/ws`` with each part mutated or not.  With
    ``must_accept`` only mutations the protocol says are irrelevant.
    """
    marker = draw(markers)
    faults = Faults()

    def pick(ok: list[str], bad: list[tuple[str, Callable[[], None]]]) -> str:
        if must_accept or not bad or draw(st.integers(0, 9)):
            return draw(st.sampled_from(ok))
        value, mark = draw(st.sampled_from(bad))
        mark()
        return value

    def parse() -> None:
        faults.parse = True

    def route(code: int) -> Callable[[], None]:
        return lambda: faults.route.add(code)

    def late(*codes: int) -> Callable[[], None]:
        return lambda: faults.late.update(codes)

    def origin() -> None:
        faults.origin = True

    method = pick(["GET"], [
        (m, route(405)) for m in ["POST", "PUT", "HEAD", "OPTIONS", "get", "Get",
                                  "CONNECT", "X" + marker]
    ] + [("", parse), ("GE(T", parse), ("G\xc9T", parse)])
    query = draw(st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%",
                         max_size=30))
    target = pick(["/ws", f"/ws?{query}", f"/ws?token={marker}"], [
        (t, route(404)) for t in ["/", "/ws/", "/WS", "/ws2", f"/{marker}",
                                  f"/{marker}?ws", "//ws", "/ws;x"]
    ] + [(t, parse) for t in ["ws", "*", "/ws#f", f"/w\x7f{marker}", "/w\xe9s", ""]])
    version = pick(["HTTP/1.1"], [
        (v, route(505)) for v in ["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/3.0"]
    ] + [(v, parse) for v in ["HTTP/1", "HTTP/11", "HTTX/1.1", "http/1.1",
                              "HTTP/1.1x", ""]])
    headers: list[tuple[str, str]] = []

    def header(name: str, values: list[str]) -> None:
        headers.extend((name, v) for v in values)

    host = pick(["ws.example.com", "ws.example.com:8443", "127.0.0.1", "[::1]:8443"],
                [("none", route(400)), ("two", route(400)),
                 ("ws.example.com:x" + marker, late(400))])
    header("Host", [] if host == "none" else ["ws.example.com"] * 2 if host == "two"
           else [host])
    upgrade = pick(["websocket", "WebSocket", "WEBSOCKET", "h2c, websocket",
                    "websocket , foo", "h2c|websocket"],
                   [(u, route(426)) for u in ["none", "h2c", "web socket", "", marker]])
    if upgrade == "h2c|websocket":
        header("Upgrade", ["h2c", "websocket"])
    elif upgrade != "none":
        header("Upgrade", [upgrade])
    connection = pick(
        ["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade, keep-alive"],
        [(c, late(400)) for c in ["none", "close", "keep-alive", marker]])
    if connection != "none":
        header("Connection", [connection])
    key = base64.b64encode(draw(st.binary(min_size=16, max_size=16))).decode()
    key_choice = pick(["one"], [("none", late(400)), ("two", late(400)),
                                ("bad", late(400)), ("short", late(400))])
    header("Sec-WebSocket-Key", {"one": [key], "none": [], "two": [key, key],
                                 "bad": [marker + "!!!!!!=="],
                                 "short": [marker + "=="]}[key_choice])
    ws_version = pick(["13"], [("none", late(400, 426)), ("8", late(400, 426)),
                               ("abc" + marker, late(400, 426)),
                               ("two", late(400, 426)), ("13, 8", late(400, 426))])
    header("Sec-WebSocket-Version", [] if ws_version == "none" else
           ["13", "13"] if ws_version == "two" else [ws_version])
    origin_value = pick([ORIGIN, "HTTPS://APP.EXAMPLE.COM", "https://app.example.com:443",
                         "https://App.Example.Com"], [
        (o, origin) for o in ["none", "null", "https://evil.example",
                              "http://app.example.com", "https://app.example.com:8443",
                              "https://app.example.com.evil.net", "two", "evil-too",
                              f"https://app.example.com/{marker}"]])
    header("Origin", {"none": [], "two": [ORIGIN, ORIGIN],
                      "evil-too": [ORIGIN, "https://evil.example"]}.get(
        origin_value, [origin_value]))
    offered = draw(st.sampled_from([(), ("chat.v1",), ("chat.v1", "chat.v2"),
                                    ("other",), (marker,)]))
    if offered:
        header("Sec-WebSocket-Protocol", [", ".join(offered)])
    extras = draw(st.lists(st.tuples(irrelevant_names, safe_values, st.booleans()),
                           max_size=8))
    for name, value, marked in extras:
        headers.append((name, value + marker if marked else value))
    headers.append(("X-Forwarded-For", f"198.51.100.{len(marker)}, {marker}"))
    if not must_accept and not draw(st.integers(0, 4)):
        bad_lines = draw(st.lists(st.one_of(
            # a name that is not a token
            st.tuples(st.text(_NAME_ALPHABET, max_size=10).filter(
                lambda n: not n or any(c not in TOKEN_CHARS for c in n)), safe_values),
            # a value holding a control character or NEL (README: 400)
            st.tuples(irrelevant_names, st.builds(
                lambda a, c, b: a + c + b, safe_values,
                st.sampled_from([chr(i) for i in [*range(0, 9), *range(10, 32)]
                                 ] + ["\x7f", "\x85"]), safe_values)),
            st.sampled_from([(" folded", "value"), ("\tfolded", marker)]),
        ), min_size=1, max_size=2))
        parse()
        headers += bad_lines
    order = draw(st.permutations(range(len(headers))))
    lines = []
    for i in order:
        name, value = headers[i]
        how = draw(st.integers(0, 3))
        space = draw(st.sampled_from(["", " ", "\t", "  "]))
        trail = draw(st.sampled_from(["", " ", "\t"]))
        lines.append(f"{_cased(name, how)}:{space}{value}{trail}")
    request_line = f"{method} {target} {version}"
    head = ("\r\n".join([request_line, *lines]) + "\r\n\r\n").encode("latin-1")

    size = len(head)
    if must_accept:
        max_bytes = size + draw(st.sampled_from([0, 1, 3, 100]))
        max_headers = len(lines) + draw(st.sampled_from([0, 1, 50]))
    elif draw(st.integers(0, 2)):
        max_bytes, max_headers = size + 100, len(lines) + 5
    else:
        # Around the limits: below, at, and just past each.
        max_bytes = max(1, size + draw(st.integers(-8, 8)))
        max_headers = max(1, len(lines) + draw(st.integers(-1, 1)))
    allowed = faults.allowed()
    if len(lines) > max_headers or size > max_bytes + 4:
        allowed = frozenset({431})
    elif size > max_bytes:
        # README: "Largest upgrade request head; larger is 431" does not say
        # whether the blank line that ends the head counts.
        allowed |= {431}
    protocol = next((p for p in ("chat.v2", "chat.v1") if p in offered), None)
    return Case(head, allowed, max_bytes, max_headers, marker,
                key if key_choice == "one" else None, protocol)


cut_lists = st.lists(st.integers(1, 700), max_size=8)
dribbles = st.sampled_from([0, 0, 0, 1, 2, 3, 7])


# -- running a connection ------------------------------------------------------------


@attrs.frozen
class Run:
    proto: Any
    transport: Any
    factory: Any
    response: HTTPResponse | None
    after: bytes
    events: list[LogEvent]


def run(chunks: list[bytes], *, max_header_bytes: int = 8192, max_headers: int = 64,
        auth_later: bool = False) -> Run:
    """
    Deliver ``chunks`` to a fresh server and let every timer fire; check
    the bounds after each read.  The authenticator admits everyone
    (``auth_later``: only once every chunk has arrived).
    """
    pending: Deferred[Principal | None] = Deferred()
    with txaio_clock() as clock, captured_events() as events:
        factory = make_factory(
            clock, FixedAuthenticator(pending if auth_later else ALICE),
            limits={"max_header_bytes": max_header_bytes, "max_headers": max_headers,
                    "handshake_timeout": HANDSHAKE_TIMEOUT,
                    "close_timeout": CLOSE_TIMEOUT, "max_frame_size": MAX_FRAME})
        proto, transport = connect(factory)
        held: int | None = None
        for chunk in chunks:
            proto.dataReceived(chunk)
            if held is None and transport.value():
                held = len(proto.data)
            elif held is None:
                # Bounded while unanswered: an unfinished head up to the
                # limit (plus a partial "\r\n\r\n"), or, handed to the
                # authenticator, early frames up to one frame's worth.
                assert len(proto.data) <= max(max_header_bytes + 3, MAX_FRAME + 14)
            else:
                # Answered: refused bytes are not kept, frames are consumed.
                assert len(proto.data) <= max(held, 14)
        if auth_later:
            pending.callback(ALICE)
        if not transport.value():
            assert not transport.disconnecting
            clock.advance(HANDSHAKE_TIMEOUT - 0.01)
            assert not transport.disconnecting, "dropped before handshake_timeout"
        clock.advance(HANDSHAKE_TIMEOUT + CLOSE_TIMEOUT + 0.1)
        written = transport.value()
        parsed = read_response(written)
        response, after = parsed if parsed else (None, written)
        if response is None or response.status != 101:
            # Nothing answered stays: refused, or dropped at the timeout.
            assert transport.disconnected
            assert after == b""
        proto.connectionLost(Failure(ConnectionDone()))
        assert_released(factory, clock)
        assert len(factory.policy.pending) == 0
    return Run(proto, transport, factory, response, after, list(events))


def _assert_one_handshake_event(run: Run, status: int) -> None:
    """README, Logs: one event per handshake, with its outcome."""
    logged = [e for e in run.events if e.get("event") == "handshake"]
    assert [(e["outcome"], e["status"]) for e in logged] == [
        ("accepted" if status == 101 else "refused", status)]
    assert logged[0]["path"] in ("/ws", "other", None)


def _assert_refusal_format(response: HTTPResponse) -> None:
    """README: the standard reason phrase, a fixed body, no-store, only
    securews's headers."""
    phrase = HTTPStatus(response.status).phrase
    assert response.status_line == f"HTTP/1.1 {response.status} {phrase}".encode()
    assert response.header("Cache-Control") == ["no-store"]
    assert response.body == f"{response.status} {phrase}\n".encode()
    assert {n.lower() for n, _ in response.headers} <= REFUSAL_HEADERS


def check(case: Case, run: Run) -> int | None:
    """
    The documented end of a connection that was sent ``case.head``.

    :returns: the status answered, ``None`` for a head that never ended.
    """
    assert_clean_log(run.events, case.marker)
    written = run.transport.value()
    if run.response is None:
        assert written == b""
        return None
    # The HTTP answer; for a 101 the application's echoes follow it.
    assert case.marker.encode() not in written[:len(written) - len(run.after)]
    status = run.response.status
    assert status in case.allowed, (status, sorted(case.allowed))
    _assert_one_handshake_event(run, status)
    if status != 101:
        _assert_refusal_format(run.response)
        return status
    if case.key is not None:
        accept = base64.b64encode(hashlib.sha1(case.key.encode() + GUID).digest())
        assert run.response.header("Sec-WebSocket-Accept") == [accept.decode()]
    assert run.response.header("Sec-WebSocket-Protocol") == (
        [case.protocol] if case.protocol else [])
    assert run.factory.calls[0] == ("open", ALICE)
    return status


VALID_HEAD = (b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\n\r\n")
VALID = Case(VALID_HEAD, frozenset({101}), 8192, 64, "M" * 16,
             "dGhlIHNhbXBsZSBub25jZQ==")


# -- the tests ---------------------------------------------------------------------


@FUZZ
@given(case=upgrade_requests(must_accept=True), cuts=cut_lists, dribble=dribbles,
       messages=st.lists(st.text(max_size=40), max_size=4), auth_later=st.booleans())
def test_upgrades_with_irrelevant_differences_are_accepted(
    case: Case, cuts: list[int], dribble: int, messages: list[str], auth_later: bool
) -> None:
    """
    Header order, name case, optional whitespace, repeated Upgrade, extra
    headers of any name and value, default ports, Origin case, queries:
    none of it matters, in any segmentation.  Frames sent right behind
    the head are read as frames (and echoed by the application), never as
    HTTP, also while authentication is still running.
    """
    frames = b"".join(frame_bytes(m.encode(), mask=bytes([i + 1] * 4))
                      for i, m in enumerate(messages))
    outcome = run(segment(case.head + frames, cuts, dribble),
                  max_header_bytes=case.max_header_bytes,
                  max_headers=case.max_headers, auth_later=auth_later)
    assert check(case, outcome) == 101
    echoed, rest = read_server_frames(outcome.after)
    assert rest == b""
    assert [(f.opcode, f.payload) for f in echoed] == [
        (1, m.encode()) for m in messages]
    assert not outcome.transport.disconnecting


@FUZZ
@given(case=upgrade_requests(), cuts=cut_lists, dribble=dribbles,
       after=st.binary(max_size=64))
@example(case=VALID, cuts=[], dribble=0, after=b"\x00\x00").via(
    "regression: a 101 whose pipelined frames closed the session had no event")
@example(case=VALID, cuts=[], dribble=0, after=VALID.head).via(
    "a second request pipelined behind the first is read as frames: 1002")
def test_any_head_ends_in_a_documented_state_whatever_the_segmentation(
    case: Case, cuts: list[int], dribble: int, after: bytes
) -> None:
    """
    Mutated request lines and headers, repeats, bad names and values,
    sizes around both limits, bytes pipelined behind the head: the answer
    is one the documented order of checks allows, and the same whether
    the bytes come at once or in pieces.
    """
    limits = {"max_header_bytes": case.max_header_bytes,
              "max_headers": case.max_headers}
    whole = run([case.head + after], **limits)
    status = check(case, whole)
    assert status is not None
    event(f"status {status}")
    chunked = run(segment(case.head + after, cuts, dribble), **limits)
    assert check(case, chunked) == status
    if status == 101:
        # What followed the head was read as WebSocket frames: noise can
        # only close the session, with an RFC 6455 code.
        frames, rest = read_server_frames(whole.after)
        assert rest == b""
        assert all(f.opcode in (1, 2, 8, 10) for f in frames)
        closes = [f for f in frames if f.opcode == 8]
        assert len(closes) <= 1
        for close in closes:
            assert int.from_bytes(close.payload[:2], "big") in {1002, 1007, 1009}


def test_head_size_verdict_does_not_depend_on_segmentation() -> None:
    """
    Regression: a head whose blank line ends within 4 octets past
    max_header_bytes was accepted when it came in one read and refused
    431 when a read ended inside that blank line.
    """
    head = VALID_HEAD
    limit = len(head) - 3
    for cut in range(len(head) - 6, len(head)):
        whole = run([head], max_header_bytes=limit)
        chunked = run(split_at(head, [cut]), max_header_bytes=limit)
        assert whole.response is not None
        assert chunked.response is not None
        assert (cut, chunked.response.status) == (cut, whole.response.status)


def test_a_session_closed_by_pipelined_frames_was_still_accepted() -> None:
    """
    Regression: when the frames behind the head closed the session in the
    same read (here an unmasked frame: 1002), the 101 had no "accepted"
    event and was not counted.
    """
    outcome = run([VALID_HEAD + b"\x81\x02hi"])
    assert check(VALID, outcome) == 101
    frames, _ = read_server_frames(outcome.after)
    assert [(f.opcode, f.payload[:2]) for f in frames] == [(8, b"\x03\xea")]
    assert metric(outcome.factory, "securews_handshakes_total", outcome="accepted",
                  status="101", reason="none") == 1


@FUZZ
@given(before=st.binary(min_size=1, max_size=40),
       case=upgrade_requests(must_accept=True), cuts=cut_lists, dribble=dribbles)
@example(before=b"\r\n", case=VALID, cuts=[], dribble=0)
@example(before=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", case=VALID,
         cuts=[], dribble=1)
def test_bytes_before_the_head_are_refused_or_dropped(
    before: bytes, case: Case, cuts: list[int], dribble: int
) -> None:
    """
    Anything in front of the request line (a TLS ClientHello on a
    plaintext port, a stray CRLF, binary noise): a documented refusal or
    the handshake timeout, never an upgrade.
    """
    outcome = run(segment(before + case.head, cuts, dribble))
    check(attrs.evolve(case, allowed=frozenset({400, 404, 405, 431, 505})), outcome)


@FUZZ
@given(noise=st.one_of(
    st.binary(max_size=600),
    st.lists(st.sampled_from([b"GET /ws HTTP/1.1", b"Host: h", b"Upgrade: websocket",
                              b"\r\n", b"\r", b"\n", b":", b" ", b"\x85", b"\x00",
                              b"\xff", b"a" * 60]), max_size=40).map(b"".join)),
    cuts=cut_lists, dribble=dribbles)
def test_arbitrary_bytes_never_crash_the_handshake(
    noise: bytes, cuts: list[int], dribble: int
) -> None:
    """Noise gets a documented refusal or the handshake timeout: never an
    exception, an upgrade or an unbounded buffer."""
    outcome = run(segment(noise, cuts, dribble), max_header_bytes=256, max_headers=8)
    # Noise carries no marker; the log must still be free of errors.
    check(Case(noise, frozenset({400, 403, 404, 405, 426, 431, 505}), 256, 8,
               "ZqXvNrTbWkYsHdLp"), outcome)
