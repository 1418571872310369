"""
Authenticators that decide without credentials.

:class:`AnonymousAuthenticator` exists for ``--dev`` and tests only;
:class:`DenyAllAuthenticator` is what a production server has when no
method is configured, so that forgetting to configure authentication
locks the door instead of opening it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from securews.auth.interfaces import HandshakeRequest, IAuthenticator, Principal

__all__ = ["AnonymousAuthenticator", "DenyAllAuthenticator"]


@implementer(IAuthenticator)
class AnonymousAuthenticator:
    """Everyone is ``anonymous``.  Never use outside development."""

    method = "anonymous"

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        return succeed(Principal(id="anonymous", method=self.method))


@implementer(IAuthenticator)
class DenyAllAuthenticator:
    """Nobody is authenticated: every handshake gets 401."""

    method = "none"

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        return succeed(None)
