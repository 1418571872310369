"""
permessage-deflate: negotiation, and inflation bounded by the
*decompressed* ``max_message_size``.

The wire tests drive the real factory and protocol in memory (see
``memory.py``), with the client's frames deflated by zlib; the rest test
:mod:`securews.wire.deflate` on zlib alone.  How much was inflated is read
from the extension's own counter, not from process memory.
"""

from __future__ import annotations

import functools
import os
import struct
import types
import zlib
from typing import Any

import pytest
import pytest_twisted
from autobahn.exception import PayloadCorruptError, PayloadExceededError
from autobahn.websocket.compress import (
    PERMESSAGE_COMPRESSION_EXTENSION,
    PerMessageDeflate,
    PerMessageDeflateOffer,
    PerMessageDeflateResponse,
)
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosedError
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect as ws_connect

from securews.auth.anonymous import AnonymousAuthenticator
from securews.testing import make_config
from securews.wire.deflate import (
    BoundedPerMessageDeflate,
    exact_message_size,
    install_bounded_deflate,
)
from securews.wire.deflate_offer import DEFAULT_WINDOW_BITS, accept_offer, refuse_offers
from securews.wire.factory import SecureServerFactory
from tests.support.common import CertFiles, websocket_client_tls
from tests.support.memory import ORIGIN, connect, make_factory, request

TAIL = b"\x00\x00\xff\xff"
KIB = 1024
LIMIT = 64 * KIB
#: What browsers and the ``websockets`` client offer.
BROWSER_OFFER = "permessage-deflate; client_max_window_bits"
MESSAGE_TOO_BIG = 1009
INVALID_PAYLOAD = 1007
PROTOCOL_ERROR = 1002


# -- client-side helpers --------------------------------------------------------


def deflate(data: bytes, wbits: int = DEFAULT_WINDOW_BITS) -> bytes:
    """One message compressed as RFC 7692 says: sync flush, tail removed."""
    c = zlib.compressobj(9, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


@functools.cache
def zero_bomb() -> bytes:
    """100 MiB of zeros, deflated (about 100 KB)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -DEFAULT_WINDOW_BITS)
    block = bytes(2**20)
    out = [c.compress(block) for _ in range(100)]
    out.append(c.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(out)[:-4]


def frame(payload: bytes, opcode: int = 0x2, *, fin: bool = True,
          rsv1: bool = False) -> bytes:
    """A masked client frame of any length."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += struct.pack("!B", 0x80 | n)
    elif n < 65536:
        head += struct.pack("!BH", 0x80 | 126, n)
    else:
        head += struct.pack("!BQ", 0x80 | 127, n)
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
        n, "big") if n else b""
    return head + mask + body


def fragments(pieces: list[bytes], opcode: int = 0x2) -> list[bytes]:
    """One compressed message as consecutive frames (RSV1 on the first)."""
    last = len(pieces) - 1
    return [frame(p, opcode if i == 0 else 0x0, fin=i == last, rsv1=i == 0)
            for i, p in enumerate(pieces)]


def server_frames(data: bytes) -> list[tuple[int, bool, bool, bytes]]:
    """(opcode, fin, rsv1, payload) of each (unmasked) server frame."""
    frames = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert not b1 & 0x80, "server frames are not masked"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            (n,), i = struct.unpack("!H", data[i:i + 2]), i + 2
        elif n == 127:
            (n,), i = struct.unpack("!Q", data[i:i + 8]), i + 8
        frames.append((b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), data[i:i + n]))
        i += n
    return frames


def close_code(data: bytes) -> int | None:
    for opcode, _, _, payload in server_frames(data):
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0])
    return None


def inflate_reply(payload: bytes) -> bytes:
    """A server message: a fresh inflater each time (no context takeover)."""
    d = zlib.decompressobj(-15)
    return d.decompress(payload + TAIL)


# -- the real protocol in memory --------------------------------------------------


