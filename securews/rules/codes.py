"""
Every close code a securews session can end with, and the one record for
"close the session".

RFC 6455 section 7.4 defines the 1000s; 4401 is securews's own (the
4000-4999 range is left to applications; it echoes HTTP's 401).  The
reason that travels with a code is fixed text chosen here, never
Autobahn's wording (which names the library and its limits) and never
anything a client sent.

Pure code.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["FIXED_REASONS", "Close", "CloseCode"]


class CloseCode(enum.IntEnum):
    """The close codes securews sends (or reports: 1005, 1006)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    CREDENTIAL = 4401


#: The text sent with a code when no more specific fixed reason applies.
FIXED_REASONS: dict[int, str] = {
    CloseCode.GOING_AWAY: "going away",
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.UNSUPPORTED_DATA: "unsupported data",
    CloseCode.INVALID_PAYLOAD: "invalid payload",
    CloseCode.POLICY_VIOLATION: "policy violation",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.INTERNAL_ERROR: "internal error",
    CloseCode.TRY_AGAIN_LATER: "try again later",
    CloseCode.CREDENTIAL: "credential expired",
}


@attrs.frozen
class Close:
    """
    Close the session: start the close handshake with ``code`` and the
    fixed ``reason``; ``category`` names why, for logs and metrics
    (``rate_limited``, ``bad_json``, ...), never client input.
    """

    code: CloseCode
    reason: str
    category: str
