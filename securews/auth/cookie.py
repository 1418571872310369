"""
The web application's session cookie, when it is a JWT the application
signs with a secret it shares with securews (``auth.cookie.mode =
"signed"``).

The browser sends the cookie with the handshake by itself, which is what
makes Cross-Site WebSocket Hijacking possible: this method is only safe
behind the Origin allow-list.  The token is held to the narrowest
contract: HS256 only, ``exp`` and ``iat`` required, and no older than
``max_age`` whatever its ``exp`` says, so a leaked cookie stops working
on securews's schedule, not only the application's.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from securews.auth.interfaces import (
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    Principal,
    decided,
)
from securews.auth.jwt import JWTKey, VerificationKey, read_secret, verify_token
from securews.rules.head import RequestHead
from securews.rules.settings import CookieSettings

__all__ = ["SignedCookieAuthenticator", "cookie_values", "load_cookie_secret"]

_SETTING = "auth.cookie.secret_file"
_MIN_SECRET = 32


def cookie_values(headers: Iterable[str], name: str) -> list[str]:
    """
    Every value sent for cookie ``name`` across the ``Cookie`` headers.

    The grammar is RFC 6265's ``name=value`` pairs separated by ``;``.
    Unlike :class:`http.cookies.SimpleCookie` nothing is unquoted or
    unescaped, no pair is taken for an attribute (``Path``,
    ``$Version``), a repeated name is reported rather than resolved (last
    one wins, silently, there), and the name must match exactly: a
    browser writes ``name=value`` with nothing around the ``=``.  Pairs
    that do not parse are other cookies' business and are skipped: one
    sloppy cookie elsewhere on the domain must not lock users out.
    """
    found = []
    for header in headers:
        for pair in header.split(";"):
            key, equals, value = pair.strip(" \t").partition("=")
            if equals and key == name:
                found.append(value)
    return found


def load_cookie_secret(settings: CookieSettings) -> bytes:
    """
    Read ``settings.secret_file`` once, at startup.

    :raises ConfigError: (key ``auth.cookie.secret_file``) when it is
        not set, unreadable, shorter than 32 bytes once one trailing
        newline is dropped, or holds a PEM/SSH key instead.
    """
    return read_secret(settings.secret_file, key=_SETTING, minimum=_MIN_SECRET)


@implementer(IAuthenticator)
class SignedCookieAuthenticator:
    """
    The ``settings.name`` cookie, an HS256 JWT signed with ``secret``.

    An empty cookie counts as none (a logged-out browser may still send
    ``name=``).  A token carrying ``aud`` is refused, as for bearer JWTs
    (see :func:`securews.auth.jwt.verify_token`): there is no audience
    to check it against, and the application's other tokens signed with
    the same secret (API, password reset) often carry one.  No clock
    leeway: the application and securews should share a clock.

    :param clock: gives "now" for ``exp``, ``iat`` and ``max_age``.
    """

    method = "cookie"

    def __init__(self, settings: CookieSettings, secret: bytes,
                 clock: IReactorTime) -> None:
        if settings.mode != "signed":
            raise ValueError("SignedCookieAuthenticator needs mode = 'signed'")
        if len(secret) < _MIN_SECRET:
            raise ValueError(f"the secret must be at least {_MIN_SECRET} bytes")
        self._settings = settings
        self._key = JWTKey(single=VerificationKey(secret, ("HS256",)))
        self._clock = clock

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        return decided(lambda: self.principal_for(request.head))

    def principal_for(self, head: RequestHead) -> Principal | None:
        """
        The synchronous core of :meth:`authenticate`.

        :raises AuthenticationFailed: ``"bad_request"`` when the cookie is
            sent twice (which one the application saw is unknowable), or
            the token's failure.
        """
        values = cookie_values(head.values("cookie"), self._settings.name)
        if len(values) > 1:
            raise AuthenticationFailed("bad_request")
        if not values or not values[0]:
            return None
        claims = verify_token(values[0], self._key, now=self._clock.seconds(),
                              leeway=0.0, max_age=self._settings.max_age)
        # Whichever comes first: the cookie's own exp, or max_age after iat.
        expires_at = min(float(claims["exp"]),
                         float(claims["iat"]) + self._settings.max_age)
        return Principal(id=claims["sub"], method=self.method, claims=claims,
                         expires_at=expires_at)
