"""
Hypothesis against the real frame path, in memory: after an upgrade,
arbitrary frame sequences (reserved opcodes and RSV bits, unmasked,
non-minimal and lying lengths, fragmented control frames, oversized
frames and messages, too many fragments, invalid UTF-8 split across
fragments, close frames with any code and reason, pings, deflated
messages valid or not) and plain noise, in every TCP segmentation.

The oracle is a reference reader of the client's byte stream written
from RFC 6455/7692 and README.rst's documented limits (1009 for frame,
message and fragment bounds, 1008 over the frame rate, 1007/1003 for
validation, 1002 for protocol errors), not from the code: it says which
messages reach the application (and are echoed), which pings are
answered, and how the session ends (open, closed by the server with one
of the codes the input allows, or closed by the client).  The server must
match it exactly, never raise, never hold more than the limits allow, use
fixed close reasons, log nothing the client sent, and give back every
place and timer once the connection is gone.
"""

from __future__ import annotations

import json
import re
import string
import struct
import zlib
from typing import Any, ClassVar

import attrs
from hypothesis import event, example, given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.support.memory import (
    ALICE,
    FUZZ,
    FixedAuthenticator,
    assert_clean_log,
    assert_released,
    captured_events,
    connect,
    frame_bytes,
    make_factory,
    read_response,
    read_server_frames,
    request,
    segment,
    split_at,
    txaio_clock,
)

MAX_FRAME = 256
MAX_MESSAGE = 1024
MAX_FRAGMENTS = 6
MESSAGE_BURST = 8
MAX_JSON_DEPTH = 32
CLOSE_TIMEOUT = 2.0
TAIL = b"\x00\x00\xff\xff"
#: Codes a client may send (RFC 6455 7.4.1/7.4.2); 1012-1014 were
#: registered with IANA later, so a server may take them either way.
VALID_CLOSE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
               *range(3000, 5000)}
UNSETTLED_CLOSE = {1012, 1013, 1014}
#: README: "Close reasons are fixed words per code".
FIXED_REASON = re.compile(rb"[a-z ]{0,40}")


# -- the reference reader --------------------------------------------------------


class Utf8Prefix:
    """RFC 3629, octet by octet: is what came so far a prefix of valid UTF-8?"""

    _FIRST: ClassVar[list[tuple[tuple[int, int], list[tuple[int, int]]]]] = [
              ((0xC2, 0xDF), [(0x80, 0xBF)]),
              ((0xE0, 0xE0), [(0xA0, 0xBF), (0x80, 0xBF)]),
              ((0xE1, 0xEC), [(0x80, 0xBF)] * 2),
              ((0xED, 0xED), [(0x80, 0x9F), (0x80, 0xBF)]),
              ((0xEE, 0xEF), [(0x80, 0xBF)] * 2),
              ((0xF0, 0xF0), [(0x90, 0xBF), (0x80, 0xBF), (0x80, 0xBF)]),
              ((0xF1, 0xF3), [(0x80, 0xBF)] * 3),
              ((0xF4, 0xF4), [(0x80, 0x8F), (0x80, 0xBF), (0x80, 0xBF)])]

    def __init__(self) -> None:
        self.pending: list[tuple[int, int]] = []

    def feed(self, data: bytes) -> bool:
        for b in data:
            if self.pending:
                low, high = self.pending.pop(0)
                if not low <= b <= high:
                    return False
            elif b >= 0x80:
                for (low, high), rest in self._FIRST:
                    if low <= b <= high:
                        self.pending = list(rest)
                        break
                else:
                    return False
        return True


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("overflow")
    return value


def _reject(text: str) -> None:
    raise ValueError(text)


def _depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def json_verdict(text: str) -> bool | None:
    """
    README [messages]: one JSON document, no NaN, no duplicate keys,
    nesting at most max_json_depth.  ``None`` where the README leaves the
    answer open (escaped surrogates; a depth right at the limit).
    """
    depth = _depth(text)
    if abs(depth - MAX_JSON_DEPTH) <= 1:
        return None
    if depth > MAX_JSON_DEPTH:
        return False
    try:
        json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_finite,
                   parse_constant=_reject)
    except (ValueError, RecursionError):
        return False
    return None if "\\u" in text else True


