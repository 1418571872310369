"""
Fetching the identity provider's JWKS (``auth.jwt.jwks_url``): the
limits and freshness rules both fetches share, and the first fetch.

The first fetch happens while settings become a server, before the
reactor runs under ``twistd``, so it is synchronous: stdlib
:mod:`http.client` over an :mod:`ssl` context that verifies the
certificate and the host name against ``jwks_ca`` (or the system's trust
store).  It does what the refreshes on the reactor
(:mod:`securews.auth.jwks`) do: ``GET`` only, no redirect followed (a
3xx is a failure), no proxy from the environment, one deadline for the
whole exchange (connect, TLS, head and body; a provider that trickles
bytes cannot stall the start), a body of at most
:data:`MAX_JWKS_BYTES` and at most :data:`MAX_JWKS_KEYS` keys.  If it
fails, the server does not start: one :class:`ConfigError` line says
where and why, never with key material.
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import attrs

from securews.auth._https import check_https_url, read_ca_certificates
from securews.auth.jwt_keys import FetchedKeySet, JWKSError, parse_fetched_jwks
from securews.rules.config import ConfigError
from securews.rules.settings import JWTSettings

__all__ = ["ACCEPT", "CA_KEY", "MAX_JWKS_BYTES", "MAX_JWKS_KEYS", "URL_KEY",
           "JWKSAnswer", "check_jwks_url", "fetch_jwks_now", "max_age", "where"]

URL_KEY = "auth.jwt.jwks_url"
CA_KEY = "auth.jwt.jwks_ca"
#: Largest JWKS answer read: real ones are a few KiB.
MAX_JWKS_BYTES = 256 * 1024
#: Most keys a JWKS may list (more is a failed fetch, not a truncated set).
MAX_JWKS_KEYS = 100
ACCEPT = "application/jwk-set+json, application/json"

_DIGITS = re.compile(r"[0-9]+")


@attrs.frozen
class JWKSAnswer:
    """
    One successful fetch.

    :ivar max_age: how long the provider says the set stays fresh
        (``Cache-Control: max-age`` less ``Age``), ``None`` when it does
        not say.
    :ivar fetched_at: when the fetch started (reactor seconds).
    """

    key_set: FetchedKeySet
    max_age: float | None
    fetched_at: float


def check_jwks_url(url: str) -> bytes:
    """``jwks_url`` as bytes, or :class:`ConfigError`."""
    return check_https_url(url, key=URL_KEY,
                           missing="must be set to fetch keys from a URL")


def where(url: str) -> str:
    """Host and port of ``url``: all a log line or an error needs to say."""
    return urlsplit(url).netloc


def _seconds(value: str) -> int | None:
    """A delta-seconds value (RFC 9111 1.2.2), huge ones capped at 2**31."""
    value = value.strip().strip('"')
    if not _DIGITS.fullmatch(value):
        return None
    return min(int(value[:11]), 2**31)


def max_age(cache_control: Iterable[str], age: Iterable[str] = ()) -> float | None:
    """
    Seconds the answer stays fresh, from its ``Cache-Control`` and ``Age``
    header values (RFC 9111): ``max-age`` less ``Age``; ``0`` (stale) for
    ``no-store``/``no-cache`` and for an invalid or repeated-and-different
    ``max-age``; ``None`` when nothing is said.
    """
    found: set[int | None] = set()
    for directive in ",".join(cache_control).split(","):
        name, _, value = directive.partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        if name == "max-age":
            found.add(_seconds(value))
    if not found:
        return None
    fresh = found.pop()
    if found or fresh is None:
        return 0.0
    ages = [_seconds(a) for a in age]
    current = ages[0] if len(ages) == 1 and ages[0] is not None else 0
    return float(max(0, fresh - current))


def _client_context(ca_path: str) -> ssl.SSLContext:
    """TLS 1.2+, certificate and host name verified against ``ca_path``."""
    if not ca_path:
        context = ssl.create_default_context()
    else:
        blocks = read_ca_certificates(ca_path, key=CA_KEY)
        try:
            context = ssl.create_default_context(
                cadata="\n".join(b.decode("ascii") for b in blocks))
        except (ssl.SSLError, ValueError):
            raise ConfigError(f"{ca_path!r} holds a certificate that does not "
                              "parse", key=CA_KEY) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each allowed only the time left until ``deadline``."""

    def __init__(self, owner: _DeadlineSocket) -> None:
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        sock = self._owner.sock
        sock.settimeout(self._owner.left())
        return sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._owner.release()


