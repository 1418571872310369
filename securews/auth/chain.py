"""
Trying authentication methods in order (``auth.methods``).

Each method looks for its own kind of credential.  A method that finds
none (``None``) hands over to the next; a method that finds one and
rejects it ends the chain with 401: a bad ticket is not an invitation to
try the cookie.  A request carrying credentials the client chose itself
(see :mod:`securews.auth.credentials`) is read only by the method of that
credential, and one carrying two of them is refused as ambiguous.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from securews.auth.interfaces import (
    AmbiguousCredentials,
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    Principal,
)
from securews.rules.head import RequestHead

__all__ = ["ChainAuthenticator"]


@implementer(IAuthenticator)
class ChainAuthenticator:
    """
    The first method that recognises a credential decides.

    :param explicit: names the credentials of the client's own choosing in
        a request (:func:`~securews.auth.credentials.explicit_credentials`,
        bound to the settings); without it every method is tried in order.
    """

    def __init__(self, methods: Sequence[IAuthenticator], *,
                 explicit: Callable[[RequestHead], list[str]] | None = None) -> None:
        self.methods = tuple(methods)
        self.method = "+".join(m.method for m in self.methods) or "none"
        self._explicit = explicit

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        methods = self.methods
        if self._explicit is not None:
            names = {m.method for m in methods}
            chosen = [kind for kind in self._explicit(request.head) if kind in names]
            if len(chosen) > 1:
                return fail(AmbiguousCredentials())
            if chosen:
                methods = tuple(m for m in methods if m.method == chosen[0])
        return self._try(methods, 0, request)

    def _try(self, methods: tuple[IAuthenticator, ...], index: int,
             request: HandshakeRequest) -> Deferred[Principal | None]:
        if index >= len(methods):
            return succeed(None)
        method = methods[index]
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
                return self._try(methods, index + 1, request)
            return principal

        return d.addCallback(next_if_absent)
