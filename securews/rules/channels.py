"""
Channels: the rules of the built-in publish/subscribe application, with
no I/O.

* **Names**: 1 to 128 of ``A-Z a-z 0-9 _ - . : @``.
* **Grants** come from the principal's claims, never from the client: a
  ``channels`` claim ``{"sub": [patterns], "pub": [patterns]}`` whose
  patterns use ``*`` (any run of characters) and ``?`` (one), and
  ``{sub}`` for the principal's own id.  No claim, no access.
* **Requests** (client to server, text JSON, checked strictly: an unknown
  field or a wrong type is a protocol error, 1007)::

      {"op": "subscribe", "channel": C, "id": I?, "since": {"epoch": E, "offset": N}?}
      {"op": "unsubscribe", "channel": C, "id": I?}
      {"op": "publish", "channel": C, "data": ANY, "id": I?}

* **Frames** (server to client): a message ``{"channel", "epoch",
  "offset", "data"}``; a reply ``{"id", "ok": true, ...}`` or ``{"id",
  "error": REASON}``; and ``{"channel", "epoch", "offset", "recovered":
  false}`` when messages the client should have had are gone.
* **Positions**: each channel's messages are numbered by ``offset``
  within an ``epoch`` (a channel whose history lapsed starts a new one).
  A client that subscribes ``since`` a position gets exactly the messages
  after it, or ``recovered: false``: never a silent gap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import attrs

__all__ = [
    "MAX_ID",
    "ChannelsSettings",
    "Grants",
    "History",
    "Invalid",
    "Position",
    "Publish",
    "Subscribe",
    "Unsubscribe",
    "grants_of",
    "message_frame",
    "parse_request",
    "recovery",
    "reply_frame",
    "valid_name",
]

_NAME = re.compile(r"[A-Za-z0-9_\-.:@]{1,128}")
_PATTERN = re.compile(r"(?:[A-Za-z0-9_\-.:@*?]|\{sub\}){1,128}")
_EPOCH = re.compile(r"[A-Za-z0-9]{1,32}")
#: Longest request id (a string) a client may choose; or an integer.
MAX_ID = 64
#: Most patterns a grant may hold (longer lists are cut: a claim is data).
MAX_PATTERNS = 64


def _between(low: float, high: float) -> Any:
    def check(_inst: object, a: attrs.Attribute[Any], value: float) -> None:
        if not low <= value <= high:  # NaN too
            raise ValueError(f"must be from {low:g} to {high:g}, got {value!r}")

    return check


@attrs.frozen
class ChannelsSettings:
    """
    ``[channels]``: the built-in ``channels`` application
    (``server.app = "channels"``) and channels in embedded applications.

    :ivar history_size: messages each channel keeps for recovery.
    :ivar history_ttl: seconds a channel's history lives after its last
        message.
    :ivar max_subscriptions: channels one session may subscribe to.
    :ivar max_violations: refused requests (forbidden channels) a session
        may make before it is closed (1008).
    :ivar probe_interval: seconds between a node's checks that its
        engine subscription still delivers (a cluster).
    """

    history_size: int = attrs.field(default=100, validator=_between(1, 10_000))
    history_ttl: float = attrs.field(default=300.0, validator=_between(1, 86_400))
    max_subscriptions: int = attrs.field(default=64, validator=_between(1, 10_000))
    max_violations: int = attrs.field(default=10, validator=_between(1, 1_000))
    probe_interval: float = attrs.field(default=5.0, validator=_between(0.2, 60))


def valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


@attrs.frozen
class Position:
    """Where a channel is: ``offset`` messages so far in ``epoch``."""

    epoch: str
    offset: int


@attrs.frozen
class History:
    """
    What a broker holds of a channel after a position.

    :ivar position: the channel's current position.
    :ivar entries: ``(offset, data)`` after the asked offset, in order.
    :ivar complete: the entries start right after the asked offset (none
        was dropped from the bounded history).
    """

    position: Position
    entries: tuple[tuple[int, str], ...] = ()
    complete: bool = True


@attrs.frozen
class Subscribe:
    id: object
    channel: str
    since: Position | None = None


@attrs.frozen
class Unsubscribe:
    id: object
    channel: str


@attrs.frozen
class Publish:
    """:ivar data: the message's ``data`` as JSON text (sent on as is)."""

    id: object
    channel: str
    data: str


@attrs.frozen
class Invalid:
    """Not a channels request: a protocol error (1007)."""

    reason: str


