"""
The bytes of an HTTP refusal.

Autobahn writes the reason of a refused handshake into the status line,
and for an exception raised in ``onConnect`` that reason is the
exception text.  securews answers every refusal from this one place with
the standard reason phrase, a fixed short body and only headers securews
chose, so nothing a client sent (and nothing a server-side error
contains) is echoed back.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

__all__ = ["render_refusal"]

_COMMON = (
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Connection", "close"),
)


def render_refusal(status: int, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """
    Render a complete ``HTTP/1.1`` refusal response.

    :param status: the status code; unknown codes become 500.
    :param headers: extra headers.  They must come from securews, never
        from the request.
    """
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        status, phrase = 500, HTTPStatus.INTERNAL_SERVER_ERROR.phrase
    body = f"{status} {phrase}\n".encode("ascii")
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in (*_COMMON, *headers)]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
