"""
permessage-deflate (RFC 7692) inflation, bounded: with compression on,
what counts against ``max_message_size`` is the *decompressed* size of a
message, counted across all of its frames, and the server never inflates
more than that (plus one octet) for a message, however small and however
well-compressed the input.  (Negotiation is :mod:`securews.wire.deflate_offer`'s.)

What Autobahn 26.10.2 already does, and what is left to securews:

* It passes each compressed chunk to the extension with the remaining
  budget (``max_output_len``) and fails the connection with 1009 when the
  extension raises :class:`~autobahn.exception.PayloadExceededError`; the
  stock deflate extension inflates at most that budget per call.
* Its deflate extension asks zlib for exactly the budget and calls the
  message too big only when input is left over.  When zlib stops at the
  budget with all input consumed but output still pending, the message
  is delivered silently cut to the budget (the rest is inflated and
  dropped at the end of the message).  :class:`BoundedPerMessageDeflate`
  asks for one octet more than the budget, so more output always means
  too big.
* Once the connection is failed, Autobahn keeps passing the rest of the
  failed message (later TCP segments, continuation frames) to the
  extension, each with a fresh-looking budget, so a peer can make the
  server inflate up to ``max_message_size`` per segment until the close
  timeout.  :class:`BoundedPerMessageDeflate` inflates nothing more once
  it has said "too big".
* Autobahn counts a compressed frame's *compressed* length against the
  message limit until the frame's last octet has arrived, so a message
  just under the limit whose compressed tail is longer than its inflated
  tail is refused depending on TCP segmentation.  :func:`exact_message_size`
  is the fix; it must be used by the protocol (see its docstring).

The extension is Autobahn's class, specialised, over zlib; the Autobahn
state it touches is reached through :mod:`securews.wire._autobahn`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from autobahn.exception import PayloadCorruptError, PayloadExceededError
from autobahn.websocket.compress import PerMessageDeflate

from securews.wire._autobahn import (
    deflate_in_use,
    deflate_is_server,
    pending_compressed_octets,
    per_message_compress,
    replace_per_message_compress,
)

__all__ = [
    "BoundedPerMessageDeflate",
    "exact_message_size",
    "install_bounded_deflate",
]

#: RFC 7692 7.2.2: the receiver appends this to every compressed message.
_TAIL = b"\x00\x00\xff\xff"

# Autobahn's (unannotated) implementations, called through Any.
_DEFLATE_INIT: Any = PerMessageDeflate.__init__
_DEFLATE_END_COMPRESS: Any = PerMessageDeflate.end_compress_message


class BoundedPerMessageDeflate(PerMessageDeflate):
    """
    Autobahn's ``permessage-deflate`` extension with inflation bounded
    exactly.

    Each message may inflate to ``max_message_size`` octets, counted over
    all its frames.  zlib is asked for at most one octet more than what is
    left, so a message that is too big is detected having inflated at most
    ``max_message_size + 1`` octets, and is never cut short silently.
    After that the extension is spent: every later call raises
    ``PayloadExceededError`` without inflating (the protocol is failing
    the connection anyway).

    Input that is not valid deflate data, data after a final deflate
    block, and a message whose appended RFC 7692 tail produces output
    (it did not end on a block boundary) raise ``PayloadCorruptError``
    (Autobahn answers 1007).

    No window is kept between messages when the direction has no context
    takeover: the inflater is released at the end of each message, the
    deflater after each message sent.

    :ivar inflated_octets: every octet zlib produced on this connection,
        including the one octet that proves a message too big.
    :ivar too_big: set once a message exceeded the limit.
    """

    def __init__(self, is_server: bool, server_no_context_takeover: bool,
                 client_no_context_takeover: bool, server_max_window_bits: int,
                 client_max_window_bits: int, mem_level: int | None,
                 max_message_size: int) -> None:
        if isinstance(max_message_size, bool) or not isinstance(max_message_size, int) \
                or max_message_size < 0:
            raise ValueError(f"max_message_size must be a non-negative integer, "
                             f"got {max_message_size!r}")
        _DEFLATE_INIT(self, is_server, server_no_context_takeover,
                      client_no_context_takeover, server_max_window_bits,
                      client_max_window_bits, mem_level, max_message_size)
        self.max_message_size: int = max_message_size
        self.inflated_octets = 0
        self.too_big = False
        self._decompressor: Any = None
        self._compressor: Any = None
        self._decompress_message_size: int = 0

    @classmethod
    def from_extension(cls, pmce: PerMessageDeflate,
                       max_message_size: int) -> BoundedPerMessageDeflate:
        """The bounded twin of a negotiated stock extension, same parameters."""
        limit = pmce.max_message_size
        budget = max_message_size if limit is None else min(limit, max_message_size)
        return cls(deflate_is_server(pmce), pmce.server_no_context_takeover,
                   pmce.client_no_context_takeover, pmce.server_max_window_bits,
                   pmce.client_max_window_bits, pmce.mem_level, budget)

    # Which direction is which: a server inflates what the client sent.

    @property
    def _inflate_no_context_takeover(self) -> bool:
        return bool(self.client_no_context_takeover if self._is_server
                    else self.server_no_context_takeover)

    @property
    def _inflate_window_bits(self) -> int:
        return int(self.client_max_window_bits if self._is_server
                   else self.server_max_window_bits)

    @property
    def _deflate_no_context_takeover(self) -> bool:
        return bool(self.server_no_context_takeover if self._is_server
                    else self.client_no_context_takeover)

    # -- receiving ---------------------------------------------------------

    def start_decompress_message(self) -> None:
        self._decompress_message_size = 0
        if self.too_big:
            return
        d = self._decompressor
        if d is None or d.eof or self._inflate_no_context_takeover:
            self._decompressor = zlib.decompressobj(-self._inflate_window_bits)

    def _exceeded(self) -> PayloadExceededError:
        self.too_big = True
        self._decompressor = None
        return PayloadExceededError(
            f"message inflates to more than {self.max_message_size} octets")

    def decompress_message_data(self, data: bytes,
                                max_output_len: int | None = None) -> bytes:
        """
        Inflate one chunk of the current message.

        :param max_output_len: what the protocol still allows for this
            message; the smaller of it and this extension's own remaining
            budget applies.
        :raises PayloadExceededError: the message would inflate beyond the
            budget; at most one octet beyond it was inflated.
        :raises PayloadCorruptError: not valid deflate data.
        """
        if self.too_big:
            raise PayloadExceededError("message already exceeded the limit")
        d = self._decompressor
        if d is None:
            raise PayloadCorruptError("compressed data outside a message")
        budget = self.max_message_size - self._decompress_message_size
        if max_output_len is not None:
            budget = min(budget, max_output_len)
        budget = max(budget, 0)
        pieces: list[bytes] = []
        produced = 0
        try:
            while True:
                # max_length is never 0 here (0 would mean "unlimited").
                piece = d.decompress(data, budget - produced + 1)
                produced += len(piece)
                self.inflated_octets += len(piece)
                if produced > budget:
                    raise self._exceeded()
                pieces.append(piece)
                tail = d.unconsumed_tail
                if not tail:
                    break
                if not piece:
                    raise PayloadCorruptError("inflater made no progress")
                data = tail
        except zlib.error as e:
            raise PayloadCorruptError(f"invalid permessage-deflate data: {e}") from e
        if d.unused_data:
            raise PayloadCorruptError("data after the final deflate block")
        self._decompress_message_size += produced
        return b"".join(pieces)

    def end_decompress_message(self) -> None:
        """
        Finish the message: feed the RFC 7692 tail, which must produce
        nothing; release the inflater when there is no context takeover.
        """
        d = self._decompressor
        if self.too_big or d is None:
            return
        if not d.eof:
            try:
                rest = d.decompress(_TAIL, 1)
            except zlib.error as e:
                raise PayloadCorruptError(
                    f"invalid permessage-deflate data: {e}") from e
            self.inflated_octets += len(rest)
            if rest or d.unconsumed_tail:
                raise PayloadCorruptError(
                    "compressed message does not end on a deflate block boundary")
        if self._inflate_no_context_takeover:
            self._decompressor = None

    # -- sending -----------------------------------------------------------

    def end_compress_message(self) -> bytes:
        data: bytes = _DEFLATE_END_COMPRESS(self)
        if self._deflate_no_context_takeover:
            self._compressor = None
        return data


def install_bounded_deflate(protocol: Any, max_message_size: int
                            ) -> BoundedPerMessageDeflate | None:
    """
    Replace the ``permessage-deflate`` extension Autobahn negotiated for
    ``protocol`` with :class:`BoundedPerMessageDeflate`, same parameters.

    Autobahn builds the extension object from its own registry, not from
    the acceptance, so this is the hook: call it from ``onOpen``, which
    Autobahn runs after the handshake and before it reads any frame.

    :returns: the new extension, or ``None`` when none was negotiated.
    :raises TypeError: when the negotiated extension is not
        permessage-deflate (securews never accepts another), or a
        message has already started.
    """
    pmce = per_message_compress(protocol)
    if pmce is None:
        return None
    if isinstance(pmce, BoundedPerMessageDeflate):
        return pmce
    if type(pmce) is not PerMessageDeflate:
        raise TypeError(f"refusing to run with compression extension {pmce!r}")
    if deflate_in_use(pmce):
        raise TypeError("install_bounded_deflate must run before any message")
    bounded = BoundedPerMessageDeflate.from_extension(pmce, max_message_size)
    replace_per_message_compress(protocol, pmce, bounded)
    return bounded


# -- the protocol's count of a compressed message ----------------------------


@contextmanager
def exact_message_size(protocol: Any) -> Iterator[None]:
    """
    While Autobahn checks a compressed message's size, count only what
    was really inflated.

    Autobahn adds a compressed frame's whole *compressed* length to
    ``message_data_total_length`` when the frame begins and swaps it for
    the inflated length chunk by chunk as the frame's octets arrive.  In
    between, the not-yet-arrived compressed octets count as if they were
    message octets: a message that fits is refused with 1009 when a frame
    whose compressed tail is longer than its inflated tail (incompressible
    data) arrives in more than one TCP read near the limit; at frame
    begin, the next frame's compressed length is checked against the
    limit before a single octet of it is inflated.

    Wrap the two Autobahn calls that count, in the protocol class::

        def onMessageFrameBegin(self, length: int) -> None:
            with exact_message_size(self):
                super().onMessageFrameBegin(length)
            ...

        def onFrameData(self, payload: bytes) -> bool | None:
            with exact_message_size(self):
                return super().onFrameData(payload)

    For uncompressed messages and control frames it changes nothing;
    nested uses count once.
    The compressed frame stays bounded by ``max_frame_size`` (checked at
    frame begin as before) and the inflated message by the extension.
    """
    pending = pending_compressed_octets(protocol)
    if not pending or getattr(protocol, "_securews_exact_size", False):
        yield  # nothing pending, or already inside a wrapper: count once
        return
    protocol._securews_exact_size = True
    protocol.message_data_total_length -= pending
    try:
        yield
    finally:
        protocol.message_data_total_length += pending
        protocol._securews_exact_size = False