@attrs.frozen
class Expected:
    """
    What the server must do with a stream.

    :ivar sent: the frames it writes before any close: ``(opcode,
        payload)`` for echoed messages (1/2) and pongs (10).
    :ivar end: ``"open"``, ``"server_close"`` or ``"client_close"``.
    :ivar codes: the close codes it may send (``None``: a close frame
        without a code).
    :ivar exact: false where the documentation leaves the outcome open;
        then only the invariants are checked.
    """

    sent: tuple[tuple[int, bytes], ...]
    end: str
    codes: frozenset[int | None] = frozenset()
    exact: bool = True


@attrs.define
class Reader:
    """Reads a client's byte stream as RFC 6455 and the README say a server must."""

    compression: bool
    json_only: bool
    allow_binary: bool
    sent: list[tuple[int, bytes]] = attrs.Factory(list)
    tokens: int = MESSAGE_BURST
    exact: bool = True

    def _done(self, end: str,
              codes: set[int | None] | frozenset[int | None] = frozenset()) -> Expected:
        return Expected(tuple(self.sent), end, frozenset(codes), self.exact)

    def read(self, data: bytes) -> Expected:
        i = 0
        inside = False
        opcode = total = fragments = 0
        compressed = False
        message = bytearray()
        utf8 = Utf8Prefix()
        inflater: Any = None
        while True:
            if len(data) - i < 2:
                return self._done("open")
            b0, b1 = data[i], data[i + 1]
            fin, rsv, op = bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF
            masked, len1 = bool(b1 & 0x80), b1 & 0x7F
            rsv1 = self.compression and rsv == 4
            bad = (rsv and not rsv1) or not masked
            if op > 7:
                bad = bad or not fin or len1 > 125 or op not in (8, 9, 10) \
                    or (op == 8 and len1 == 1) or rsv1
            else:
                bad = bad or op not in (0, 1, 2) or (op == 0) != inside \
                    or (rsv1 and inside)
            if bad:
                return self._done("server_close", {1002})
            size = 2 + {126: 2, 127: 8}.get(len1, 0) + 4
            if len(data) - i < size:
                return self._done("open")
            n = len1
            if len1 == 126:
                n = struct.unpack("!H", data[i + 2:i + 4])[0]
            elif len1 == 127:
                n = struct.unpack("!Q", data[i + 2:i + 10])[0]
            if (len1 == 126 and n < 126) or (len1 == 127 and (n < 65536 or n >= 2**63)):
                # Non-minimal length (RFC 6455 5.2 "MUST"), or the MSB set.
                too_big = {1009} if n > MAX_FRAME else set()
                return self._done("server_close", {1002} | too_big)
            key = data[i + size - 4:i + size]
            i += size
            if op <= 7:
                if not inside:
                    opcode, compressed, total, fragments = op, rsv1, 0, 0
                    message, utf8 = bytearray(), Utf8Prefix()
                    inflater = zlib.decompressobj(-15) if compressed else None
                    inside = True
                total += n
                fragments += 1
                if n > MAX_FRAME or (not compressed and total > MAX_MESSAGE) \
                        or fragments > MAX_FRAGMENTS:
                    return self._done("server_close", {1009})
            # README: every frame, of any opcode, costs a token from its header.
            self.tokens -= 1
            if self.tokens < 0:
                return self._done("server_close", {1008})
            raw = data[i:i + n]
            i += len(raw)
            payload = bytes(b ^ key[j % 4] for j, b in enumerate(raw))
            complete = len(raw) == n
            if op > 7:
                if not complete:
                    return self._done("open")
                if op == 8:
                    return self._client_close(payload)
                if op == 9:
                    self.sent.append((10, payload))
                continue
            if compressed:
                try:
                    piece = inflater.decompress(payload, MAX_MESSAGE - len(message) + 1)
                except zlib.error:
                    return self._done("server_close", {1007, 1009})
                if len(message) + len(piece) > MAX_MESSAGE:
                    return self._done("server_close", {1009, 1007})
                if inflater.unused_data:
                    return self._done("server_close", {1007})
                if inflater.unconsumed_tail:
                    return self._done("server_close", {1009})
            else:
                piece = payload
            if opcode == 1 and not utf8.feed(piece):
                return self._done("server_close", {1007})
            message += piece
            if not complete:
                return self._done("open")
            if not fin:
                continue
            inside = False
            if compressed and not inflater.eof:
                try:
                    rest = inflater.decompress(TAIL, 1)
                except zlib.error:
                    return self._done("server_close", {1007})
                if rest or inflater.unconsumed_tail:
                    return self._done("server_close", {1007, 1009})
            if opcode == 1 and utf8.pending:
                return self._done("server_close", {1007})
            codes: set[int | None] = set()
            if opcode == 2 and not self.allow_binary:
                codes.add(1003)
            if opcode == 1 and self.json_only:
                verdict = json_verdict(bytes(message).decode("utf-8"))
                if verdict is None:
                    self.exact = False
                elif not verdict:
                    codes.add(1007)
            if codes:
                return self._done("server_close", codes)
            self.sent.append((opcode, bytes(message)))

    def _client_close(self, payload: bytes) -> Expected:
        if not payload:
            return self._done("client_close", {None, 1000})
        code = struct.unpack("!H", payload[:2])[0]
        if code in UNSETTLED_CLOSE:
            self.exact = False
        elif code not in VALID_CLOSE:
            return self._done("server_close", {1002})
        if not Utf8Prefix().feed(payload[2:]) or not _complete_utf8(payload[2:]):
            return self._done("server_close", {1007, 1002})
        return self._done("client_close", {None, 1000, code})


