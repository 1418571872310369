"""
:class:`ComposedGate`: the handshake's shared checks (:class:`IGate`) made
of separate limiters, counters and revocations, asked one after the
other.  In memory each answer is immediate, so nothing is lost by asking
in turn; a cluster's engine answers each check in one round trip instead
(:mod:`securews.cluster`).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from securews.limits.interfaces import (
    IGate,
    IRateLimiter,
    IRevocations,
    ISessionCounter,
    RateVerdict,
)
from securews.rules.actions import Claimed, Vouched

__all__ = ["ComposedGate"]


@implementer(IGate)
class ComposedGate:
    """
    :param per_client: places per client network.
    :param per_principal: places per principal.
    :param revocations: what was revoked.
    :param rate: a connect-rate limiter asked when :meth:`claim` is told
        to (``None``: there is none; the node's own is asked at accept).
    """

    def __init__(self, *, per_client: ISessionCounter,
                 per_principal: ISessionCounter, revocations: IRevocations,
                 rate: IRateLimiter | None = None) -> None:
        self.per_client = per_client
        self.per_principal = per_principal
        self.revocations = revocations
        self.rate = rate

    def claim(self, key: str, rate: bool) -> Deferred[Claimed]:
        if not rate or self.rate is None:
            return self._place(key)
        d = self.rate.take(key)

        def taken(verdict: RateVerdict) -> Deferred[Claimed] | Claimed:
            if not verdict.admitted:
                return Claimed(None, verdict.retry_after)
            return self._place(key)

        return d.addCallback(taken)

    def _place(self, key: str) -> Deferred[Claimed]:
        return self.per_client.acquire(key).addCallback(Claimed)

    def vouch(self, principal: str, jti: str | None,
              issued_at: float | None) -> Deferred[Vouched]:
        d = self.revocations.revoked(principal, jti, issued_at)

        def checked(revoked: bool) -> Deferred[Vouched] | Vouched:
            if revoked:
                return Vouched(True, None)
            return self.per_principal.acquire(principal).addCallback(
                lambda lease: Vouched(False, lease))

        return d.addCallback(checked)
