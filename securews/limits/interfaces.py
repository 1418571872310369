"""
The shared-state interfaces of admission: rates, places, revocations.

Each method answers with a :class:`~twisted.internet.defer.Deferred`, so
an implementation may ask another process (Redis, for a cluster) and
answer later; the admission path waits for it.  An implementation that
cannot answer (its engine is down or slow) fails the Deferred: the
handshake is then refused (503), never admitted (fail closed).
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from securews.rules.actions import Claimed, Vouched
from securews.rules.counters import Lease

__all__ = ["IGate", "IRateLimiter", "IRevocations", "ISessionCounter", "RateVerdict"]


@attrs.frozen
class RateVerdict:
    """
    :ivar admitted: the action may go ahead (a token was taken).
    :ivar retry_after: when refused, seconds until it would be admitted.
    """

    admitted: bool
    retry_after: float = 0.0


class IRateLimiter(Interface):
    """New connections per client network: a token bucket per key."""

    rate = Attribute("Tokens gained per second.")
    burst = Attribute("The most tokens a key holds.")

    def take(key: str) -> Deferred[RateVerdict]:
        """Take one token for ``key`` if there is one."""


class ISessionCounter(Interface):
    """
    Places held at once per key (a client network, a principal, the whole
    server), as leases.
    """

    limit = Attribute("The most places one key holds at once.")

    def acquire(key: str) -> Deferred[Lease | None]:
        """
        A place for ``key``.

        :returns: a Deferred firing with a :class:`Lease` (give the place
            back with its ``release()``, which is idempotent), or with
            ``None`` when ``key`` holds ``limit`` places already.
        """

    def count(key: str) -> Deferred[int]:
        """How many places ``key`` holds now."""


class IRevocations(Interface):
    """
    Credentials revoked before they expire: a principal (all its
    credentials) or one token (its ``jti``).
    """

    def revoke(principal: str | None = None, jti: str | None = None, *,
               until: float) -> Deferred[None]:
        """
        Revoke ``principal`` (every credential issued to it until now) or
        the token ``jti``, until Unix time ``until`` (when those would have
        expired anyway); the entry is forgotten then.

        :raises ValueError: unless exactly one of ``principal`` and ``jti``
            is given.
        """

    def revoked(principal: str, jti: str | None = None,
                issued_at: float | None = None) -> Deferred[bool]:
        """
        Whether a credential of ``principal`` is revoked now: its token
        ``jti`` was, or the principal was after the credential was issued
        (``issued_at``; a credential that does not say is revoked with its
        principal).
        """


class IGate(Interface):
    """
    The shared checks of one handshake, two calls in all, so that a
    cluster answers each in one round trip to its engine: before the
    Origin check, the client network's (cluster-wide) connect rate and one
    of its places; after authentication, revocation and one of the
    principal's places.
    """

    def claim(key: str, rate: bool) -> Deferred[Claimed]:
        """
        With ``rate``, take a connect token for client network ``key``
        (refused: :attr:`Claimed.retry_after`, nothing held); then one of
        its places (``Claimed.lease``, ``None`` when it holds its limit).
        """

    def vouch(principal: str, jti: str | None,
              issued_at: float | None) -> Deferred[Vouched]:
        """
        Unless the credential is revoked (see :meth:`IRevocations.revoked`),
        one of ``principal``'s places.
        """
