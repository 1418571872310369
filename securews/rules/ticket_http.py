"""
The HTTP rules of ``POST {auth.ticket.issue_path}``, without I/O.

The endpoint shares the WebSocket listener, so it is held to the same
standard: the Origin allow-list (a cross-site POST must not mint a ticket
for a victim's cookie), a small bounded body that must be empty or JSON,
no chunked bodies, and answers that are never cached.  Browsers calling
it from the application's origin need CORS; only allowed origins get the
CORS headers, and only in normalised form.
"""

from __future__ import annotations

import json

import attrs

from securews.rules.head import Refusal, RequestHead
from securews.rules.responses import render_response

__all__ = [
    "MAX_BODY",
    "BodyNeeded",
    "Preflight",
    "check_body",
    "cors_headers",
    "inspect_ticket_request",
    "preflight_response",
    "ticket_response",
]

#: Largest request body accepted; the body is not used, only checked.
MAX_BODY = 4096
_ALLOWED = (("Allow", "POST, OPTIONS"),)


@attrs.frozen
class Preflight:
    """A CORS preflight (``OPTIONS``)."""


@attrs.frozen
class BodyNeeded:
    """Read ``length`` body bytes, then check them with :func:`check_body`."""

    length: int


def _media_type(head: RequestHead) -> str | None:
    value = head.get("content-type")
    return None if value is None else value.split(";", 1)[0].strip().lower()


def inspect_ticket_request(head: RequestHead) -> Refusal | Preflight | BodyNeeded:
    """
    Decide what a request to the ticket path is.

    :returns: :class:`Preflight`, :class:`BodyNeeded` or the refusal:
        405 for other methods, 411 for chunked bodies, 413 for bodies over
        :data:`MAX_BODY`, 415 for anything but JSON, 400 for malformed
        lengths or repeated headers.
    """
    if head.method == "OPTIONS":
        return Preflight()
    if head.method != "POST":
        return Refusal(405, "method_not_allowed", _ALLOWED)
    if head.values("transfer-encoding"):
        return Refusal(411, "length_required")
    try:
        length_text = head.get("content-length")
        media_type = _media_type(head)
    except ValueError:
        return Refusal(400, "bad_request")
    if length_text is None:
        length = 0
    elif length_text.isascii() and length_text.isdigit() and len(length_text) < 10:
        length = int(length_text)
    else:
        return Refusal(400, "bad_request")
    if length > MAX_BODY:
        return Refusal(413, "body_too_large")
    if media_type not in (None, "application/json") or (length and media_type is None):
        return Refusal(415, "unsupported_media_type")
    return BodyNeeded(length)


def check_body(body: bytes) -> Refusal | None:
    """An empty body, or one JSON document."""
    if not body:
        return None
    try:
        json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Refusal(400, "bad_json")
    return None


def cors_headers(origin: str | None) -> tuple[tuple[str, str], ...]:
    """
    :param origin: the *normalised, allowed* Origin, or ``None``.
    """
    if origin is None:
        return ()
    return (("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"))


def preflight_response(origin: str) -> bytes:
    """204 allowing a credentialed POST with JSON and a bearer token."""
    return render_response(204, (
        *cors_headers(origin),
        ("Access-Control-Allow-Methods", "POST"),
        ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
        ("Access-Control-Max-Age", "600"),
    ))


def ticket_response(ticket: str, ttl: float, origin: str | None) -> bytes:
    """201 with ``{"ticket": ..., "expires_in": ttl}``, never cached."""
    body = json.dumps({"ticket": ticket, "expires_in": int(ttl)}).encode("ascii")
    return render_response(201, cors_headers(origin), body, "application/json")
