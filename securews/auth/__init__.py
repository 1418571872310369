"""
Authentication of WebSocket handshakes.

An authenticator looks at a :class:`~securews.auth.interfaces.HandshakeRequest`
before the connection is upgraded and answers with a
:class:`~securews.auth.interfaces.Principal` or ``None``.
"""

from securews.auth.interfaces import (
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    ITicketStore,
    Principal,
    TicketRejected,
)

__all__ = [
    "AuthenticationFailed",
    "HandshakeRequest",
    "IAuthenticator",
    "ITicketStore",
    "Principal",
    "TicketRejected",
]
