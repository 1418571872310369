"""
The Autobahn options securews sets, pinned: read-only on every protocol.

Autobahn copies each option from the factory onto a protocol that lacks
the attribute and reads it from the protocol from then on, so an
application could lift a limit for its sessions with one assignment.
Here each option is a read-only property reading the factory's pinned
value: assigning one raises.

Autobahn's copying loop also formats every option of every connection
for a debug line (``pprint.pformat`` of the list: 1.35 million
instructions per connection, more than the rest of Autobahn's handshake
together), which securews's logger throws away.  So the protocol's
``CONFIG_ATTRS`` is empty: the pinned options need no copy, and the
others (:data:`FACTORY_OPTIONS`) are not copied either.  Each reads the
factory's value until a session assigns its own (as Autobahn's
``setTrackTimings`` does): ten fewer entries in every connection's
``__dict__`` (one, ``_option_source``, instead), which keeps it in the
smaller of CPython's two table sizes (1.5 KiB instead of 3.3 KiB).
Unlike Autobahn's copies, a later ``setProtocolOptions`` on the factory
reaches open sessions too.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import attrs
from autobahn.twisted.websocket import WebSocketServerProtocol

__all__ = ["FACTORY_OPTIONS", "PINNED_OPTIONS", "PinnedOptions",
           "PinnedOptionsProtocol"]


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
#: Autobahn's other options (logging, masking, fragmenting, ...): read
#: from the factory unless a session sets its own.
FACTORY_OPTIONS = tuple(name for name in WebSocketServerProtocol.CONFIG_ATTRS
                        if name not in PINNED_OPTIONS)


class _OwnOptions:
    """
    A session's own values of some of :data:`FACTORY_OPTIONS` (Autobahn's
    ``setTrackTimings`` assigns one), its factory's for the others.
    """

    def __init__(self, factory: object) -> None:
        self._shared = factory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shared, name)


class _FactoryFallback:
    """
    ``_option_source`` of a protocol its factory did not set it on: the
    factory (a non-data descriptor, so the instance's own entry wins).
    """

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance.factory  # type: ignore[attr-defined]


def _factory_option(name: str) -> Any:
    """
    Autobahn's option ``name``: the factory's value, until the protocol
    assigns its own, as Autobahn's per-protocol settings do.

    Autobahn reads several of these for every frame, so the getter is C
    code reading ``_option_source``: the factory, set on each protocol as
    it is built (a Python descriptor here cost about 8 % of a message's
    instructions).  An assignment gives the protocol an
    :class:`_OwnOptions` of its own.
    """
    def assign(protocol: Any, value: Any) -> None:
        own = protocol._option_source
        if not isinstance(own, _OwnOptions):
            own = protocol._option_source = _OwnOptions(own)
        setattr(own, name, value)

    return property(attrgetter(f"_option_source.{name}"), assign,
                    doc=f"Autobahn's ``{name}``: the factory's, unless set here.")


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

    #: Nothing for Autobahn to copy (and format): see the module docstring.
    CONFIG_ATTRS = ()  # type: ignore[assignment]  # Autobahn: a list

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


    #: Where the options of :data:`FACTORY_OPTIONS` are read: the factory
    #: (set on each protocol as its factory builds it), or the protocol's
    #: own :class:`_OwnOptions` once it sets one.
    _option_source: Any = _FactoryFallback()


for _name in FACTORY_OPTIONS:
    setattr(PinnedOptionsProtocol, _name, _factory_option(_name))
