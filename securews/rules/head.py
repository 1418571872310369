"""
Reading and routing the HTTP upgrade request, before Autobahn sees it.

Autobahn buffers handshake bytes without limit and re-scans the whole
buffer for the end of the head on every chunk, and its refusals echo the
offending header into the status line.  securews reads the head itself,
bounded by ``max_header_bytes`` and ``max_headers``, and decides the
HTTP-level outcome (404, 405, 426, 431, ...) here; only a well-formed
``GET`` upgrade to the WebSocket path is handed on.

Pure code: bytes in, an attrs decision out.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["HeadScanner", "Refusal", "RequestHead", "read_head", "route"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_TARGET = re.compile(r"[\x00-\x20\x7f-\xff]")
# Control characters, and NEL (0x85): Autobahn splits the head with
# str.splitlines(), which breaks lines at NEL too, so a value holding one
# would be one header here and two in Autobahn.
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x85]")


@attrs.frozen
class Refusal:
    """
    An HTTP-level "no".

    :ivar status: the HTTP status code to answer with.
    :ivar reason: a fixed category for logs and metrics (never client
        input), e.g. ``"not_found"``.
    :ivar headers: extra response headers, fixed by securews.
    """

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class RequestHead:
    """
    A parsed request head.

    :ivar headers: ``(lower-cased name, value)`` pairs in arrival order;
        repeated headers stay repeated.
    """

    method: str
    path: str
    query: str
    version: str
    headers: tuple[tuple[str, str], ...]
    size: int

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive)."""
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    def get(self, name: str) -> str | None:
        """The value of a header that must appear at most once.

        :returns: ``None`` when absent.
        :raises ValueError: when repeated.
        """
        found = self.values(name)
        if len(found) > 1:
            raise ValueError(f"repeated header {name}")
        return found[0] if found else None

    def has_token(self, name: str, token: str) -> bool:
        """Whether a comma-separated header lists ``token`` (any case)."""
        token = token.lower()
        return any(
            part.strip().lower() == token
            for value in self.values(name)
            for part in value.split(",")
        )


_TOO_LARGE = Refusal(431, "header_too_large")
_BAD = Refusal(400, "bad_request")


def _past_limit(buffered: int, max_bytes: int) -> bool:
    """
    Whether an unfinished head can no longer end in time.  A head is
    within the limit when its blank line starts by octet ``max_bytes``,
    so up to 3 octets of that ``\r\n\r\n`` may lie beyond it: refusing
    earlier would make the verdict depend on where TCP cut the stream.
    """
    return buffered >= max_bytes + 4


def read_head(data: bytes, *, max_bytes: int,
              max_headers: int) -> RequestHead | Refusal | None:
    """
    Parse the request head at the start of ``data``.

    :returns: ``None`` while the head is incomplete and still within the
        limits (read more), a :class:`Refusal` for an oversized or
        malformed head, or the :class:`RequestHead`.

    Only ``data[:max_bytes + 4]`` is ever examined, so the cost of a call
    is bounded whatever the client sends.
    """
    window = data[: max_bytes + 4]
    end = window.find(b"\r\n\r\n")
    if end < 0:
        if _past_limit(len(data), max_bytes) or window.count(b"\r\n") > max_headers + 1:
            return _TOO_LARGE
        return None
    if end > max_bytes:
        return _TOO_LARGE
    lines = window[:end].decode("latin-1").split("\r\n")
    if len(lines) - 1 > max_headers:
        return _TOO_LARGE
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        return _BAD
    method, target, version = parts
    if _FORBIDDEN_IN_TARGET.search(target) or not re.fullmatch(
        r"HTTP/\d\.\d", version
    ):
        return _BAD
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            return _BAD
        value = value.strip(" \t")
        if _FORBIDDEN_IN_VALUE.search(value):
            return _BAD
        headers.append((name.lower(), value))
    if not target.startswith("/") or "#" in target:
        return _BAD
    path, _, query = target.partition("?")
    return RequestHead(method, path, query, version, tuple(headers), end + 4)


class HeadScanner:
    """
    Watches a growing handshake buffer for the end of the head.

    Each call looks only at bytes it has not seen, so a client dribbling
    its head a byte at a time costs linear, not quadratic, time; the head
    is parsed (by :func:`read_head`) once, when it is complete.
    """

    def __init__(self, *, max_bytes: int, max_headers: int) -> None:
        self.max_bytes = max_bytes
        self.max_headers = max_headers
        self._seen = 0
        self._lines = 0

    def scan(self, data: bytes) -> RequestHead | Refusal | None:
        """
        :param data: the whole buffer so far (it only ever grows).
        :returns: as :func:`read_head`.
        """
        limit = min(len(data), self.max_bytes + 4)
        start = max(0, self._seen - 3)
        if data.find(b"\r\n\r\n", start, limit) >= 0:
            return read_head(data, max_bytes=self.max_bytes,
                             max_headers=self.max_headers)
        self._lines += data.count(b"\r\n", max(0, self._seen - 1), limit)
        self._seen = limit
        if _past_limit(len(data), self.max_bytes) or self._lines > self.max_headers + 1:
            return _TOO_LARGE
        return None


def route(head: RequestHead, *, websocket_path: str) -> Refusal | None:
    """
    Decide the HTTP-level fate of a request.

    :returns: ``None`` for a ``GET`` upgrade to ``websocket_path``, to be
        handed to the WebSocket handshake; otherwise the refusal.
    """
    if head.version != "HTTP/1.1":
        return Refusal(505, "http_version")
    try:
        hosts = head.get("host")
    except ValueError:
        return _BAD
    if not hosts:
        return _BAD
    if head.path != websocket_path:
        return Refusal(404, "not_found")
    if head.method != "GET":
        return Refusal(405, "method_not_allowed", (("Allow", "GET"),))
    if not head.has_token("upgrade", "websocket"):
        return Refusal(
            426, "upgrade_required",
            (("Upgrade", "websocket"), ("Connection", "Upgrade"),
             ("Sec-WebSocket-Version", "13")),
        )
    return None
