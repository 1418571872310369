"""
:class:`MemoryBroker`: channels within one node.

A channel exists while it has history or listeners.  Its history keeps
the last ``history_size`` messages for ``history_ttl`` seconds after the
last publish; a channel left idle longer is forgotten, and its next
message starts a new epoch (subscribers asking ``since`` an older epoch
are told ``recovered: false``).  ``max_channels`` bounds how many
channels hold history at once: beyond it a publish is refused.
"""

from __future__ import annotations

import secrets
from collections import deque

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from securews.channels.interfaces import IBroker, Listener
from securews.rules.channels import History, Position

__all__ = ["MAX_CHANNELS", "ChannelsFull", "MemoryBroker"]

#: Channels holding history at once, at most, by default.
MAX_CHANNELS = 100_000


class ChannelsFull(Exception):
    """Every one of ``max_channels`` channels holds history."""


@attrs.define
class _Channel:
    epoch: str
    offset: int = 0
    touched: float = 0.0
    entries: deque[tuple[int, str]] = attrs.field(factory=deque)


def new_epoch() -> str:
    return secrets.token_hex(8)


@implementer(IBroker)
class MemoryBroker:
    """
    :param clock: tells when histories lapse.
    """

    def __init__(self, clock: IReactorTime, *, history_size: int = 100,
                 history_ttl: float = 300.0, max_channels: int = MAX_CHANNELS) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.max_channels = max_channels
        self._clock = clock
        self._channels: dict[str, _Channel] = {}
        self._listeners: dict[str, list[Listener]] = {}

    def __len__(self) -> int:
        return len(self._channels)

    def _current(self, channel: str) -> _Channel | None:
        held = self._channels.get(channel)
        now = self._clock.seconds()
        if held is not None and held.touched + self.history_ttl <= now:
            del self._channels[channel]
            return None
        return held

    def _sweep(self) -> None:
        now = self._clock.seconds()
        for name in [n for n, c in self._channels.items()
                     if c.touched + self.history_ttl <= now]:
            del self._channels[name]

    def publish(self, channel: str, data: str) -> Deferred[Position]:
        held = self._current(channel)
        if held is None:
            if len(self._channels) >= self.max_channels:
                self._sweep()
                if len(self._channels) >= self.max_channels:
                    return fail(ChannelsFull())
            held = self._channels[channel] = _Channel(new_epoch())
        held.offset += 1
        held.touched = self._clock.seconds()
        held.entries.append((held.offset, data))
        while len(held.entries) > self.history_size:
            held.entries.popleft()
        position = Position(held.epoch, held.offset)
        for listener in list(self._listeners.get(channel, ())):
            listener(channel, position, data)
        return succeed(position)

    def listen(self, channel: str, listener: Listener) -> Deferred[None]:
        self._listeners.setdefault(channel, []).append(listener)
        return succeed(None)

    def unlisten(self, channel: str, listener: Listener) -> None:
        held = self._listeners.get(channel)
        if held is not None and listener in held:
            held.remove(listener)
            if not held:
                del self._listeners[channel]

    def history(self, channel: str, after: int) -> Deferred[History]:
        held = self._current(channel)
        if held is None:
            # No history: a fresh epoch, which the next publish keeps (when
            # there is room to remember it).
            held = _Channel(new_epoch(), touched=self._clock.seconds())
            if len(self._channels) < self.max_channels:
                self._channels[channel] = held
        entries = tuple(e for e in held.entries if e[0] > after)
        complete = after >= held.offset or (
            bool(entries) and entries[0][0] == after + 1)
        return succeed(History(Position(held.epoch, held.offset), entries, complete))

    def ready(self) -> bool:
        return True
