"""
Cookie authentication by asking the web application (``mode = "introspect"``).

The handshake's Cookie header is forwarded verbatim in a ``GET`` to
``auth.cookie.introspect_url`` over HTTPS with certificate and hostname
verification, the way nginx's ``auth_request`` works.  ``200`` with a
JSON object holding a non-empty string ``sub`` accepts; everything else
refuses (fail closed, 401):

* ``401``/``403``: ``"rejected"``;
* any other status (redirects are not followed), a body that is not such
  an object or is larger than ``max_body``: ``"introspection_error"``;
* no complete answer within ``introspect_timeout`` seconds:
  ``"introspection_timeout"``;
* refused connection, DNS or TLS verification failure:
  ``"introspection_unreachable"``.

Accepted answers are cached for ``introspect_cache`` seconds (never past
an ``exp`` the answer carries, after which it is ``"expired"``) in a
bounded LRU keyed by the SHA-256 of the forwarded header.  While a session
is open its cookie is asked about again, bypassing the cache, every
``introspect_cache`` seconds (see
:attr:`~securews.auth.interfaces.Principal.renew`): a refusal then closes
the session.  Refusals are not
cached, so a transient failure locks nobody out, and concurrent
handshakes with the same header share one request.  The cookie is never
logged, and kept (in memory) only while its session is open.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from zope.interface import implementer

from securews.auth._https import (
    BodyTooLarge,
    BoundedBody,
    Discard,
    check_https_url,
    trust_root,
    verifying_agent,
)
from securews.auth.interfaces import (
    AuthenticationFailed,
    HandshakeRequest,
    IAuthenticator,
    Principal,
)
from securews.rules.settings import CookieSettings

__all__ = ["IntrospectingCookieAuthenticator"]

_log = Logger(namespace="securews.auth")
#: Least time between two checks of an open session's cookie, even with
#: ``introspect_cache = 0``.
_MIN_RECHECK = 1.0

_URL_KEY = "auth.cookie.introspect_url"
_CA_KEY = "auth.cookie.introspect_ca"
_UNREACHABLE = (ConnectError, DNSLookupError, SSL.Error, ResponseNeverReceived,
                RequestTransmissionFailed)


def _check_url(url: str) -> bytes:
    """``introspect_url`` as the bytes Agent wants, or :class:`ConfigError`."""
    return check_https_url(url, key=_URL_KEY,
                           missing="required when auth.cookie.mode is 'introspect'")


def _has_cookie(headers: list[str], name: str) -> bool:
    """Whether a Cookie header sets ``name`` to a non-empty value."""
    for header in headers:
        for pair in header.split(";"):
            key, equals, value = pair.partition("=")
            if equals and key.strip() == name and value.strip():
                return True
    return False


def _refuse(reason: str, status: int | None = None,
            cause: str | None = None) -> AuthenticationFailed:
    """Log a refusal by category (never the cookie) and return its exception."""
    _log.warn("cookie introspection refused: {reason} (status {status}, "
              "cause {cause})", reason=reason, status=status, cause=cause)
    return AuthenticationFailed(reason)


def _too_large(failure: Failure) -> Failure:
    failure.trap(BodyTooLarge)
    raise _refuse("introspection_error", 200, "body_too_large")


def _principal(body: bytes) -> Principal:
    """The principal a 200 answer names, or ``"introspection_error"``."""
    try:
        claims = json.loads(body)
    except (ValueError, RecursionError):
        raise _refuse("introspection_error", 200, "not_json") from None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(sub, str) or not sub:
        raise _refuse("introspection_error", 200, "no_sub")
    return Principal(id=sub, method="cookie", claims=claims)


def _exp(principal: Principal) -> float | None:
    """The ``exp`` the application's answer carries (RFC 7662 style), if any."""
    exp = principal.claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) \
            and math.isfinite(exp):
        return float(exp)
    return None


def _optional(principal: Principal) -> Principal | None:
    return principal


def _classify(failure: Failure) -> Failure:
    """Turn whatever went wrong into an :class:`AuthenticationFailed`."""
    if failure.check(AuthenticationFailed):
        return failure
    inner = failure
    if failure.check(ResponseNeverReceived, RequestTransmissionFailed):
        reasons: list[Failure] = getattr(failure.value, "reasons", [])
        inner = reasons[0] if reasons else failure
    kind = inner.type
    cause = f"{kind.__module__}.{kind.__qualname__}" if kind is not None else None
    if inner.check(ConnectTimeout):
        return Failure(_refuse("introspection_timeout", cause=cause))
    if failure.check(*_UNREACHABLE):
        return Failure(_refuse("introspection_unreachable", cause=cause))
    return Failure(_refuse("introspection_error", cause=cause))


