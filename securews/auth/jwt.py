"""
Bearer JWTs, from a query parameter or ``Authorization: Bearer``.

Browsers cannot set headers on a WebSocket handshake, so the token
usually rides in the query string; other clients may send a header.
Which keys verify tokens and with which algorithms is settled by the
operator: a key file read at startup, or the identity provider's JWKS
URL (:mod:`securews.auth.jwks`, refreshed as the provider rotates keys).
A token only ever picks among those keys (by ``kid``), never the
algorithm, so ``alg: none`` and HS256/RS256 confusion have nothing to
pick.

Failures are fixed categories; token text never reaches an exception, a
log or a :class:`~securews.rules.config.ConfigError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import jwt
from jwt.exceptions import InvalidSubjectError
from jwt.types import Options
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
from securews.auth.jwt_keys import (
    JWTKey,
    KeySource,
    VerificationKey,
    load_jwt_key,
    read_secret,
)
from securews.rules.head import RequestHead
from securews.rules.settings import JWTSettings

__all__ = ["MAX_TOKEN_LENGTH", "JWTAuthenticator", "JWTKey", "KeySource",
           "VerificationKey", "bearer_token", "load_jwt_key", "read_secret",
           "verify_token"]

#: Longer tokens are refused before any parsing or cryptography.
MAX_TOKEN_LENGTH = 8192
_MAX_QUERY_FIELDS = 100
# Compact JWS: header.payload.signature in base64url, no padding.  An
# empty signature gets through so that alg "none" is reported as such.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (InvalidSubjectError, "missing_claim"),
)



def bearer_token(head: RequestHead, query_param: str) -> str | None:
    """
    The token a request carries: query parameter ``query_param``, else
    ``Authorization: Bearer``.

    :raises AuthenticationFailed: ``"bad_request"`` when the parameter or
        the ``Authorization`` header is repeated: which one would count
        is a guess, and guesses are how smuggling starts.
    """
    try:
        found = parse_qs(head.query, keep_blank_values=True,
                         max_num_fields=_MAX_QUERY_FIELDS).get(query_param, [])
        authorization = head.get("authorization")
    except ValueError:
        raise AuthenticationFailed("bad_request") from None
    if len(found) > 1:
        raise AuthenticationFailed("bad_request")
    if found:
        return found[0]
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.lstrip(" ")


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationFailed("malformed")
    try:
        seconds = float(value)
    except OverflowError:
        raise AuthenticationFailed("malformed") from None
    if not math.isfinite(seconds):
        raise AuthenticationFailed("malformed")
    return seconds


def verify_token(token: str, keys: KeySource, *, now: float, leeway: float,
                 issuer: str = "", audience: str = "",
                 max_age: float | None = None) -> dict[str, Any]:
    """
    Verify a compact JWS and its claims; return the claims.

    ``exp`` and a non-empty string ``sub`` are required; ``nbf``/``iat``
    are checked when present, against ``now`` (PyJWT would read the wall
    clock).  With ``max_age``, ``iat`` is required and may be at most that
    old.  ``iss`` is checked when ``issuer`` is set.  A token carrying
    ``aud`` is refused unless ``audience`` is set and listed in it: RFC
    7519 section 4.1.3 says a recipient that does not identify itself
    with the ``aud`` claim MUST reject the token, and accepting it would
    let in a token minted for another service of the same issuer.

    :raises AuthenticationFailed: with a fixed reason.
    """
    if len(token) > MAX_TOKEN_LENGTH or not _COMPACT.fullmatch(token):
        raise AuthenticationFailed("malformed")
    key = keys.select(token)
    options: Options = {
        "require": ["exp", "sub"],
        "verify_exp": False, "verify_nbf": False, "verify_iat": False,
        "verify_aud": True, "verify_iss": True, "enforce_minimum_key_length": True,
    }
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=list(key.algorithms), options=options,
            audience=audience or None, issuer=issuer or None)
    except jwt.InvalidTokenError as e:
        reason = next((r for cls, r in _REASONS if isinstance(e, cls)), "malformed")
        raise AuthenticationFailed(reason) from None
    exp, nbf, iat = (_time(claims, name) for name in ("exp", "nbf", "iat"))
    if exp is None or (max_age is not None and iat is None):
        raise AuthenticationFailed("missing_claim")
    if exp <= now - leeway or (
            max_age is not None and iat is not None and now - iat > max_age + leeway):
        raise AuthenticationFailed("expired")
    if any(t is not None and t > now + leeway for t in (nbf, iat)):
        raise AuthenticationFailed("not_yet_valid")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise AuthenticationFailed("missing_claim")
    return claims


@implementer(IAuthenticator)
class JWTAuthenticator:
    """
    Bearer JWTs verified with the operator's keys.

    :param key: picks the key for a token: a :class:`JWTKey` (see
        :func:`load_jwt_key`) or a refreshed JWKS
        (:class:`~securews.auth.jwks.JWKSKeys`).
    :param clock: gives "now" for ``exp``, ``nbf`` and ``iat``.
    :ivar key: ``key``.
    """

    method = "jwt"

    def __init__(self, settings: JWTSettings, key: KeySource,
                 clock: IReactorTime) -> None:
        self._settings = settings
        self.key = key
        self._clock = clock

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        return decided(lambda: self.principal_for(request.head))

    def principal_for(self, head: RequestHead) -> Principal | None:
        """
        The synchronous core of :meth:`authenticate`.

        :raises AuthenticationFailed: when a token is present but invalid.
        """
        token = bearer_token(head, self._settings.query_param)
        if token is None:
            return None
        s = self._settings
        claims = verify_token(token, self.key, now=self._clock.seconds(),
                              leeway=s.leeway, issuer=s.issuer, audience=s.audience)
        return Principal(id=claims["sub"], method=self.method, claims=claims,
                         expires_at=float(claims["exp"]) + s.leeway)