class _DeadlineSocket:
    """
    What :mod:`http.client` uses of a socket, within one deadline.

    Like a real socket's ``makefile``, a reader keeps the socket open:
    ``http.client`` closes the connection as soon as it has read the head
    of an answer that will close (HTTP/1.0, ``Connection: close``), before
    the body is read from that reader.
    """

    def __init__(self, sock: socket.socket, left: Callable[[], float]) -> None:
        self.sock = sock
        self.left = left
        self._users = 1

    def makefile(self, mode: str) -> io.BufferedReader:
        self._users += 1
        return io.BufferedReader(_DeadlineReader(self))

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(self.left())
        self.sock.sendall(data)

    def close(self) -> None:
        self.release()

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self.sock.close()


class _Connection(http.client.HTTPSConnection):
    """
    HTTPS to exactly ``host:port``: no proxy tunnel, the deadline on
    connect, TLS handshake and every read.
    """

    def __init__(self, host: str, port: int | None, *, tls: ssl.SSLContext,
                 left: Callable[[], float]) -> None:
        super().__init__(host, port, context=tls)
        self._tls = tls
        self._left = left

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self._left())
        try:
            raw.settimeout(self._left())
            tls = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.sock = _DeadlineSocket(tls, self._left)


def _get(url: str, tls: ssl.SSLContext, left: Callable[[], float],
         max_body: int) -> tuple[bytes, http.client.HTTPMessage]:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = _Connection(parts.hostname or "", parts.port, tls=tls, left=left)
    try:
        connection.request("GET", target, headers={"Accept": ACCEPT})
        response = connection.getresponse()
        if response.status != 200:
            redirect = " (redirects are not followed)" if (
                300 <= response.status < 400) else ""
            raise JWKSError(f"answered HTTP {response.status}{redirect}")
        body = response.read(max_body + 1)
        if len(body) > max_body:
            raise JWKSError(f"the answer is larger than {max_body} bytes")
        return body, response.headers
    finally:
        connection.close()


def _why(error: Exception, timeout: float) -> str:
    """A fixed description of a failed fetch (no exception text but ours)."""
    if isinstance(error, JWKSError):
        return str(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = " ".join(str(error.verify_message or "").split())[:200]
        return f"TLS certificate verification failed ({detail or 'untrusted'})"
    if isinstance(error, ssl.SSLError):
        return "the TLS handshake failed"
    if isinstance(error, TimeoutError):
        return f"no complete answer within {timeout:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(error, http.client.HTTPException):
        return "the answer is not valid HTTP"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__


def fetch_jwks_now(settings: JWTSettings, *, now: float,
                   max_body: int = MAX_JWKS_BYTES, max_keys: int = MAX_JWKS_KEYS,
                   monotonic: Callable[[], float] = time.monotonic) -> JWKSAnswer:
    """
    Fetch and parse ``settings.jwks_url`` once, blocking for at most
    ``settings.jwks_timeout`` seconds.

    :param now: the reactor's time, recorded as the fetch time.
    :param monotonic: measures the deadline.
    :raises ConfigError: when the URL or CA file is unusable, or the fetch
        fails or gives no usable key: one line, naming host and cause.
    """
    url = check_jwks_url(settings.jwks_url).decode("ascii")
    tls = _client_context(settings.jwks_ca)
    deadline = monotonic() + settings.jwks_timeout

    def left() -> float:
        remaining = deadline - monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    try:
        body, headers = _get(url, tls, left, max_body)
        keys = parse_fetched_jwks(body, settings.algorithms, max_keys=max_keys)
    except Exception as e:  # each cause is described, none is a traceback
        raise ConfigError(f"cannot use the JWKS at {where(url)}: "
                          f"{_why(e, settings.jwks_timeout)}", key=URL_KEY) from None
    return JWKSAnswer(keys, max_age(headers.get_all("cache-control") or [],
                                    headers.get_all("age") or []), now)
