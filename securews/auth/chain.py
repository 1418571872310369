"""
Trying authentication methods in order (``auth.methods``).

Each method looks for its own kind of credential.  A method that finds
none (``None``) hands over to the next; a method that finds one and
rejects it ends the chain with 401: a bad ticket is not an invitation to
try the cookie.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from securews.auth.interfaces import (
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    Principal,
)

__all__ = ["ChainAuthenticator"]


@implementer(IAuthenticator)
class ChainAuthenticator:
    """The first method that recognises a credential decides."""

    def __init__(self, methods: Sequence[IAuthenticator]) -> None:
        self.methods = tuple(methods)
        self.method = "+".join(m.method for m in self.methods) or "none"

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        return self._try(0, request)

    def _try(self, index: int, request: HandshakeRequest) -> Deferred[Principal | None]:
        if index >= len(self.methods):
            return succeed(None)
        method = self.methods[index]
        d = method.authenticate(request)

        def name_the_method(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, AuthenticationFailed) and not error.method:
                error.method = method.method
            return failure

        d.addErrback(name_the_method)

        def next_if_absent(
            principal: Principal | None,
        ) -> Deferred[Principal | None] | Principal | None:
            if principal is None:
                return self._try(index + 1, request)
            return principal

        return d.addCallback(next_if_absent)
