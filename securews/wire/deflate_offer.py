"""
Negotiating permessage-deflate (RFC 7692), off unless ``[limits]
compression = true``.

:func:`accept_offer` accepts ``permessage-deflate`` only (never bzip2,
snappy or brotli), and always answers with both
``server_no_context_takeover`` and ``client_no_context_takeover`` (RFC
7692 7.1.1 lets a server add either unasked), so no LZ77 window is kept
between messages in either direction, and with bounded window bits: the
server compresses with at most ``max_window_bits`` and announces it; the
client is asked for ``client_max_window_bits`` when its offer allows it
(otherwise a client may use 15 bits, the RFC maximum: a 32 KiB window,
held only while a message is being received).

What is inflated, and how it is bounded, is :mod:`securews.wire.deflate`'s.
These are Autobahn's extension classes, specialised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autobahn.websocket.compress import (
    PerMessageCompressOffer,
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)

__all__ = [
    "DEFAULT_MEM_LEVEL",
    "DEFAULT_WINDOW_BITS",
    "AcceptFunction",
    "SecureDeflateOfferAccept",
    "accept_offer",
    "refuse_offers",
]

#: LZ77 window (2**12 = 4 KiB) and zlib memory level the server uses
#: when it compresses; the same conservative choice as the ``websockets``
#: library.  Deflate memory is about ``2**(bits + 2) + 2**(mem_level + 9)``
#: bytes: 32 KiB here against 256 KiB for zlib's defaults (15, 8).
DEFAULT_WINDOW_BITS = 12
DEFAULT_MEM_LEVEL = 5

# Autobahn's (unannotated) implementation, called through Any.
_OFFER_ACCEPT_INIT: Any = PerMessageDeflateOfferAccept.__init__

AcceptFunction = Callable[
    [Sequence[PerMessageCompressOffer]], PerMessageDeflateOfferAccept | None]


class SecureDeflateOfferAccept(PerMessageDeflateOfferAccept):
    """
    A ``permessage-deflate`` acceptance whose response always carries
    ``server_no_context_takeover``, ``client_no_context_takeover`` and the
    server's window bits (Autobahn's own repeats only what the client asked).
    """

    def __init__(self, offer: PerMessageDeflateOffer, *,
                 request_no_context_takeover: bool, request_max_window_bits: int,
                 no_context_takeover: bool, window_bits: int, mem_level: int,
                 max_message_size: int) -> None:
        _OFFER_ACCEPT_INIT(self, offer, request_no_context_takeover,
                           request_max_window_bits, no_context_takeover,
                           window_bits, mem_level, max_message_size)

    def get_extension_string(self) -> str:
        offer = self.offer
        parts = [self.EXTENSION_NAME, "server_no_context_takeover",
                 "client_no_context_takeover"]
        window = self.window_bits or offer.request_max_window_bits
        if window:
            parts.append(f"server_max_window_bits={window}")
        if self.request_max_window_bits:
            parts.append(f"client_max_window_bits={self.request_max_window_bits}")
        return "; ".join(parts)


def _check_bits(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) \
            or not low <= value <= high:
        raise ValueError(
            f"{name} must be an integer from {low} to {high}, got {value!r}")


def accept_offer(max_message_size: int, *,
                 max_window_bits: int = DEFAULT_WINDOW_BITS,
                 mem_level: int = DEFAULT_MEM_LEVEL) -> AcceptFunction:
    """
    The ``perMessageCompressionAccept`` function for a factory with
    compression on.

    It picks the client's first ``permessage-deflate`` offer and ignores
    every other extension.  The answer: no context takeover in either
    direction; the server compresses with ``min(max_window_bits, what the
    client asked)`` window bits and says so; ``client_max_window_bits =
    max_window_bits`` when the client's offer allows that parameter.

    The acceptance also carries ``max_message_size``, so even Autobahn's
    stock extension (if :func:`install_bounded_deflate` is not called)
    counts the inflated size of the whole message against it.

    Autobahn's offer parser drops the value of a client's
    ``client_max_window_bits=N`` hint, so such a client is answered
    ``max_window_bits`` even when N is smaller.  RFC 7692 7.1.2.2 lets a
    server ignore the hint, but the python ``websockets`` client then
    refuses the handshake.  Browsers and ``websockets`` by default offer
    the parameter without a value, which is fine.

    :param max_message_size: the decompressed size limit of one message.
    :param max_window_bits: 9 to 15.
    :param mem_level: zlib memory level for compressing, 1 to 9.
    :raises ValueError: for an out-of-range parameter.
    """
    _check_bits("max_window_bits", max_window_bits, 9, 15)
    _check_bits("mem_level", mem_level, 1, 9)
    if isinstance(max_message_size, bool) or not isinstance(max_message_size, int) \
            or max_message_size < 1:
        raise ValueError(f"max_message_size must be a positive integer, "
                         f"got {max_message_size!r}")

    def accept(offers: Sequence[PerMessageCompressOffer]
               ) -> PerMessageDeflateOfferAccept | None:
        for offer in offers:
            if type(offer) is not PerMessageDeflateOffer:
                continue
            requested = offer.request_max_window_bits
            window = min(max_window_bits, requested) if requested else max_window_bits
            return SecureDeflateOfferAccept(
                offer,
                request_no_context_takeover=True,
                request_max_window_bits=(
                    max_window_bits if offer.accept_max_window_bits else 0),
                no_context_takeover=True,
                window_bits=window,
                mem_level=mem_level,
                max_message_size=max_message_size,
            )
        return None

    return accept


def refuse_offers(offers: Sequence[PerMessageCompressOffer]) -> None:
    """The ``perMessageCompressionAccept`` function with compression off."""
    return None