def with_exact_size(proto: Any) -> None:
    """The overrides the protocol class should have, put on one instance."""
    cls = type(proto)

    def on_frame_data(self: Any, payload: bytes) -> bool | None:
        with exact_message_size(self):
            result: bool | None = cls.onFrameData(self, payload)
            return result

    def on_message_frame_begin(self: Any, length: int) -> None:
        with exact_message_size(self):
            cls.onMessageFrameBegin(self, length)

    proto.onFrameData = types.MethodType(on_frame_data, proto)
    proto.onMessageFrameBegin = types.MethodType(on_message_frame_begin, proto)


class Session:
    """One handshaken connection; ``send`` feeds bytes, one read each."""

    def __init__(self, clock: Clock, *, limit: int = LIMIT, frame_limit: int = LIMIT,
                 compression: bool = True, offer: str | None = BROWSER_OFFER,
                 exact: bool = True) -> None:
        factory = make_factory(clock, AnonymousAuthenticator(), limits={
            "max_message_size": limit, "max_frame_size": frame_limit,
            "compression": compression})
        self.factory = factory
        self.proto, self.transport = connect(factory)
        if exact:
            with_exact_size(self.proto)
        extra = (f"Sec-WebSocket-Extensions: {offer}",) if offer else ()
        self.proto.dataReceived(request(extra=extra))
        head = self.transport.value().partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 101"), head
        self.head = head.decode("latin-1")
        # What the protocol should do in onOpen (a no-op if it already has).
        self.pmce = install_bounded_deflate(self.proto, limit)
        self.transport.clear()

    @property
    def extensions(self) -> str | None:
        for line in self.head.split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "sec-websocket-extensions":
                return value.strip()
        return None

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.proto.dataReceived(chunk)

    @property
    def messages(self) -> list[bytes]:
        return [call[1] for call in self.factory.calls if call[0] == "message"]

    @property
    def close_code(self) -> int | None:
        return close_code(self.transport.value())


