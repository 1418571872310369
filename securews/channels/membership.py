"""
:class:`Membership`: one session's channels.

It holds what the session may do (its :class:`~securews.rules.channels.Grants`,
from its principal's claims), its subscriptions (at most
``max_subscriptions``), and delivers each subscribed channel's messages in
offset order, each once.  Subscribing ``since`` a position first sends
exactly the messages after it, then the live ones, with nothing lost or
repeated in between (live messages arriving while the history is read
wait, bounded); when that cannot be done the session is told
``recovered: false``.

Applications embedding securews use it for their own protocols (see
:meth:`securews.wire.protocol.SecureServerProtocol.join_channels`); the
built-in ``channels`` application is one such protocol.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from securews.channels.interfaces import IBroker
from securews.rules.channels import (
    Grants,
    History,
    Position,
    message_frame,
    recovery,
)

__all__ = ["Joined", "Membership", "Refused"]

#: Live messages a subscription keeps while its history is read, at most;
#: past it the history is given up (``recovered: false``).
MAX_WAITING = 1000
#: Repeated subscribes to a channel whose subscription is not yet in place
#: that wait for it, at most (more are refused "unavailable").
MAX_AGAIN = 8
#: An offset beyond any channel's: "just the position, no history".
_NOW = 2**62


class Refused(Exception):
    """A request refused: ``reason`` is a fixed word sent to the client
    (``forbidden``, ``too_many_subscriptions``, ``unavailable``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class Joined:
    """
    A subscription in place.

    :ivar position: where the channel stood when it started.
    :ivar recovered: with ``since``: whether every missed message was sent.
    """

    position: Position
    recovered: bool | None = None


def lost_frame(channel: str, position: Position) -> str:
    return (f'{{"channel":"{channel}","epoch":"{position.epoch}",'
            f'"offset":{position.offset},"recovered":false}}')


@attrs.define(eq=False)
class _Subscription:
    channel: str
    send: Callable[[str], None]
    live: bool = False
    position: Position | None = None
    waiting: list[tuple[Position, str | None]] = attrs.field(factory=list)
    overflowed: bool = False
    #: Subscribing again before this one is in place: they wait for it.
    again: list[Deferred[Joined]] = attrs.field(factory=list)

    def subscribed_again(self) -> Deferred[Joined]:
        """Where the session stands in the channel: now if the subscription
        is in place, else once it is (never a position it does not have)."""
        if self.live and self.position is not None:
            return succeed(Joined(self.position))
        if len(self.again) >= MAX_AGAIN:
            return fail(Refused("unavailable"))
        d: Deferred[Joined] = Deferred()
        self.again.append(d)
        return d

    def settle(self, result: Joined | Failure) -> Joined | Failure:
        """The subscription is in place (or failed): tell those waiting."""
        again, self.again = self.again, []
        for d in again:
            if isinstance(result, Failure) or self.position is None:
                d.errback(Refused("unavailable"))
            else:
                d.callback(Joined(self.position))
        return result

    def receive(self, channel: str, position: Position, data: str | None) -> None:
        if not self.live:
            if len(self.waiting) >= MAX_WAITING:
                self.overflowed = True
                self.waiting.clear()
            self.waiting.append((position, data))
            return
        self.deliver(position, data)

    def deliver(self, position: Position, data: str | None) -> None:
        held = self.position
        if data is None:
            if held is None or (position.epoch, position.offset) != (
                    held.epoch, held.offset):
                self.position = position
                self.send(lost_frame(self.channel, position))
            return
        if held is not None and position.epoch == held.epoch:
            if position.offset <= held.offset:
                return  # had it already
            if position.offset > held.offset + 1:
                self.send(lost_frame(self.channel,
                                     Position(held.epoch, position.offset - 1)))
        elif held is not None and position.offset > 1:
            # A new epoch whose first messages never came.
            self.send(lost_frame(self.channel,
                                 Position(position.epoch, position.offset - 1)))
        self.position = position
        self.send(message_frame(self.channel, position.epoch, position.offset, data))

    def go_live(self) -> None:
        waiting, self.waiting = self.waiting, []
        self.live = True
        if self.overflowed:
            self.overflowed = False
            if waiting:
                self.position = waiting[-1][0]
            if self.position is not None:
                self.send(lost_frame(self.channel, self.position))
            return
        for position, data in waiting:
            self.deliver(position, data)


def _discard(text: str) -> None:
    """A closed membership's send."""


class Membership:
    """
    :param send: writes a text frame to the session.
    """

    def __init__(self, broker: IBroker, grants: Grants,
                 send: Callable[[str], None], *, max_subscriptions: int) -> None:
        self.broker = broker
        self.grants = grants
        self.max_subscriptions = max_subscriptions
        self._send = send
        self._subscriptions: dict[str, _Subscription] = {}
        self._closed = False

    def __contains__(self, channel: object) -> bool:
        return channel in self._subscriptions

    def __len__(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, channel: str, since: Position | None = None, *,
                  before: Callable[[Joined], None] | None = None
                  ) -> Deferred[Joined]:
        """
        Subscribe to ``channel`` (already subscribed: its position).

        :param before: called with the outcome before any message of the
            channel is sent (for a reply that must come first).
        :returns: a Deferred firing with :class:`Joined`, or failing with
            :exc:`Refused`.
        """
        if self._closed:
            return fail(Refused("unavailable"))
        held = self._subscriptions.get(channel)
        if held is not None:
            def tell(joined: Joined) -> Joined:
                if before is not None:
                    before(joined)
                return joined

            return held.subscribed_again().addCallback(tell)
        if not self.grants.may_subscribe(channel):
            return fail(Refused("forbidden"))
        if len(self._subscriptions) >= self.max_subscriptions:
            return fail(Refused("too_many_subscriptions"))
        subscription = _Subscription(channel, self._send)
        self._subscriptions[channel] = subscription
        d2 = self.broker.listen(channel, subscription.receive)
        d2.addCallback(lambda _: self.broker.history(
            channel, _NOW if since is None else since.offset))

        def read(history: History) -> Joined:
            if self._subscriptions.get(channel) is not subscription:
                raise Refused("unavailable")  # unsubscribed or closed meanwhile
            position = history.position
            missed = None if since is None else recovery(since, history)
            joined = Joined(position, None if since is None else missed is not None)
            if before is not None:
                before(joined)
            if since is not None and missed is None:
                subscription.position = position
                subscription.send(lost_frame(channel, position))
            else:
                subscription.position = since if since is not None else position
                for offset, data in missed or ():
                    subscription.deliver(Position(position.epoch, offset), data)
            subscription.go_live()
            return joined

        def failed(failure: Failure) -> Failure:
            if self._subscriptions.get(channel) is subscription:
                del self._subscriptions[channel]
                self.broker.unlisten(channel, subscription.receive)
            if failure.check(Refused):
                return failure
            return Failure(Refused("unavailable"))

        return d2.addCallbacks(read, failed).addBoth(subscription.settle)

    def unsubscribe(self, channel: str) -> bool:
        """:returns: whether the session was subscribed."""
        subscription = self._subscriptions.pop(channel, None)
        if subscription is None:
            return False
        self.broker.unlisten(channel, subscription.receive)
        return True

    def publish(self, channel: str, data: str) -> Deferred[Position]:
        """Publish ``data`` (JSON text); fails with :exc:`Refused`."""
        if self._closed:
            return fail(Refused("unavailable"))
        if not self.grants.may_publish(channel):
            return fail(Refused("forbidden"))
        d = self.broker.publish(channel, data)

        def failed(failure: Failure) -> Failure:
            return Failure(Refused("unavailable"))

        return d.addErrback(failed)

    def close(self) -> None:
        """The session ended: every subscription stops, and the session's
        send (a method of the session, which holds this membership) is let
        go of, so that the two do not wait for the cyclic collector."""
        self._closed = True
        for channel in list(self._subscriptions):
            self.unsubscribe(channel)
        self._send = _discard