def _complete_utf8(data: bytes) -> bool:
    reader = Utf8Prefix()
    return reader.feed(data) and not reader.pending


# -- building client streams ---------------------------------------------------------


def deflate(payload: bytes) -> bytes:
    """RFC 7692 7.2.1: one message, compressed, without the final tail."""
    c = zlib.compressobj(wbits=-15)
    data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


keys = st.binary(min_size=4, max_size=4)
markers = st.text(string.ascii_letters, min_size=16, max_size=16)


def _sized(unit: bytes, size: int) -> bytes:
    return (unit * (size // max(1, len(unit)) + 1))[:size] if unit else b"x" * size


@st.composite
def payloads(draw: st.DrawFn, marker: str, valid: bool = False) -> tuple[int, bytes]:
    """A data message's opcode and payload: text, JSON, binary, broken."""
    kinds = ["text", "json", "json", "binary"]
    if not valid:
        kinds += ["bad_utf8", "deep", "bad_json", "big"]
    kind = draw(st.sampled_from(kinds))
    if kind == "text":
        return 1, (draw(st.text(max_size=60)) + marker).encode()
    if kind == "json":
        doc = draw(st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10)
            | st.floats(allow_nan=False, allow_infinity=False),
            lambda inner: st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=5), inner, max_size=4),
            max_leaves=10))
        return 1, json.dumps({"m": marker, "d": doc},
                             ensure_ascii=draw(st.booleans())).encode()
    if kind == "binary":
        return 2, draw(st.binary(max_size=80))
    if kind == "bad_utf8":
        good = draw(st.text(max_size=20)).encode()
        bad = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90",
                                    b"\xe2\x82", b"\x80", b"\xf8\x88\x80\x80\x80"]))
        return 1, good + bad + draw(st.text(max_size=20)).encode()
    if kind == "deep":
        n = draw(st.sampled_from([1, 5, 20, 40, 60]))
        return 1, b"[" * n + b"1" + b"]" * n
    if kind == "bad_json":
        return 1, draw(st.sampled_from([b"{", b"NaN", b'{"a":1,"a":2}', b"[1,]",
                                        b"1e999", b"'x'", b"[] []", b"", b"tru"]))
    size = draw(st.sampled_from([MAX_FRAME - 1, MAX_FRAME + 1, MAX_MESSAGE,
                                 MAX_MESSAGE + 1, 3 * MAX_FRAME]))
    return draw(st.sampled_from([1, 2])), _sized(marker.encode(), size)


