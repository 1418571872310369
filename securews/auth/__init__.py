"""
Authentication of WebSocket handshakes.

An authenticator looks at a :class:`~securews.auth.interfaces.HandshakeRequest`
before the connection is upgraded and answers with a
:class:`~securews.auth.interfaces.Principal` or ``None``.
"""

from securews.auth.interfaces import HandshakeRequest, IAuthenticator, Principal

__all__ = ["HandshakeRequest", "IAuthenticator", "Principal"]
