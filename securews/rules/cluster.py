"""
``[cluster]``: several nodes acting as one through a Redis (or Valkey)
engine, and the names securews gives its keys there.

Pure code: the settings record, the engine address parsed once, and the
key layout.  Nothing in Redis is a credential in clear: tickets, token
ids and principal ids appear only as digests (:func:`digest`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs

__all__ = ["ClusterSettings", "EngineAddress", "Keys", "digest", "parse_engine_url"]

_PREFIX = re.compile(r"[A-Za-z0-9:_.\-]{1,64}")
_NODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@attrs.frozen
class EngineAddress:
    """
    Where the engine is, from ``cluster.redis_url``.

    :ivar tls: ``rediss://``: TLS, with the server's certificate verified.
    :ivar path: the socket's path for ``unix://``.
    """

    host: str = ""
    port: int = 6379
    path: str = ""
    db: int = 0
    username: str = ""
    tls: bool = False

    def __str__(self) -> str:
        """For logs: never a credential (there is none in it)."""
        if self.path:
            return f"unix://{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}/{self.db}"


def _without_credentials(url: str) -> str:
    """``url`` as an error may show it: whatever stands between ``//`` and
    an ``@`` (a user and, by mistake, a password) replaced, even in a URL
    that does not parse."""
    return re.sub(r"//.*@", "//***@", url, flags=re.S)


def parse_engine_url(url: str) -> EngineAddress:
    """
    ``redis://[user@]host[:port][/db]``, ``rediss://...`` or
    ``unix:///path/to.sock[?db=N]``.

    :raises ValueError: for anything else, and for a password in the URL
        (a config file is read by many; the password has a file of its
        own, ``cluster.password_file``).
    """
    shown = _without_credentials(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        # The parser's own words may quote a piece of a password.
        why = ("bad port" if "Port" in str(e) else
               "bad IPv6 address" if "IPv6" in str(e) else "cannot be parsed")
        raise ValueError(f"{shown!r} is not a valid URL ({why})") from None
    if parts.password is not None:
        raise ValueError("holds a password: put it in cluster.password_file")
    if parts.fragment:
        raise ValueError(f"{shown!r}: no fragment allowed")
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError("must be unix:///absolute/path.sock")
        db = _db(parts.query.removeprefix("db=") if parts.query else "0")
        return EngineAddress(path=unquote(parts.path), db=db)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{shown!r}: use redis://, rediss:// or unix://")
    if parts.query:
        raise ValueError(f"{shown!r}: no query allowed (the database is the path)")
    if not parts.hostname:
        raise ValueError(f"{shown!r} names no host")
    db = _db(parts.path.lstrip("/") or "0")
    return EngineAddress(host=parts.hostname, port=port or 6379, db=db,
                         username=unquote(parts.username or ""),
                         tls=parts.scheme == "rediss")


def _db(text: str) -> int:
    if not text.isdigit() or int(text) > 15:
        raise ValueError(f"database {text!r} must be a number from 0 to 15")
    return int(text)


def _engine_url(_inst: object, a: attrs.Attribute[Any], value: str) -> None:
    if value:
        parse_engine_url(value)


def _key_prefix(_inst: object, a: attrs.Attribute[Any], value: str) -> None:
    if not _PREFIX.fullmatch(value):
        raise ValueError(f"{value!r}: 1 to 64 of A-Z a-z 0-9 : _ . -")


def _node_id(_inst: object, a: attrs.Attribute[Any], value: str) -> None:
    if value and not _NODE.fullmatch(value):
        raise ValueError(f"{value!r}: 1 to 64 of A-Z a-z 0-9 _ . -")


def _between(low: float, high: float) -> Any:
    def check(_inst: object, a: attrs.Attribute[Any], value: float) -> None:
        if not low <= value <= high:  # NaN too
            raise ValueError(f"must be from {low:g} to {high:g}, got {value!r}")

    return check


@attrs.frozen
class ClusterSettings:
    """
    ``[cluster]``: the engine several nodes share.  With ``redis_url``
    empty (the default), this node keeps everything in its own memory.

    :ivar timeout: seconds an engine call may take, the wait for a
        connection included; past it the call has failed (503).
    :ivar lease: seconds a node's share of a count survives without being
        renewed (a crashed node's sessions stop counting then).
    """

    redis_url: str = attrs.field(default="", validator=_engine_url)
    key_prefix: str = attrs.field(default="securews:", validator=_key_prefix)
    timeout: float = attrs.field(default=0.25, validator=_between(0.01, 10))
    node_id: str = attrs.field(default="", validator=_node_id)
    lease: float = attrs.field(default=10.0, validator=_between(1, 300))
    ca_file: str = ""
    password_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)

    @property
    def engine(self) -> EngineAddress:
        """The parsed ``redis_url`` (only when :attr:`enabled`)."""
        return parse_engine_url(self.redis_url)


def digest(text: str) -> str:
    """What Redis holds instead of a ticket, token id or principal id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


@attrs.frozen
class Keys:
    """
    The key layout under ``prefix``.  Each multi-key script touches keys
    of one kind of thing (a client network, a principal, a ticket).
    """

    prefix: str

    @property
    def epoch(self) -> str:
        """A random value set once: a new one means the engine lost its data."""
        return f"{self.prefix}epoch"

    @property
    def control(self) -> str:
        """The stream every node reads: revocations."""
        return f"{self.prefix}control"

    def node(self, node: str) -> str:
        """Which process runs under a node id (renewed with its places)."""
        return f"{self.prefix}node:{node}"

    def rate(self, network: str) -> str:
        return f"{self.prefix}rate:{network}"

    def count(self, kind: str, key: str) -> str:
        """Per node: how many places it holds (a hash)."""
        return f"{self.prefix}count:{kind}:{key}"

    def leases(self, kind: str, key: str) -> str:
        """Per node: until when its share counts (a sorted set)."""
        return f"{self.prefix}lease:{kind}:{key}"

    def ticket(self, ticket_digest: str) -> str:
        return f"{self.prefix}ticket:{ticket_digest}"

    def tickets_of(self, principal_digest: str) -> str:
        """A principal's outstanding tickets (a sorted set by expiry)."""
        return f"{self.prefix}tickets:{principal_digest}"

    def revoked_principal(self, principal_digest: str) -> str:
        return f"{self.prefix}revoked:principal:{principal_digest}"

    def revoked_token(self, jti_digest: str) -> str:
        return f"{self.prefix}revoked:jti:{jti_digest}"

    def channel_meta(self, channel: str) -> str:
        """A channel's epoch and offset (a hash)."""
        return f"{self.prefix}ch:{channel}:meta"

    def channel_history(self, channel: str) -> str:
        """A channel's recent messages (a stream, ids by offset)."""
        return f"{self.prefix}ch:{channel}:history"

    def channel_topic(self, channel: str) -> str:
        """The pub/sub channel a channel's messages travel on."""
        return f"{self.prefix}ch:{channel}"

    def probe(self, node: str) -> str:
        """The pub/sub channel a node checks its own subscription with."""
        return f"{self.prefix}probe:{node}"