@st.composite
def messages(draw: st.DrawFn, marker: str, compression: bool,
             valid: bool = False) -> bytes:
    """A well-formed message, in up to nine fragments, pings between them."""
    opcode, payload = draw(payloads(marker, valid))
    compressed = compression and draw(st.booleans())
    wire = deflate(payload) if compressed else payload
    cuts = draw(st.lists(st.integers(1, max(1, len(wire))), max_size=8))
    pieces = split_at(wire, cuts) or [b""]
    if (not compressed and len(wire) > MAX_FRAME and len(pieces) == 1
            and draw(st.booleans())):
        pieces = split_at(wire, range(MAX_FRAME, len(wire), MAX_FRAME))
    out = []
    for j, piece in enumerate(pieces):
        out.append(frame_bytes(piece, opcode if j == 0 else 0, fin=j == len(pieces) - 1,
                               rsv=4 if compressed and j == 0 else 0, mask=draw(keys)))
        if j < len(pieces) - 1 and not draw(st.integers(0, 3)):
            out.append(frame_bytes(marker.encode(), 0x9, mask=draw(keys)))
    return b"".join(out)


#: One thing wrong with an otherwise good frame (RFC 6455 5.2, 5.4, 5.5).
FLAWS = ["unmasked", "rsv1", "rsv2", "rsv3", "reserved_data_opcode",
         "reserved_control_opcode", "not_fin", "long_control", "length_16",
         "length_64", "msb_length", "short", "long", "huge", "continuation",
         "close_one_octet", "oversized"]


@st.composite
def flawed_frames(draw: st.DrawFn, marker: str) -> bytes:
    """A good frame with up to two flaws: reserved bits and opcodes, no
    mask, fragmented or long control frames, non-minimal, lying or huge
    lengths, a continuation with no message."""
    opcode = draw(st.sampled_from([1, 2, 9, 10, 8]))
    payload = draw(st.one_of(st.binary(max_size=140), st.just(marker.encode())))
    if opcode == 1:
        payload = marker.encode()
    if opcode == 8:
        payload = struct.pack("!H", 1000)
    spec: dict[str, Any] = {"fin": True, "rsv": 0, "mask": draw(keys),
                            "length_form": None, "declared": None}
    if opcode >= 8:
        payload = payload[:125]
    for flaw in draw(st.lists(st.sampled_from(FLAWS), min_size=1, max_size=2)):
        if flaw == "unmasked":
            spec["mask"] = None
        elif flaw.startswith("rsv"):
            spec["rsv"] |= {"rsv1": 4, "rsv2": 2, "rsv3": 1}[flaw]
        elif flaw == "reserved_data_opcode":
            opcode = draw(st.integers(3, 7))
        elif flaw == "reserved_control_opcode":
            opcode = draw(st.integers(11, 15))
        elif flaw == "not_fin":
            spec["fin"] = False
        elif flaw == "long_control":
            opcode, payload = draw(st.sampled_from([8, 9, 10])), b"p" * 126
        elif flaw == "length_16":
            spec["length_form"] = 16
        elif flaw == "length_64":
            spec["length_form"] = 64
        elif flaw == "msb_length":
            spec["length_form"], spec["declared"] = 64, 2**63 + len(payload)
        elif flaw == "short":
            spec["declared"] = max(0, len(payload) - draw(st.integers(1, 10)))
        elif flaw == "long":
            spec["declared"] = len(payload) + draw(st.integers(1, 10))
        elif flaw == "huge":
            spec["declared"] = draw(st.sampled_from([65536, 2**32, 2**40, 2**62]))
        elif flaw == "continuation":
            opcode = 0
        elif flaw == "close_one_octet":
            opcode, payload = 8, b"\x03"
        else:
            payload = _sized(payload or b"x", MAX_FRAME + draw(st.integers(1, 10)))
    return frame_bytes(payload, opcode, **spec)


@st.composite
def raw_frames(draw: st.DrawFn, marker: str) -> bytes:
    """Any frame header over any payload."""
    payload = draw(st.one_of(st.binary(max_size=140), st.just(marker.encode())))
    return frame_bytes(
        payload, draw(st.integers(0, 15)), fin=draw(st.booleans()),
        rsv=draw(st.integers(0, 7)), mask=draw(st.one_of(keys, st.none())),
        length_form=draw(st.sampled_from([None, 7, 16, 64])),
        declared=draw(st.one_of(
            st.none(), st.integers(0, 300),
            st.sampled_from([125, 126, 65535, 65536, 2**40, 2**63, 2**64 - 1]))))