def reads(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# -- negotiation ------------------------------------------------------------------


def offer(**params: Any) -> PerMessageDeflateOffer:
    parsed: PerMessageDeflateOffer = PerMessageDeflateOffer.parse(
        {name: [value] for name, value in params.items()})
    return parsed


def test_other_compression_extensions_are_never_accepted() -> None:
    """bzip2, snappy and brotli inflate without a cap: refused, always."""
    accept = accept_offer(LIMIT)
    others = [entry["Offer"].parse({})
              for name, entry in PERMESSAGE_COMPRESSION_EXTENSION.items()
              if name != "permessage-deflate"]
    assert others, "bz2 is in the standard library, so at least bzip2 is offered"
    assert accept(others) is None
    assert accept([]) is None
    assert refuse_offers([offer()]) is None
    # A deflate offer after them is the one taken.
    chosen = accept([*others, offer()])
    assert chosen is not None
    assert chosen.EXTENSION_NAME == "permessage-deflate"


@pytest.mark.parametrize(("params", "answer"), [
    ({}, "permessage-deflate; server_no_context_takeover; "
         "client_no_context_takeover; server_max_window_bits=12"),
    ({"client_max_window_bits": True},
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=12; client_max_window_bits=12"),
    ({"server_no_context_takeover": True, "client_no_context_takeover": True},
     "permessage-deflate; server_no_context_takeover; "
     "client_no_context_takeover; server_max_window_bits=12"),
    ({"server_max_window_bits": "10"},
     "permessage-deflate; server_no_context_takeover; "
     "client_no_context_takeover; server_max_window_bits=10"),
    ({"server_max_window_bits": "15", "client_max_window_bits": True},
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=12; client_max_window_bits=12"),
])
def test_answer_is_no_context_takeover_with_bounded_windows(
    params: dict[str, Any], answer: str
) -> None:
    accepted = accept_offer(LIMIT)([offer(**params)])
    assert accepted is not None
    assert accepted.get_extension_string() == answer
    # The extension Autobahn builds from it keeps no window between
    # messages and compresses with at most 12 bits.
    pmce = PerMessageDeflate.create_from_offer_accept(True, accepted)
    assert pmce.server_no_context_takeover is True
    assert pmce.client_no_context_takeover is True
    assert pmce.server_max_window_bits <= DEFAULT_WINDOW_BITS
    assert pmce.max_message_size == LIMIT
    expected_client = DEFAULT_WINDOW_BITS if "client_max_window_bits" in params else 15
    assert pmce.client_max_window_bits == expected_client
    # Clients parse the answer: Autobahn's ...
    response = PerMessageDeflateResponse.parse(
        {name: [value] for name, value in _params(answer)})
    assert response.server_no_context_takeover
    assert response.client_no_context_takeover


def _params(answer: str) -> list[tuple[str, str | bool]]:
    out: list[tuple[str, str | bool]] = []
    for part in answer.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        out.append((name, value or True))
    return out


def test_websockets_client_accepts_the_answer() -> None:
    """The python ``websockets`` client (default offer) takes our answer."""
    client = ClientPerMessageDeflateFactory()
    offered = dict(client.get_request_params())
    assert "client_max_window_bits" in offered
    accepted = accept_offer(LIMIT)([offer(client_max_window_bits=True)])
    assert accepted is not None
    params = [(name, None if value is True else str(value))
              for name, value in _params(accepted.get_extension_string())]
    extension = client.process_response_params(params, [])
    assert extension.remote_no_context_takeover  # the server's
    assert extension.local_no_context_takeover  # the client's
    assert extension.local_max_window_bits == DEFAULT_WINDOW_BITS
    assert extension.remote_max_window_bits == DEFAULT_WINDOW_BITS


@pytest.mark.parametrize("kw", [
    {"max_window_bits": 8}, {"max_window_bits": 16}, {"mem_level": 0},
    {"mem_level": 10}, {"max_window_bits": True},
])
def test_accept_offer_checks_its_parameters(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        accept_offer(LIMIT, **kw)
    with pytest.raises(ValueError, match="max_message_size"):
        accept_offer(0)


def test_compression_is_off_unless_accepted(clock: Clock) -> None:
    """The factory's default answers no extension; a compressed frame is 1002."""
    s = Session(clock, compression=False)
    assert s.extensions is None
    assert s.pmce is None
    s.send(frame(deflate(b"hello"), 0x1, rsv1=True))
    assert s.close_code == PROTOCOL_ERROR
    assert s.messages == []


def test_handshake_answers_the_offer(clock: Clock) -> None:
    s = Session(clock)
    assert s.extensions == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=12; client_max_window_bits=12")
    assert isinstance(s.pmce, BoundedPerMessageDeflate)
    assert s.proto.websocket_extensions_in_use == [s.pmce]


# -- messages that fit ------------------------------------------------------------


def test_compressed_messages_round_trip(clock: Clock) -> None:
    """The echo comes back compressed; each reply inflates on its own."""
    s = Session(clock)
    texts = ["hello, compressed world " * 40,
             "a second message, no shared window " * 30]
    for text in texts:
        s.send(frame(deflate(text.encode()), 0x1, rsv1=True))
    assert s.messages == [t.encode() for t in texts]
    replies = [f for f in server_frames(s.transport.value()) if f[0] == 0x1]
    assert len(replies) == 2
    for (_, fin, rsv1, payload), text in zip(replies, texts, strict=True):
        assert fin
        assert rsv1, "the reply is compressed"
        assert len(payload) < len(text)
        assert inflate_reply(payload) == text.encode()
    assert s.close_code is None
    # Nothing is kept between messages in either direction.
    assert s.pmce is not None
    assert s.pmce._decompressor is None
    assert s.pmce._compressor is None


def test_uncompressed_messages_still_work(clock: Clock) -> None:
    s = Session(clock)
    s.send(frame(b"plain", 0x1))
    assert s.messages == [b"plain"]


def mixed(size: int) -> bytes:
    """Compressible first half, incompressible second half."""
    return bytes(size // 2) + os.urandom(size - size // 2)


@pytest.mark.parametrize("read_size", [None, 1038, 4096, 1])
def test_message_of_exactly_the_limit_passes(clock: Clock,
                                            read_size: int | None) -> None:
    """However TCP cuts the frame (with the exact_message_size overrides)."""
    s = Session(clock)
    data = mixed(LIMIT)
    wire = frame(deflate(data), rsv1=True)
    s.send(*([wire] if read_size is None else reads(wire, read_size)))
    assert s.close_code is None
    assert s.messages == [data]
    assert s.pmce is not None
    assert s.pmce.inflated_octets == LIMIT


def test_message_of_exactly_the_limit_in_many_frames_passes(clock: Clock) -> None:
    s = Session(clock)
    data = mixed(LIMIT)
    compressed = deflate(data)
    s.send(b"".join(fragments(reads(compressed, len(compressed) // 20 + 1))))
    assert s.close_code is None
    assert s.messages == [data]


# -- bombs --------------------------------------------------------------------------


def assert_refused_within_budget(s: Session, budget: int = LIMIT) -> None:
    assert s.close_code == MESSAGE_TOO_BIG
    assert s.messages == []
    assert s.pmce is not None
    assert s.pmce.too_big
    assert s.pmce.inflated_octets <= budget + 1
    assert s.pmce._decompressor is None, "the inflater is released at once"


def test_one_kib_frame_of_a_bomb_is_1009_within_budget(clock: Clock) -> None:
    """1 KiB of 100 MiB of zeros (about 1 MiB if inflated), limit 64 KiB."""
    s = Session(clock)
    s.send(frame(zero_bomb()[:KIB], rsv1=True))
    assert_refused_within_budget(s)


def test_whole_100_mib_bomb_in_one_frame_is_1009_within_budget(clock: Clock) -> None:
    limit = 128 * KIB
    s = Session(clock, limit=limit, frame_limit=limit)
    bomb = zero_bomb()
    assert len(bomb) < limit
    s.send(frame(bomb, rsv1=True))
    assert_refused_within_budget(s, limit)


@pytest.mark.parametrize("one_read", [True, False])
def test_bomb_across_many_frames_of_one_message_is_1009(clock: Clock,
                                                       one_read: bool) -> None:
    """
    The budget is the message's, not each frame's; and nothing the peer
    sends after the refusal (more frames of that message) is inflated.
    """
    s = Session(clock)
    pieces = reads(zero_bomb()[:6000], 100)
    wire = fragments(pieces)
    s.send(*([b"".join(wire)] if one_read else wire))
    assert_refused_within_budget(s)


def test_bomb_frame_in_small_tcp_reads_inflates_only_the_budget(clock: Clock) -> None:
    s = Session(clock)
    s.send(*reads(frame(zero_bomb()[:60000], rsv1=True), KIB))
    assert_refused_within_budget(s)


def test_bomb_in_many_small_frames_with_each_under_the_limit(clock: Clock) -> None:
    """Each frame inflates to ~16 KiB; the fifth pushes the message over."""
    s = Session(clock)
    data = bytes(16 * KIB)
    c = zlib.compressobj(9, zlib.DEFLATED, -DEFAULT_WINDOW_BITS)
    pieces = [c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH) for _ in range(8)]
    pieces[-1] = pieces[-1][:-4]
    s.send(*fragments(pieces))
    assert_refused_within_budget(s)


def test_one_octet_over_is_refused_not_cut(clock: Clock) -> None:
    """
    65537 octets of 'a' against 64 KiB: zlib stops at the budget with all
    input used but output pending; Autobahn's own extension delivers the
    first 65536 octets as if that were the message.
    """
    s = Session(clock)
    s.send(frame(deflate(b"a" * (LIMIT + 1)), 0x1, rsv1=True))
    assert_refused_within_budget(s)


def test_corrupt_deflate_data_is_1007(clock: Clock) -> None:
    s = Session(clock)
    s.send(frame(b"\xff" * 64, rsv1=True))
    assert s.close_code == INVALID_PAYLOAD
    assert s.messages == []


# -- the extension on zlib alone ----------------------------------------------------


def bounded(limit: int, *, window: int = 15) -> BoundedPerMessageDeflate:
    return BoundedPerMessageDeflate(True, True, True, window, window, None, limit)


def receive(pmce: BoundedPerMessageDeflate, chunks: list[bytes],
            exact_budget: bool = False) -> bytes:
    pmce.start_decompress_message()
    out = b""
    for chunk in chunks:
        remaining = pmce.max_message_size - len(out) if exact_budget else None
        out += pmce.decompress_message_data(chunk, max_output_len=remaining)
    pmce.end_decompress_message()
    return out


payloads = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=8),
              st.integers(1, 4000)),
    st.builds(lambda a, n, b: a + bytes(n) + b, st.binary(max_size=300),
              st.integers(0, 20000), st.binary(max_size=300)),
)


@given(payload=payloads, limit=st.integers(0, 24000), window=st.integers(9, 15),
       data=st.data(), exact_budget=st.booleans())
def test_inflater_returns_the_message_or_too_big_never_more(
    payload: bytes, limit: int, window: int, data: st.DataObject, exact_budget: bool
) -> None:
    """
    Any payload, any limit, cut into any frames: exactly the payload when
    it fits, PayloadExceededError when it does not, and never more than
    limit + 1 octets inflated.
    """
    compressed = deflate(payload, window)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(compressed)), max_size=6)))
    chunks = [compressed[a:b] for a, b in
              zip([0, *cuts], [*cuts, len(compressed)], strict=True)]
    pmce = bounded(limit, window=window)
    if len(payload) <= limit:
        assert receive(pmce, chunks, exact_budget) == payload
        assert pmce.inflated_octets == len(payload)
    else:
        with pytest.raises(PayloadExceededError):
            receive(pmce, chunks, exact_budget)
        assert pmce.too_big
    assert pmce.inflated_octets <= limit + 1


def test_the_smaller_of_the_two_budgets_applies() -> None:
    pmce = bounded(1000)
    pmce.start_decompress_message()
    with pytest.raises(PayloadExceededError):
        pmce.decompress_message_data(deflate(b"x" * 600), max_output_len=500)
    assert pmce.inflated_octets == 501


def test_after_too_big_nothing_more_is_inflated() -> None:
    pmce = bounded(100)
    pmce.start_decompress_message()
    with pytest.raises(PayloadExceededError):
        pmce.decompress_message_data(zero_bomb()[:200])
    spent = pmce.inflated_octets
    assert spent == 101
    for _ in range(3):
        with pytest.raises(PayloadExceededError):
            pmce.decompress_message_data(zero_bomb()[200:400])
        pmce.end_decompress_message()
        pmce.start_decompress_message()
    assert pmce.inflated_octets == spent


def test_budget_is_per_message() -> None:
    pmce = bounded(1000)
    for _ in range(5):
        assert receive(pmce, [deflate(b"y" * 1000)]) == b"y" * 1000
    assert pmce.inflated_octets == 5000


def test_final_block_message_is_accepted_and_trailing_data_is_not() -> None:
    """A sender may end a message with BFINAL=1 instead of a sync flush."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    final = c.compress(b"z" * 500) + c.flush(zlib.Z_FINISH)
    pmce = bounded(1000)
    assert receive(pmce, [final]) == b"z" * 500
    assert receive(pmce, [final]) == b"z" * 500
    with pytest.raises(PayloadCorruptError, match="after the final"):
        receive(pmce, [final + b"\x00"])


def test_with_context_takeover_the_window_is_kept_and_renewed_after_a_final_block(
) -> None:
    """(securews never negotiates it; the extension still does it right.)"""
    pmce = BoundedPerMessageDeflate(True, False, False, 15, 15, None, 1000)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(b"shared words " * 20) + c.flush(zlib.Z_SYNC_FLUSH)
    second = c.compress(b"shared words " * 20) + c.flush(zlib.Z_SYNC_FLUSH)
    assert len(second) < len(first)  # refers back into the first message
    assert receive(pmce, [first[:-4]]) == b"shared words " * 20
    assert receive(pmce, [second[:-4]]) == b"shared words " * 20
    final = zlib.compressobj(9, zlib.DEFLATED, -15)
    ended = final.compress(b"q" * 50) + final.flush(zlib.Z_FINISH)
    assert receive(pmce, [ended]) == b"q" * 50
    assert receive(pmce, [ended]) == b"q" * 50  # a new stream after BFINAL


def test_message_not_ending_on_a_block_boundary_is_corrupt() -> None:
    """If the appended tail would add output, the message was cut: 1007."""
    payload = os.urandom(8) * 50
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    for cut in range(5, 12):
        probe = zlib.decompressobj(-15)
        try:
            head = probe.decompress(stream[:-cut])
            rest = probe.decompress(TAIL)
        except zlib.error:
            continue
        if rest:
            break
    else:
        pytest.fail("no cut found whose tail produces output")
    pmce = bounded(10_000)
    pmce.start_decompress_message()
    assert pmce.decompress_message_data(stream[:-cut]) == head
    with pytest.raises(PayloadCorruptError, match="block boundary"):
        pmce.end_decompress_message()


def test_invalid_data_is_payload_corrupt() -> None:
    pmce = bounded(1000)
    pmce.start_decompress_message()
    with pytest.raises(PayloadCorruptError):
        pmce.decompress_message_data(b"\xff" * 16)


def test_install_bounded_deflate() -> None:
    class Proto:
        def __init__(self) -> None:
            self._perMessageCompress: Any = None
            self.websocket_extensions_in_use: list[Any] = []

    proto = Proto()
    assert install_bounded_deflate(proto, LIMIT) is None
    stock = PerMessageDeflate(True, True, True, 12, 12, None, None)
    proto._perMessageCompress = stock
    proto.websocket_extensions_in_use = [stock]
    new = install_bounded_deflate(proto, LIMIT)
    assert isinstance(new, BoundedPerMessageDeflate)
    assert proto._perMessageCompress is new
    assert proto.websocket_extensions_in_use == [new]
    assert (new.server_max_window_bits, new.client_max_window_bits) == (12, 12)
    assert new.max_message_size == LIMIT
    assert install_bounded_deflate(proto, LIMIT) is new
    # A smaller limit already negotiated on the extension wins.
    stock = PerMessageDeflate(True, True, True, 12, 12, None, 1000)
    proto._perMessageCompress = stock
    new = install_bounded_deflate(proto, LIMIT)
    assert new is not None
    assert new.max_message_size == 1000
    # Anything else is a wiring mistake.
    proto._perMessageCompress = object()
    with pytest.raises(TypeError):
        install_bounded_deflate(proto, LIMIT)


# -- a real client over loopback ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_websockets_client_negotiates_and_is_refused_a_bomb(
    certs: CertFiles, serve: Any
) -> None:
    """
    The ``websockets`` client (the offer browsers make) negotiates our
    parameters, round-trips compressed messages, and gets 1009 for 1 MiB
    of zeros (about 1 KiB on the wire) against a 64 KiB limit.
    """
    config = make_config(tls={"cert": str(certs.cert), "key": str(certs.key)},
                         origin={"allowed": [ORIGIN]},
                         limits={"max_message_size": LIMIT, "compression": True})
    factory = SecureServerFactory(config, authenticator=AnonymousAuthenticator())
    server = await serve(factory)
    context = websocket_client_tls(certs.ca_cert)

    def client() -> tuple[str, list[str], int | None]:
        with ws_connect(server.url(), ssl=context, origin=ORIGIN,  # type: ignore[call-overload]
                        max_size=None) as ws:
            header = ws.response.headers["Sec-WebSocket-Extensions"]
            echoes = []
            for text in ("hello " * 200, "again " * 200):
                ws.send(text)
                echoes.append(str(ws.recv(timeout=10)))
            ws.send(bytes(2**20))
            try:
                ws.recv(timeout=10)
            except ConnectionClosedError as e:
                return header, echoes, e.rcvd.code if e.rcvd else None
            return header, echoes, None

    header, echoes, code = await deferToThread(client)
    assert header == ("permessage-deflate; server_no_context_takeover; "
                      "client_no_context_takeover; server_max_window_bits=12; "
                      "client_max_window_bits=12")
    assert echoes == ["hello " * 200, "again " * 200]
    assert code == MESSAGE_TOO_BIG
