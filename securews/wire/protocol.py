"""
The hardened server protocol that applications subclass.

Autobahn stays the wire engine (framing, masking, UTF-8, the close
handshake).  securews adds two halves on top of it:
:class:`~securews.wire._handshake.HandshakeProtocol` (everything before
the upgrade) and :class:`~securews.wire._traffic.TrafficProtocol`
(everything after: its reading and writing paths, on top of
:class:`~securews.wire._session.SessionProtocol`'s hooks, lifecycle and
timer).  Both only carry out decisions made by pure modules.

Applications subclass :class:`SecureServerProtocol` and implement the
``onSession*``, ``onValidatedMessage`` and ``onWrite*`` hooks.  Everything
else the class inherits is sealed: a subclass (or a mixin in front of it)
that redefines any of it fails when it is defined, and so does one that
sets an Autobahn option as a class attribute.

No tunnelling: nothing here hands a client a byte pipe to another
service, and the server opens no outbound connection on a client's
behalf (cookie introspection goes to the operator's configured URL only).
Messages reach the application as whole, validated payloads.
"""

from __future__ import annotations

import inspect
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol

from securews.wire._handshake import HandshakeProtocol
from securews.wire._traffic import TrafficProtocol

__all__ = ["SecureServerProtocol"]

#: What an application may define although a base class has it.
HOOKS = frozenset({
    "onSessionOpen", "onValidatedMessage", "onSessionClose",
    "onWritePaused", "onWriteResumed", "subprotocols",
})
#: What this hook itself sets on each subclass (and so is not redefined).
_DERIVED = frozenset({"_wants_document"})
#: Autobahn copies a factory option onto a protocol only when the protocol
#: (or its class) lacks the attribute, so a class attribute such as
#: ``maxMessagePayloadSize = 0`` would silently undo the factory's limit.
_OPTIONS = frozenset(WebSocketServerProtocol.CONFIG_ATTRS)


class SecureServerProtocol(TrafficProtocol, HandshakeProtocol):  # type: ignore[misc]
    """
    Base class for securews applications.

    Implement :meth:`onSessionOpen`, :meth:`onValidatedMessage` and
    :meth:`onSessionClose` (and, to follow backpressure,
    :meth:`onWritePaused`/:meth:`onWriteResumed`); send with
    ``self.sendMessage(payload, isBinary)``.

    :cvar subprotocols: the WebSocket subprotocols this application
        speaks, in order of preference.  When the client offers some and
        none match, the session opens without one.
    :ivar principal: who authenticated the session (set before
        :meth:`onSessionOpen`).
    :ivar tls_client_subject: the verified client-certificate subject
        under mutual TLS, else ``None``.
    :ivar client: the client's IP address, as used for limits and logs:
        the TCP peer, or the address a trusted proxy reported in
        ``X-Forwarded-For``.
    :ivar peer_host: the TCP peer's address.

    Autobahn's ``peer`` and ``transport_details`` are left unset: building
    them costs every connection, and ``client``, ``peer_host`` and
    ``tls_client_subject`` say what they would.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        base = SecureServerProtocol.__mro__
        inherited = set().union(*(vars(k) for k in base if k is not object))
        ours = [k for k in cls.__mro__ if k not in base]
        redefined = sorted({
            name for klass in ours for name in vars(klass)
            if name in inherited and name not in HOOKS and name not in _DERIVED
            and not name.startswith("__")
        } | {name for klass in ours for name in _OPTIONS & set(vars(klass))})
        cls._wants_document = "document" in inspect.signature(
            cls.onValidatedMessage).parameters
        if redefined:
            raise TypeError(
                f"{cls.__qualname__} redefines {', '.join(redefined)}: securews "
                "applications implement onSessionOpen, onValidatedMessage, "
                "onSessionClose and onWritePaused/onWriteResumed only, and take "
                "their limits from the settings"
            )
