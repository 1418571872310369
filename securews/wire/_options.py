"""
The Autobahn options securews sets, pinned: read-only on every protocol.

Autobahn copies each option from the factory onto a protocol that lacks
the attribute and reads it from the protocol from then on, so an
application could lift a limit for its sessions with one assignment.
Here each option is a read-only property reading the factory's pinned
value: assigning one raises.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import attrs
from autobahn.twisted.websocket import WebSocketServerProtocol

__all__ = ["PINNED_OPTIONS", "PinnedOptions", "PinnedOptionsProtocol"]


#: The Autobahn options a SecureServerFactory sets (limits, validation,
#: masking, timers, Origin and proxy trust, compression, the status page).
PINNED_OPTIONS = (
    "webStatus", "failByDrop", "maxFramePayloadSize", "maxMessagePayloadSize",
    "openHandshakeTimeout", "closeHandshakeTimeout", "allowedOrigins",
    "allowNullOrigin", "maxConnections", "trustXForwardedFor", "autoPingInterval",
    "autoPingTimeout", "serveFlashSocketPolicy", "perMessageCompressionAccept",
    "echoCloseCodeReason", "requireMaskedClientFrames", "utf8validateIncoming",
    "versions", "allowedOriginsPatterns",
)
#: A factory's values of :data:`PINNED_OPTIONS`, immutable.
PinnedOptions = attrs.make_class("PinnedOptions", list(PINNED_OPTIONS),
                                 frozen=True, slots=True)


def _pinned(name: str) -> Any:
    """
    A read-only view of the factory's pinned value of option ``name``.

    Autobahn copies each option from the factory onto a protocol that
    lacks the attribute, then reads it from the protocol.  A property
    means the copy never happens and ``self.maxMessagePayloadSize = 0``
    in application code raises (closing the session 1011) instead of
    lifting a limit.  The getter is C code: Autobahn reads some of these
    for every frame.
    """
    return property(attrgetter(f"factory.pinned_options.{name}"),
                    doc=f"Autobahn's ``{name}``, fixed by the settings.")


class PinnedOptionsProtocol(WebSocketServerProtocol):
    """Autobahn's protocol with every option securews sets made read-only."""

    # Read-only: see _pinned.
    webStatus = _pinned("webStatus")
    failByDrop = _pinned("failByDrop")
    maxFramePayloadSize = _pinned("maxFramePayloadSize")
    maxMessagePayloadSize = _pinned("maxMessagePayloadSize")
    openHandshakeTimeout = _pinned("openHandshakeTimeout")
    closeHandshakeTimeout = _pinned("closeHandshakeTimeout")
    allowedOrigins = _pinned("allowedOrigins")
    allowNullOrigin = _pinned("allowNullOrigin")
    maxConnections = _pinned("maxConnections")
    trustXForwardedFor = _pinned("trustXForwardedFor")
    autoPingInterval = _pinned("autoPingInterval")
    autoPingTimeout = _pinned("autoPingTimeout")
    serveFlashSocketPolicy = _pinned("serveFlashSocketPolicy")
    perMessageCompressionAccept = _pinned("perMessageCompressionAccept")
    echoCloseCodeReason = _pinned("echoCloseCodeReason")
    requireMaskedClientFrames = _pinned("requireMaskedClientFrames")
    utf8validateIncoming = _pinned("utf8validateIncoming")
    versions = _pinned("versions")
    allowedOriginsPatterns = _pinned("allowedOriginsPatterns")
