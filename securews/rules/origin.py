"""
Origin allow-listing against Cross-Site WebSocket Hijacking.

Browsers attach cookies to a WebSocket handshake whatever page opened it;
the ``Origin`` header is the only thing that says which page that was.
Autobahn's own matcher compares raw ``scheme://host:port`` strings, so
``https://example.com`` never equals ``https://example.com:443`` and a
misconfigured list silently lets nothing (or everything) through.  This
module normalises both sides (scheme and host lower-cased, default ports
elided) and matches structurally.

Pure code: no I/O, no reactor.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

import attrs

__all__ = [
    "AllowList",
    "Origin",
    "OriginError",
    "OriginPattern",
    "origin_allowed",
    "parse_allow_list",
    "parse_origin",
]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")
_MAX_ORIGIN_LENGTH = 512


class OriginError(ValueError):
    """An Origin (or allow-list entry) that is not ``scheme://host[:port]``."""


@attrs.frozen
class Origin:
    """A normalised serialised origin (RFC 6454 section 6.2)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        default = _DEFAULT_PORTS.get(self.scheme)
        suffix = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{self.host}{suffix}"


@attrs.frozen
class OriginPattern:
    """
    One allow-list entry.

    :ivar wildcard: when true, ``host`` is a suffix: the entry
        ``https://*.example.com`` matches ``https://a.example.com`` and
        ``https://a.b.example.com`` but not ``https://example.com``.
    :ivar any_port: written ``:*``: every port of the host matches
        (``http://localhost:*``, for pages a developer serves on whatever
        port their tools pick); ``port`` is then 0.
    """

    scheme: str
    host: str
    port: int
    wildcard: bool = False
    any_port: bool = False

    def __str__(self) -> str:
        """The entry, normalised (what an operator would write, default ports
        elided): ``parse_pattern(str(p)) == p``."""
        default = _DEFAULT_PORTS.get(self.scheme)
        suffix = ":*" if self.any_port else (
            "" if self.port == default else f":{self.port}")
        return f"{self.scheme}://{'*.' if self.wildcard else ''}{self.host}{suffix}"

    def matches(self, origin: Origin) -> bool:
        if origin.scheme != self.scheme or not (
                self.any_port or origin.port == self.port):
            return False
        if not self.wildcard:
            return origin.host == self.host
        return origin.host.endswith("." + self.host)


def _split(text: str, *, allow_wildcard: bool) -> tuple[str, str, int, bool]:
    """``(scheme, host, port, wildcard)``; with ``allow_wildcard`` (an
    allow-list entry) port 0 stands for ``:*``, any port."""
    if len(text) > _MAX_ORIGIN_LENGTH:
        raise OriginError("origin is too long")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or not _SCHEME.fullmatch(scheme):
        raise OriginError("origin must look like scheme://host[:port]")
    if any(c in rest for c in "/?#@\\ \t") or not rest:
        raise OriginError("origin must be scheme://host[:port], nothing more")
    port_text = ""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise OriginError("unterminated IPv6 literal in origin")
        host, after = rest[: end + 1], rest[end + 1 :]
        if after:
            if not after.startswith(":"):
                raise OriginError("origin must be scheme://host[:port], nothing more")
            port_text = after[1:]
        try:
            ip = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise OriginError("bad IPv6 literal in origin") from None
        host = f"[{ip.compressed}]"
    else:
        host, colon, port_text = rest.partition(":")
        if colon and not port_text:
            raise OriginError("empty port in origin")
        host = host.lower()
    wildcard = False
    if not host.startswith("["):
        if allow_wildcard and host.startswith("*."):
            wildcard, host = True, host[2:]
        labels = host.split(".")
        if not all(_LABEL.fullmatch(label) for label in labels):
            raise OriginError("bad host name in origin")
        if wildcard and len(labels) < 2:
            raise OriginError("a wildcard needs a dotted domain: *.example.com")
    if port_text == "*" and allow_wildcard:
        port = 0
    elif port_text:
        if not (_PORT.fullmatch(port_text) and 0 < int(port_text) < 65536):
            raise OriginError("bad port in origin")
        port = int(port_text)
    elif scheme in _DEFAULT_PORTS:
        port = _DEFAULT_PORTS[scheme]
    else:
        raise OriginError(f"origin with scheme {scheme!r} needs an explicit port")
    return scheme, host, port, wildcard


def parse_origin(text: str) -> Origin:
    """
    Parse an ``Origin`` header value.

    A server sees a few origins over and over (its application's), and a
    handshake needs its origin three times (the allow-list, the ticket's
    CORS answer, the log line): the last 256 parses are remembered, the
    result being an immutable value of a pure function.  What is
    remembered is the stripped text of an origin that parsed, so no entry
    is longer than an origin may be; a bad value is not remembered (an
    exception is not cached).

    :raises OriginError: for ``null``, wildcards, paths, credentials or
        anything else that is not a serialised tuple origin.
    """
    text = text.strip()
    if len(text) > _MAX_ORIGIN_LENGTH:
        raise OriginError("origin is too long")
    return _parse_origin(text)


@functools.lru_cache(maxsize=256)
def _parse_origin(text: str) -> Origin:
    scheme, host, port, _ = _split(text, allow_wildcard=False)
    return Origin(scheme, host, port)


def parse_pattern(text: str) -> OriginPattern:
    """Parse one allow-list entry; ``*.`` may lead the host, and ``:*``
    (any port) end it."""
    scheme, host, port, wildcard = _split(text.strip(), allow_wildcard=True)
    return OriginPattern(scheme, host, port, wildcard, any_port=port == 0)


@attrs.frozen
class AllowList:
    """The parsed ``[origin] allowed`` list."""

    patterns: tuple[OriginPattern, ...]

    @property
    def entries(self) -> tuple[str, ...]:
        """The allowed Origins, normalised, as text (for startup logs)."""
        return tuple(str(p) for p in self.patterns)

    def allows(self, origin: Origin) -> bool:
        return any(p.matches(origin) for p in self.patterns)


def parse_allow_list(entries: Iterable[str]) -> AllowList:
    """
    :raises OriginError: naming the first bad entry.
    """
    patterns = []
    for entry in entries:
        try:
            patterns.append(parse_pattern(entry))
        except OriginError as e:
            raise OriginError(f"{entry!r}: {e}") from None
    return AllowList(tuple(patterns))


def origin_allowed(header: str | None, allow_list: AllowList, *,
                   allow_missing: bool) -> bool:
    """
    Decide whether a handshake's Origin may connect.

    :param header: the ``Origin`` header value, or ``None`` if absent.
    :param allow_missing: accept a request without ``Origin``: such a
        request does not come from a browser, so it cannot carry a
        victim's cookies across sites.

    ``null`` is never accepted: browsers send it from sandboxed frames and
    ``file:`` pages, which an attacker controls, so it is not the same as
    a missing header.
    """
    if header is None:
        return allow_missing
    try:
        origin = parse_origin(header)
    except ValueError:
        return False
    return allow_list.allows(origin)
