"""
The open sessions of one node, by whose credential they run on, so that
a revocation (made here, or announced by another node) closes them, and
so that a node cut off from its cluster can close them all.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import attrs

from securews.rules.actions import Credential
from securews.rules.cluster import digest
from securews.rules.codes import Close, CloseCode

__all__ = ["FENCED", "REVOKED", "Session", "SessionIndex", "token_facts"]

#: A session whose credential was revoked.
REVOKED = Close(CloseCode.CREDENTIAL, "credential revoked", "credential_revoked")
#: A session closed by a node that cannot renew its places in the cluster.
FENCED = Close(CloseCode.TRY_AGAIN_LATER, "try again later", "fenced")


class Session(Protocol):
    """What the index needs of a session."""

    def end_session(self, close: Close) -> None:
        """Close the session (if it is still open) with ``close``."""


@attrs.frozen
class _Entry:
    principal: str
    token: str | None
    issued_at: float | None


def token_facts(principal: Credential) -> tuple[str | None, float | None]:
    """The ``jti`` and ``iat`` claims revocation reads (claims of the wrong
    type count as absent)."""
    jti = principal.claims.get("jti")
    issued_at = principal.claims.get("iat")
    if not isinstance(jti, str):
        jti = None
    if not isinstance(issued_at, int | float) or isinstance(issued_at, bool):
        issued_at = None
    return jti, issued_at


class SessionIndex:
    """Open sessions by the digest of their principal and token ids."""

    def __init__(self) -> None:
        self._entries: dict[Session, _Entry] = {}
        self._by_principal: dict[str, set[Session]] = {}
        self._by_token: dict[str, set[Session]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._entries))

    def opened(self, session: Session, principal: Credential) -> None:
        jti, issued_at = token_facts(principal)
        entry = _Entry(digest(principal.id), None if jti is None else digest(jti),
                       issued_at)
        self._entries[session] = entry
        self._by_principal.setdefault(entry.principal, set()).add(session)
        if entry.token is not None:
            self._by_token.setdefault(entry.token, set()).add(session)

    def closed(self, session: Session) -> None:
        entry = self._entries.pop(session, None)
        if entry is None:
            return
        _discard(self._by_principal, entry.principal, session)
        if entry.token is not None:
            _discard(self._by_token, entry.token, session)

    def revoked(self, kind: str, what: str, at: float) -> list[Session]:
        """
        The sessions a revocation ends: every session of the principal
        whose credential was issued before ``at`` (or does not say when),
        or every session on the token.

        :param what: the principal's or token's digest.
        """
        if kind == "jti":
            return list(self._by_token.get(what, ()))
        return [s for s in self._by_principal.get(what, ())
                if (issued := self._entries[s].issued_at) is None or issued <= at]

    def end_revoked(self, kind: str, what: str, at: float) -> int:
        """Close what :meth:`revoked` finds; how many."""
        sessions = self.revoked(kind, what, at)
        for session in sessions:
            session.end_session(REVOKED)
        return len(sessions)

    def end_all(self, close: Close, spread: float,
                call_later: Callable[[float, Callable[..., Any], Any], object],
                rng: random.Random | None = None) -> int:
        """
        Close every session with ``close``, each at a random moment within
        ``spread`` seconds (so that clients do not all come back at once).
        """
        rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        sessions = list(self._entries)
        for session in sessions:
            call_later(rng.uniform(0, spread), session.end_session, close)
        return len(sessions)


def _discard(index: dict[str, set[Session]], key: str, session: Session) -> None:
    held = index.get(key)
    if held is not None:
        held.discard(session)
        if not held:
            del index[key]
