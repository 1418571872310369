"""
The bytes of every HTTP response securews writes itself.

Autobahn writes the reason of a refused handshake into the status line,
and for an exception raised in ``onConnect`` that reason is the
exception text.  securews answers from this one place instead, with the
standard reason phrase, a body it chose and only headers it chose, so
nothing a client sent (and nothing a server-side error contains) is
echoed back.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

__all__ = ["render_refusal", "render_response"]

_COMMON = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Connection", "close"),
)


def render_response(status: int, headers: Iterable[tuple[str, str]] = (),
                    body: bytes = b"",
                    content_type: str = "text/plain; charset=utf-8") -> bytes:
    """
    Render a complete ``HTTP/1.1`` response that ends the connection.

    :param status: the status code; unknown codes become 500.
    :param headers: extra headers.  They must come from securews, never
        from the request.
    """
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        status, phrase = 500, HTTPStatus.INTERNAL_SERVER_ERROR.phrase
    lines = [f"HTTP/1.1 {status} {phrase}"]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{name}: {value}" for name, value in (*_COMMON, *headers)]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def render_refusal(status: int, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A refusal: the status, and a body that is only the status again."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        status, phrase = 500, HTTPStatus.INTERNAL_SERVER_ERROR.phrase
    return render_response(status, headers, f"{status} {phrase}\n".encode("ascii"))