@implementer(IAuthenticator)
class IntrospectingCookieAuthenticator:
    """
    Authenticates the ``settings.name`` cookie by asking ``introspect_url``.

    :param settings: ``[auth.cookie]``; ``mode`` is not looked at.
    :param reactor: connects, and is the clock for the timeout and cache.
    :param agent: the HTTP client (tests); by default an
        :class:`~twisted.web.client.Agent` that verifies the server against
        ``introspect_ca`` and does not follow redirects.
    :param max_entries: bound on cached answers (least recently used go).
    :param max_body: bound on an answer's body, in bytes.
    :raises ConfigError: for a missing or bad URL, or an unreadable CA file.
    """

    method = "cookie"

    def __init__(self, settings: CookieSettings, reactor: Any, *,
                 agent: IAgent | None = None, max_entries: int = 10_000,
                 max_body: int = 65_536) -> None:
        self._url = _check_url(settings.introspect_url)
        trust = trust_root(settings.introspect_ca, key=_CA_KEY)
        self._name = settings.name
        self._reactor = reactor
        self._ttl = settings.introspect_cache
        self._timeout = settings.introspect_timeout
        self._max_entries = max_entries
        self._max_body = max_body
        if agent is None:
            agent = verifying_agent(reactor, trust, self._timeout)
        self._agent: IAgent = agent
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._pending: dict[bytes, list[Deferred[Principal]]] = {}

    def authenticate(self, request: HandshakeRequest) -> Deferred[Principal | None]:
        values = request.head.values("cookie")
        if not _has_cookie(values, self._name):
            return succeed(None)
        cookie = "; ".join(values).encode("latin-1")
        return self._session_principal(cookie).addCallback(_optional)

    def _session_principal(self, cookie: bytes,
                           fresh: bool = False) -> Deferred[Principal]:
        """
        The principal for ``cookie``, to be asked about again while its
        session is open: it expires at the next check (``introspect_cache``
        seconds on, at least one second; sooner if the answer carries an
        earlier ``exp``), and renews by asking again.  The Cookie header is
        therefore kept, in memory only, for the session's lifetime.
        """

        def for_session(principal: Principal) -> Principal:
            now = float(self._reactor.seconds())
            expires_at = now + max(self._ttl, _MIN_RECHECK)
            exp = _exp(principal)
            if exp is not None:
                if exp <= now:  # the application's own answer says: over
                    raise _refuse("expired")
                expires_at = min(expires_at, exp)
            return Principal(principal.id, principal.method, principal.claims,
                             expires_at=expires_at,
                             renew=lambda: self._session_principal(cookie, fresh=True))

        return self._introspected(cookie, fresh).addCallback(for_session)

    def _introspected(self, cookie: bytes, fresh: bool = False) -> Deferred[Principal]:
        """
        What the application says of ``cookie``: from the cache (not when
        ``fresh``: an open session's re-check asks anew, so a revoked cookie
        is refused within one ``introspect_cache``), from a request under
        way for the same header, or from a new one.
        """
        key = hashlib.sha256(cookie).digest()
        cached = None if fresh else self._lookup(key)
        if cached is not None:
            return succeed(cached)
        waiter: Deferred[Principal] = Deferred()
        if key in self._pending:
            self._pending[key].append(waiter)
        else:
            self._pending[key] = [waiter]
            self._ask(cookie).addBoth(self._settle, key)
        return waiter

    def _ask(self, cookie: bytes) -> Deferred[Principal]:
        """One introspection request, bounded in time and size."""
        headers = Headers({b"cookie": [cookie], b"accept": [b"application/json"]})
        d: Deferred[Any] = maybeDeferred(self._agent.request, b"GET", self._url,
                                         headers)
        d.addCallback(self._read)
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=lambda _r, _t:
                     Failure(_refuse("introspection_timeout")))
        return d.addErrback(_classify)

    def _read(self, response: IResponse) -> Deferred[Principal]:
        if response.code == 200:
            body = BoundedBody(self._max_body)
            response.deliverBody(body)
            return body.done.addCallbacks(_principal, _too_large)
        response.deliverBody(Discard())
        raise _refuse("rejected" if response.code in (401, 403)
                      else "introspection_error", response.code)

    def _settle(self, result: Principal | Failure, key: bytes) -> None:
        waiters = self._pending.pop(key, [])
        if isinstance(result, Principal):
            self._store(key, result)
        for waiter in waiters:
            if not waiter.called:  # a cancelled waiter has been called
                if isinstance(result, Principal):
                    waiter.callback(result)
                else:
                    waiter.errback(result)

    def _lookup(self, key: bytes) -> Principal | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, principal = entry
        if self._reactor.seconds() >= expires:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return principal

    def _store(self, key: bytes, principal: Principal) -> None:
        """Keep an accepted answer for ``introspect_cache`` seconds, never past
        the ``exp`` it carries."""
        if self._ttl <= 0:
            return
        expires = self._reactor.seconds() + self._ttl
        exp = _exp(principal)
        if exp is not None:
            expires = min(expires, exp)
        self._cache[key] = (expires, principal)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
