"""
What a cluster of securews nodes shares: connect rates, session places,
revocations (tickets are :class:`securews.auth.interfaces.ITicketStore`).

Each is an interface answering with Deferreds (:mod:`.interfaces`), so a
shared engine can answer later; the in-memory implementations
(:mod:`.memory`), one node's default, answer at once.
"""

from securews.limits.interfaces import IRateLimiter, IRevocations, ISessionCounter
from securews.limits.memory import (
    MemoryRateLimiter,
    MemoryRevocations,
    MemorySessionCounter,
)

__all__ = [
    "IRateLimiter",
    "IRevocations",
    "ISessionCounter",
    "MemoryRateLimiter",
    "MemoryRevocations",
    "MemorySessionCounter",
]