@st.composite
def control_frames(draw: st.DrawFn, marker: str) -> bytes:
    """Pings, pongs and closes, with any code and reason."""
    kind = draw(st.sampled_from(["ping", "pong", "close", "close"]))
    if kind != "close":
        payload = draw(st.sampled_from([b"", marker.encode(), b"p" * 125, b"p" * 126]))
        return frame_bytes(payload, 0x9 if kind == "ping" else 0xA, mask=draw(keys))
    code = draw(st.one_of(
        st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                         1014, 3000, 4999, 0, 999, 1004, 1005, 1006, 1015, 1016,
                         2999, 5000, 65535]),
        st.integers(0, 65535)))
    reason = draw(st.one_of(
        st.just(marker.encode()), st.text(max_size=20).map(str.encode),
        st.sampled_from([b"\xff", b"\xe2\x82", b"ok\xed\xa0\x80"])))
    payload = draw(st.sampled_from([
        b"", struct.pack("!H", code), struct.pack("!H", code) + reason, b"\x03"]))
    return frame_bytes(payload, 0x8, mask=draw(keys))


@st.composite
def client_streams(draw: st.DrawFn, marker: str, compression: bool) -> bytes:
    """What a client sends after its head: mostly messages, some of anything."""
    if draw(st.booleans()):
        # Long runs of good messages reach the deeper limits (the message
        # rate, fragment counts) and end with one thing of any kind.
        good = messages(marker, compression, valid=True)
        pings = st.builds(lambda p, k: frame_bytes(p, 0x9, mask=k),
                          st.binary(max_size=20), keys)
        parts = draw(st.lists(st.one_of(good, good, good, pings), max_size=12))
        last = draw(st.one_of(messages(marker, compression), flawed_frames(marker),
                              flawed_frames(marker), raw_frames(marker),
                              control_frames(marker), st.binary(max_size=24)))
        return b"".join([*parts, last])
    message = messages(marker, compression)
    parts = draw(st.lists(st.one_of(
        message, message, message, flawed_frames(marker), raw_frames(marker),
        control_frames(marker), st.binary(max_size=24)), max_size=10))
    return b"".join(parts)


cut_lists = st.lists(st.integers(1, 3000), max_size=10)
dribbles = st.sampled_from([0, 0, 0, 0, 1, 3, 9])


def head(compression: bool) -> bytes:
    return request(extra=("Sec-WebSocket-Extensions: permessage-deflate",)
                   if compression else ())


# -- running a session -------------------------------------------------------------


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + TAIL)


def run_session(stream: bytes, cuts: list[int], dribble: int, *, compression: bool,
                fmt: str, allow_binary: bool, marker: str) -> Expected:
    """Open a session, deliver ``stream`` right behind the head, cut as
    given, and compare what the server did with what the reference
    reader expects."""
    expected = Reader(compression, fmt == "json", allow_binary).read(stream)
    with txaio_clock() as clock, captured_events() as events:
        factory = make_factory(
            clock, FixedAuthenticator(ALICE),
            limits={"max_frame_size": MAX_FRAME, "max_message_size": MAX_MESSAGE,
                    "max_fragments": MAX_FRAGMENTS, "compression": compression,
                    "close_timeout": CLOSE_TIMEOUT},
            ratelimit={"messages_per_second": 1, "message_burst": MESSAGE_BURST,
                       "bytes_burst": 2**20},
            messages={"format": fmt, "allow_binary": allow_binary})
        proto, transport = connect(factory)
        for chunk in segment(head(compression) + stream, cuts, dribble):
            proto.dataReceived(chunk)
            _assert_bounded(proto, chunk)
        clock.advance(CLOSE_TIMEOUT + 0.1)
        parsed = read_response(transport.value())
        assert parsed is not None
        response, after = parsed
        assert response.status == 101
        assert any("permessage-deflate" in v for v in
                   response.header("Sec-WebSocket-Extensions")) == compression
        frames, rest = read_server_frames(after)
        assert rest == b""
        assert_clean_log(events, marker)
        check_against(expected, frames, proto, transport)
        proto.connectionLost(Failure(ConnectionDone()))
        assert_released(factory, clock)
        delivered = [(1 if c[2] is False else 2, c[1]) for c in factory.calls
                     if c[0] == "message"]
        if expected.exact:
            assert delivered == [s for s in expected.sent if s[0] != 10]
        assert factory.calls[-1][0] == "close"
    return expected


