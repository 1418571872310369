"""
Verified HTTPS requests from the reactor, for the authenticators that ask
a server of the operator's (cookie introspection, JWKS refresh).

Shared so that both get the same guarantees from one place: an
``https://`` URL without credentials or fragment, certificate and
hostname verification against a configured CA file or the system's trust
store, no redirects (Twisted's plain :class:`~twisted.web.client.Agent`
never follows them), no persistent connections, and response bodies read
up to a bound, never beyond.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http import PotentialDataLoss

from securews._twisted import quiet_pool
from securews.rules.config import ConfigError

__all__ = ["BodyTooLarge", "BoundedBody", "Discard", "check_https_url",
           "read_ca_certificates", "trust_root", "verifying_agent"]

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def check_https_url(url: str, *, key: str, missing: str) -> bytes:
    """
    ``url`` as the bytes Agent wants, or :class:`ConfigError`.

    :param key: the setting, for the error.
    :param missing: the problem to report when ``url`` is empty.
    """
    if not url:
        raise ConfigError(missing, key=key)
    if not url.isascii() or re.search(r"[\x00-\x20\x7f#]", url):
        raise ConfigError("must be ASCII with no spaces, control characters or "
                          "fragment (percent-encode the rest)", key=key)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{url!r} is not a valid URL", key=key) from None
    if parts.scheme != "https":
        raise ConfigError("must be an https:// URL", key=key)
    if not parts.hostname:
        raise ConfigError(f"{url!r} names no host", key=key)
    if "@" in parts.netloc:
        raise ConfigError("must not hold credentials (user@host)", key=key)
    return url.encode("ascii")


def read_ca_certificates(path: str, *, key: str) -> list[bytes]:
    """
    The PEM certificate blocks of CA file ``path``.

    :raises ConfigError: when it cannot be read or holds no certificate.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path!r}: {e.strerror or e}",
                          key=key) from None
    blocks: list[bytes] = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise ConfigError(f"{path!r} holds no PEM certificate", key=key)
    return blocks


def trust_root(path: str, *, key: str) -> object:
    """
    An ``IOpenSSLTrustRoot``: the CAs in PEM file ``path``, or the
    system's when ``path`` is empty.

    :raises ConfigError: for an unreadable file or one whose certificates
        do not parse.
    """
    if not path:
        return ssl.platformTrust()
    blocks = read_ca_certificates(path, key=key)
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception:
        raise ConfigError(f"{path!r} holds a certificate that does not parse",
                          key=key) from None
    root: object = ssl.trustRootFromCertificates(certificates)
    return root


def verifying_agent(reactor: Any, trust: object, connect_timeout: float) -> Agent:
    """
    An :class:`~twisted.web.client.Agent` that verifies the server's
    certificate and hostname against ``trust`` (see :func:`trust_root`),
    opens a fresh connection per request and does not follow redirects.
    """
    pool = quiet_pool(HTTPConnectionPool(reactor, persistent=False))
    return Agent(reactor, pool=pool, connectTimeout=connect_timeout,
                 contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust))


class BodyTooLarge(Exception):
    """A response body went past the bound :class:`BoundedBody` was given."""


class BoundedBody(Protocol):
    """
    Collects a response body of at most ``limit`` bytes into ``done``.

    Beyond the limit it stops the transport (closing the connection) and
    fails ``done`` with :class:`BodyTooLarge`; cancelling ``done`` stops
    the transport too.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._stop()
            self.done.errback(BodyTooLarge(self.limit))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            if reason.check(ResponseDone, PotentialDataLoss):
                self.done.callback(b"".join(self.chunks))
            else:
                self.done.errback(reason)


class Discard(Protocol):
    """Takes an unwanted body by closing the connection: nothing is buffered."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]