_FIELDS = {"subscribe": {"op", "id", "channel", "since"},
           "unsubscribe": {"op", "id", "channel"},
           "publish": {"op", "id", "channel", "data"}}


def _request_id(document: Mapping[str, Any]) -> object | Invalid:
    value = document.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return Invalid("bad_id")
    if isinstance(value, str) and len(value) > MAX_ID:
        return Invalid("bad_id")
    if isinstance(value, int) and not -(2**53) < value < 2**53:
        return Invalid("bad_id")
    return value


def _since(value: object) -> Position | Invalid:
    if not isinstance(value, dict) or set(value) != {"epoch", "offset"}:
        return Invalid("bad_since")
    epoch, offset = value["epoch"], value["offset"]
    if not (isinstance(epoch, str) and _EPOCH.fullmatch(epoch)):
        return Invalid("bad_since")
    if isinstance(offset, bool) or not isinstance(offset, int) or not (
            0 <= offset < 2**53):
        return Invalid("bad_since")
    return Position(epoch, offset)


def parse_request(document: object) -> Subscribe | Unsubscribe | Publish | Invalid:
    """
    A client's request from its parsed JSON document.  A channel name that
    is not valid is ``Invalid`` too: names are part of the protocol.
    """
    if not isinstance(document, dict):
        return Invalid("not_an_object")
    op = document.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        return Invalid("bad_op")
    if not set(document) <= _FIELDS[op] or "channel" not in document:
        return Invalid("bad_fields")
    request_id = _request_id(document)
    if isinstance(request_id, Invalid):
        return request_id
    channel = document["channel"]
    if not valid_name(channel):
        return Invalid("bad_channel")
    if op == "subscribe":
        since = None
        if "since" in document:
            parsed = _since(document["since"])
            if isinstance(parsed, Invalid):
                return parsed
            since = parsed
        return Subscribe(request_id, channel, since)
    if op == "unsubscribe":
        return Unsubscribe(request_id, channel)
    if "data" not in document:
        return Invalid("bad_fields")
    data = json.dumps(document["data"], separators=(",", ":"), ensure_ascii=False)
    return Publish(request_id, channel, data)


@attrs.frozen
class Grants:
    """Which channels a principal may subscribe to and publish on."""

    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()

    def may_subscribe(self, channel: str) -> bool:
        return any(fnmatchcase(channel, p) for p in self.subscribe)

    def may_publish(self, channel: str) -> bool:
        return any(fnmatchcase(channel, p) for p in self.publish)


def _patterns(value: object, principal_id: str) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return ()
    own = principal_id if valid_name(principal_id) else None
    patterns = []
    for pattern in list(value)[:MAX_PATTERNS]:
        if not (isinstance(pattern, str) and _PATTERN.fullmatch(pattern)):
            continue
        if "{sub}" in pattern:
            if own is None:
                continue
            pattern = pattern.replace("{sub}", own)
        patterns.append(pattern)
    return tuple(patterns)


def grants_of(claims: Mapping[str, Any], principal_id: str) -> Grants:
    """
    The ``channels`` claim, checked: patterns that are not valid are
    ignored, and ``{sub}`` stands for the principal's id (a pattern with
    it grants nothing when the id is not a valid channel name).
    """
    claim = claims.get("channels")
    if not isinstance(claim, Mapping):
        return Grants()
    return Grants(_patterns(claim.get("sub"), principal_id),
                  _patterns(claim.get("pub"), principal_id))


def recovery(since: Position, history: History) -> tuple[tuple[int, str], ...] | None:
    """
    The messages a client subscribing ``since`` missed, or ``None`` when
    they cannot all be had (another epoch, or some already dropped from
    the history): the client is then told ``recovered: false``.
    """
    current = history.position
    if since.epoch != current.epoch or since.offset > current.offset:
        return None
    if since.offset == current.offset:
        return ()
    if not history.complete:
        return None
    missed = tuple(e for e in history.entries if e[0] > since.offset)
    if (not missed or missed[0][0] != since.offset + 1
            or missed[-1][0] != current.offset):
        return None
    return missed


def message_frame(channel: str, epoch: str, offset: int, data: str) -> str:
    """A message to a subscriber; ``data`` is JSON text, sent as it is."""
    return (f'{{"channel":{json.dumps(channel)},"epoch":{json.dumps(epoch)},'
            f'"offset":{offset},"data":{data}}}')


def reply_frame(request_id: object, **fields: object) -> str:
    """A reply to a request (``ok`` or ``error``)."""
    return json.dumps({"id": request_id, **fields}, separators=(",", ":"))