def _assert_bounded(proto: Any, chunk: bytes) -> None:
    """README, Session: a frame is refused from its header, a message at
    max_message_size (after inflation, plus the one octet that proves it
    too big), a control frame at 125 octets; once closing, what is left
    of a read is not kept beyond the next one."""
    if proto.state == proto.STATE_OPEN:
        assert len(proto.data) < 14
    elif proto.state == proto.STATE_CLOSING:
        assert len(proto.data) < 14 + len(chunk)
    held = sum(len(c) for name in ("frame_data", "message_data", "control_frame_data")
               for c in (getattr(proto, name, None) or ()))
    assert held <= MAX_MESSAGE + 1 + 125


def check_against(expected: Expected, frames: list[Any], proto: Any,
                  transport: Any) -> None:
    sent = []
    closes = []
    for f in frames:
        assert f.fin
        if closes:
            raise AssertionError(f"frame after the close frame: {f}")
        if f.opcode == 8:
            closes.append(f.payload)
        elif f.rsv == 4:
            sent.append((f.opcode, inflate(f.payload)))
        else:
            assert f.rsv == 0
            sent.append((f.opcode, f.payload))
    if expected.exact:
        assert sent == list(expected.sent)
    if expected.end == "open" and expected.exact:
        assert closes == []
        assert proto.state == proto.STATE_OPEN
        assert not transport.disconnecting
        return
    if expected.end == "open":
        return
    assert len(closes) == 1, (expected, closes)
    payload = closes[0]
    code = struct.unpack("!H", payload[:2])[0] if payload else None
    event(f"{expected.end} {code}")
    if expected.exact:
        assert code in expected.codes, (code, expected)
    else:
        assert code in {None, 1000, 1002, 1003, 1007, 1008, 1009, *expected.codes}
    assert FIXED_REASON.fullmatch(payload[2:]), payload
    # Nothing lingers: the server dropped TCP, or its close timer did.
    assert transport.disconnected


# -- the tests -----------------------------------------------------------------------


# Separate functions, not pytest.mark.parametrize: pytest-twisted wraps a
# hypothesis test's inner function once per parametrized item, and the
# second wrapping fails ("blockon cannot be called from the twisted greenlet").


def frame_sequences(compression: bool, data: st.DataObject, fmt: str,
                    allow_binary: bool, cuts: list[int], dribble: int) -> None:
    marker = data.draw(markers)
    stream = data.draw(client_streams(marker, compression))
    expected = run_session(stream, cuts, dribble, compression=compression, fmt=fmt,
                           allow_binary=allow_binary, marker=marker)
    event(f"{expected.end}, {len(expected.sent)} frames sent")


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(["any", "json"]), allow_binary=st.booleans(),
       cuts=cut_lists, dribble=dribbles)
def test_frame_sequences_are_read_as_the_rfc_and_readme_say(
    data: st.DataObject, fmt: str, allow_binary: bool, cuts: list[int], dribble: int
) -> None:
    """
    Any frame sequence, in any segmentation, JSON required or not: the
    messages the reference reader accepts reach the application (and come
    back), pings are answered, and the session stays open or ends with a
    documented code.
    """
    frame_sequences(False, data, fmt, allow_binary, cuts, dribble)


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(["any", "json"]), allow_binary=st.booleans(),
       cuts=cut_lists, dribble=dribbles)
def test_compressed_frame_sequences_are_read_as_the_rfc_and_readme_say(
    data: st.DataObject, fmt: str, allow_binary: bool, cuts: list[int], dribble: int
) -> None:
    """The same with permessage-deflate: sizes count after inflation,
    corrupt deflate data is 1007, compressed control frames are 1002."""
    frame_sequences(True, data, fmt, allow_binary, cuts, dribble)


@FUZZ
@given(noise=st.binary(max_size=300), compression=st.booleans(), cuts=cut_lists,
       dribble=dribbles)
@example(noise=head(False), compression=False, cuts=[], dribble=0).via(
    "a second upgrade request pipelined behind the first is a 1002")
def test_noise_after_the_upgrade_never_breaks_the_server(
    noise: bytes, compression: bool, cuts: list[int], dribble: int
) -> None:
    """Plain random bytes as frames, in any segmentation."""
    run_session(noise, cuts, dribble, compression=compression, fmt="any",
                allow_binary=True, marker="Q" * 16)
