"""
JWT keys from the identity provider's JWKS URL (``auth.jwt.jwks_url``),
kept fresh without a restart.

Providers rotate their signing keys: they publish the new key (new
``kid``) in their JWKS, start signing with it, and later drop the old
one.  :class:`JWKSKeys` is fetched once at startup (the server does not
start without a usable set, see :mod:`securews.auth.jwks_fetch`), then
refreshed on the reactor while the factory listens, on the schedule of
:class:`~securews.auth.jwks_plan.RefreshPlan`:

* every ``jwks_refresh`` seconds, or sooner when the provider's
  ``Cache-Control: max-age`` asks (never more often than once a minute);
* when a token names an unknown ``kid``, ``jwks_cooldown`` seconds after
  the last fetch at the earliest, so a flood of made-up ``kid`` values
  costs the provider one request per cooldown.  That token itself is
  refused at once (``unknown_key``): a handshake never waits for the
  provider;
* after a failure, with backoff, keeping the last good keys meanwhile.
  The failure is logged once (WARN) and again once it works (INFO), and
  counted in the metrics.

The key set is swapped whole, in one assignment on the reactor thread,
and only for a fetch that gave at least one usable key.  Only public,
signature keys fitting ``auth.jwt.algorithms`` are taken (see
:func:`~securews.auth.jwt_keys.parse_fetched_jwks`); HMAC algorithms are
refused with a URL, since a shared secret is never fetched over a network.
Tokens and key material never reach a log line; the provider is named by
host and port only.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from securews.auth._https import (
    BodyTooLarge,
    BoundedBody,
    Discard,
    trust_root,
    verifying_agent,
)
from securews.auth.interfaces import AuthenticationFailed
from securews.auth.jwks_fetch import (
    ACCEPT,
    CA_KEY,
    MAX_JWKS_BYTES,
    MAX_JWKS_KEYS,
    URL_KEY,
    JWKSAnswer,
    check_jwks_url,
    fetch_jwks_now,
    max_age,
    where,
)
from securews.auth.jwks_plan import RefreshPlan
from securews.auth.jwt_keys import (
    FetchedKeySet,
    JWKSError,
    JWTKey,
    VerificationKey,
    load_jwt_key,
    parse_fetched_jwks,
)
from securews.rules.config import ConfigError
from securews.rules.settings import JWTSettings

__all__ = ["JWKSKeys", "jwt_key_source"]

_log = Logger(namespace="securews.auth")


def jwt_key_source(settings: JWTSettings, reactor: Any) -> JWTKey | JWKSKeys:
    """
    What verifies JWTs: ``key_file`` read now, or ``jwks_url`` fetched now.

    Exactly one of the two must be set.

    :param reactor: the clock of the fetch time, and what refreshes run on.
    :raises ConfigError: for neither or both, an HMAC algorithm with a
        URL, or any problem with the file, the URL or the first fetch.
    """
    if settings.key_file and settings.jwks_url:
        raise ConfigError("set auth.jwt.key_file or auth.jwt.jwks_url, not both",
                          key=URL_KEY)
    if not settings.jwks_url:
        if not settings.key_file:
            raise ConfigError("must name a key file (or set auth.jwt.jwks_url)",
                              key="auth.jwt.key_file")
        return load_jwt_key(settings)
    hmac = [a for a in settings.algorithms if a.startswith("HS")]
    if hmac:
        raise ConfigError(
            f"{', '.join(hmac)} cannot be used with auth.jwt.jwks_url: an HMAC "
            "secret is never fetched from a URL (use key_file)",
            key="auth.jwt.algorithms")
    first = fetch_jwks_now(settings, now=reactor.seconds())
    return JWKSKeys(settings, reactor, first)


def _header(headers: Headers, name: bytes) -> list[str]:
    return [v.decode("latin-1") for v in headers.getRawHeaders(name, [])]


def _why(failure: Failure, timeout: float, max_body: int) -> str:
    """A fixed description of a failed refresh (no exception text but ours)."""
    if failure.check(JWKSError):
        return str(failure.value)
    if failure.check(BodyTooLarge):
        return f"the answer is larger than {max_body} bytes"
    if failure.check(DeferredTimeout, error.TimeoutError):
        return f"no complete answer within {timeout:g} s"
    inner = failure
    if failure.check(ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed):
        reasons: list[Failure] = getattr(failure.value, "reasons", [])
        inner = reasons[0] if reasons else failure
    if inner.check(SSL.Error):
        return "the TLS handshake failed (untrusted certificate, or not this host's)"
    if inner.check(error.ConnectionRefusedError):
        return "connection refused"
    if inner.check(error.DNSLookupError):
        return "the host name does not resolve"
    kind = inner.type
    return f"failed ({kind.__name__ if kind is not None else 'unknown'})"


class JWKSKeys:
    """
    A JWKS from ``auth.jwt.jwks_url``, refreshed on the reactor between
    :meth:`start` and :meth:`stop` (the factory calls them as it starts
    and stops listening).

    :param settings: ``[auth.jwt]``.
    :param reactor: runs the refreshes and is their clock.
    :param first: the startup fetch (:func:`fetch_jwks_now`).
    :param agent: the HTTP client; by default an Agent verifying the
        provider against ``jwks_ca``, following no redirect.
    :param max_body: bound on an answer's body, in bytes.
    :param max_keys: bound on the keys one answer may list.
    :ivar plan: the refresh schedule.
    :ivar refresh_failures: failed refreshes so far (a metric).
    :ivar last_success: when the set in use was fetched (reactor seconds).
    """

    def __init__(self, settings: JWTSettings, reactor: Any, first: JWKSAnswer, *,
                 agent: IAgent | None = None, max_body: int = MAX_JWKS_BYTES,
                 max_keys: int = MAX_JWKS_KEYS) -> None:
        self._url = check_jwks_url(settings.jwks_url)
        self._where = where(settings.jwks_url)
        self._algorithms = settings.algorithms
        self._timeout = settings.jwks_timeout
        self._reactor = reactor
        self._max_body = max_body
        self._max_keys = max_keys
        if agent is None:
            agent = verifying_agent(reactor, trust_root(settings.jwks_ca, key=CA_KEY),
                                    settings.jwks_timeout)
        self._agent = agent
        self._current = first.key_set
        self.plan = RefreshPlan.after(first.fetched_at, first.max_age,
                                      refresh=settings.jwks_refresh,
                                      cooldown=settings.jwks_cooldown)
        self.refresh_failures = 0
        self.last_success = first.fetched_at
        self._running = False
        self._timer: IDelayedCall | None = None
        self._fetch: Deferred[JWKSAnswer] | None = None
        _log.info("JWKS from {host}: {keys}", event="jwks", host=self._where,
                  keys=first.key_set.describe())

    @property
    def current(self) -> FetchedKeySet:
        """The key set in use."""
        return self._current

    @property
    def key_count(self) -> int:
        """How many keys the set in use holds (a metric)."""
        return len(self._current.keys.by_kid)

    @property
    def running(self) -> bool:
        """Whether refreshes happen (between :meth:`start` and :meth:`stop`)."""
        return self._running

    def select(self, token: str) -> VerificationKey:
        """
        The key for ``token`` from the current set, at once.

        :raises AuthenticationFailed: ``"malformed"``, or ``"unknown_key"``
            (which also brings the next refresh forward, within the
            cooldown).
        """
        try:
            return self._current.keys.select(token)
        except AuthenticationFailed as e:
            if (e.reason == "unknown_key" and self._running
                    and self.plan.unknown_kid(self._reactor.seconds())):
                self._schedule()
            raise

    def start(self) -> None:
        """Refresh on schedule from now on."""
        if not self._running:
            self._running = True
            self._schedule()

    def stop(self) -> None:
        """No more refreshes; one under way is abandoned."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._fetch is not None:
            self._fetch.cancel()

    # -- refreshing --------------------------------------------------------

    def _schedule(self) -> None:
        """One timer, for ``plan.due``, while running and not fetching."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._running and not self.plan.fetching:
            delay = max(0.0, self.plan.due - self._reactor.seconds())
            self._timer = self._reactor.callLater(delay, self._refresh)

    def _refresh(self) -> None:
        self._timer = None
        started = self._reactor.seconds()
        self.plan.start(started)
        d = self._fetch = self._get(started)
        d.addBoth(self._settle)

    def _get(self, started: float) -> Deferred[JWKSAnswer]:
        """One GET of the JWKS, bounded in time and size."""
        headers = Headers({b"accept": [ACCEPT.encode("ascii")]})
        d: Deferred[Any] = maybeDeferred(self._agent.request, b"GET", self._url,
                                         headers)
        d.addCallback(self._read, started)
        d.addTimeout(self._timeout, self._reactor)
        return d

    def _read(self, response: IResponse, started: float) -> Deferred[JWKSAnswer]:
        if response.code != 200:
            response.deliverBody(Discard())
            redirect = " (redirects are not followed)" if (
                300 <= response.code < 400) else ""
            raise JWKSError(f"answered HTTP {response.code}{redirect}")
        body = BoundedBody(self._max_body)
        response.deliverBody(body)
        fresh_for = max_age(_header(response.headers, b"cache-control"),
                            _header(response.headers, b"age"))

        def parse(data: bytes) -> JWKSAnswer:
            keys = parse_fetched_jwks(data, self._algorithms, max_keys=self._max_keys)
            return JWKSAnswer(keys, fresh_for, started)

        return body.done.addCallback(parse)

    def _settle(self, result: JWKSAnswer | Failure) -> None:
        self._fetch = None
        now = self._reactor.seconds()
        if not self._running:  # stopped meanwhile: the answer is not wanted
            self.plan.fetching = False
            return
        if isinstance(result, JWKSAnswer):
            self._use(result, now)
        else:
            self._failed(result, now)
        self._schedule()

    def _use(self, answer: JWKSAnswer, now: float) -> None:
        previous, failures = self._current, self.plan.failures
        self._current = answer.key_set
        self.last_success = now
        self.plan.succeeded(now, answer.max_age)
        if failures:
            _log.info("JWKS refresh from {host} works again after {count} failed "
                      "attempts: {keys}", event="jwks", host=self._where,
                      count=failures, keys=answer.key_set.describe())
        elif (set(previous.keys.by_kid) != set(answer.key_set.keys.by_kid)
              or previous.skipped != answer.key_set.skipped):
            _log.info("JWKS from {host} changed: {keys}", event="jwks",
                      host=self._where, keys=answer.key_set.describe())

    def _failed(self, failure: Failure, now: float) -> None:
        self.refresh_failures += 1
        self.plan.failed(now)
        if self.plan.failures == 1:
            _log.warn(
                "JWKS refresh from {host} failed: {why}; still verifying with the "
                "last good keys ({count}). Retrying with backoff; logged again "
                "once it works", event="jwks", host=self._where,
                why=_why(failure, self._timeout, self._max_body),
                count=len(self._current.keys.by_kid))
