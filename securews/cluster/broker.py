"""
:class:`RedisBroker`: channels across the nodes, through the engine.

A publish is one script (:file:`lua/publish.lua`): it appends the message
to the channel's bounded history, a stream whose ids are the offsets, and
publishes it on the channel's pub/sub topic.  Each node subscribes to a
topic once, however many of its sessions listen (never one engine
subscription per client), on a connection of its own.

Pub/sub alone may lose messages (a dropped connection, a subscription
the engine quietly forgot).  So each node checks what arrives: a message
whose offset skips some is held back until the gap is filled from the
history; after a reconnection every topic is subscribed again and read
from the history from the last offset delivered; what the history no
longer holds is reported as lost (the sessions say ``recovered: false``),
never skipped in silence.  And a node checks its own subscription: every
``probe_interval`` it publishes to its own probe topic and expects to
hear it back; a subscription that stays deaf is replaced, and until it
hears again the node is not ready.
"""

from __future__ import annotations

import secrets
from typing import Any

import attrs
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securews.channels.interfaces import IBroker, Listener
from securews.cluster.engine import Engine, retry_policy
from securews.cluster.scripts import SCRIPTS
from securews.rules.channels import History, Position

__all__ = ["RedisBroker"]

_log = Logger(namespace="securews.cluster")
#: An offset past any channel's: "the position only".
_NOW = 2**62


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@attrs.define(eq=False)
class _Topic:
    """One channel this node listens to."""

    listeners: list[Listener] = attrs.field(factory=list)
    position: Position | None = None
    #: Live messages held back while the position is read or a gap filled.
    held: list[tuple[Position, str]] | None = attrs.field(factory=list)


def _subscriber_protocol(broker: RedisBroker) -> Any:
    import txredisapi

    class Subscriber(txredisapi.SubscriberProtocol):
        def __init__(self) -> None:
            super().__init__(charset=None, convertNumbers=False)  # type: ignore[no-untyped-call]

        def messageReceived(self, pattern: Any, channel: bytes,
                            message: bytes) -> None:
            broker._received(_text(channel), message)

    return Subscriber()


@implementer(IBroker)
class RedisBroker:
    """
    :param engine: the node's engine (its commands and scripts).
    :param probe_interval: seconds between checks of this node's own
        subscription.
    """

    def __init__(self, engine: Engine, *, history_size: int, history_ttl: float,
                 probe_interval: float) -> None:
        self.engine = engine
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.probe_interval = probe_interval
        self._topics: dict[str, _Topic] = {}
        self._by_topic: dict[str, str] = {}
        self._probe_topic = engine.keys.probe(engine.node)
        self._service = ClientService(
            engine.endpoint, Factory.forProtocol(lambda: _subscriber_protocol(self)),
            retryPolicy=retry_policy(),
            clock=engine.reactor, prepareConnection=self._subscribed_again)
        self._proto: Any = None
        self._probe_timer: IDelayedCall | None = None
        self._probe_sent: tuple[str, float] | None = None
        self._heard = False
        self._running = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self.engine.on_change.append(self._engine_changed)
        self._service.startService()
        self._probe_timer = self.engine.reactor.callLater(0, self._probe)

    def stop(self) -> Deferred[None]:
        self._running = False
        if self._engine_changed in self.engine.on_change:
            self.engine.on_change.remove(self._engine_changed)
        if self._probe_timer is not None and self._probe_timer.active():
            self._probe_timer.cancel()
        d: Deferred[None] = self._service.stopService()
        return d

    def _engine_changed(self, up: bool) -> None:
        if up and self._probe_sent is None:
            self._probe_now()

    def ready(self) -> bool:
        return self._heard and self._proto is not None

    # -- publishing and history -----------------------------------------------

    def publish(self, channel: str, data: str) -> Deferred[Position]:
        engine, keys = self.engine, self.engine.keys
        d = engine.script(
            SCRIPTS["publish"], [keys.channel_meta(channel),
                                 keys.channel_history(channel)],
            [engine.time_arg(), data, self.history_size,
             int(self.history_ttl * 1000), secrets.token_hex(8),
             keys.channel_topic(channel)])
        return d.addCallback(lambda reply: Position(_text(reply[0]), int(reply[1])))

    def history(self, channel: str, after: int) -> Deferred[History]:
        engine, keys = self.engine, self.engine.keys
        d = engine.script(
            SCRIPTS["history"], [keys.channel_meta(channel),
                                 keys.channel_history(channel)],
            [engine.time_arg(), after, self.history_size,
             int(self.history_ttl * 1000), secrets.token_hex(8)])

        def read(reply: list[Any]) -> History:
            position = Position(_text(reply[0]), int(reply[1]))
            entries = tuple((int(reply[i]), _text(reply[i + 1]))
                            for i in range(2, len(reply), 2))
            complete = after >= position.offset or (
                bool(entries) and entries[0][0] == after + 1)
            return History(position, entries, complete)

        return d.addCallback(read)

    # -- listening -----------------------------------------------------------

    def listen(self, channel: str, listener: Listener) -> Deferred[None]:
        topic = self._topics.get(channel)
        if topic is not None:
            topic.listeners.append(listener)
            return succeed(None)
        topic = self._topics[channel] = _Topic([listener])
        name = self.engine.keys.channel_topic(channel)
        self._by_topic[name] = channel
        d = self._subscribe(name)
        d.addCallback(lambda _: self._catch_up(channel, topic))

        def failed(failure: Failure) -> Failure:
            if self._topics.get(channel) is topic:
                self._forget(channel)
            return failure

        return d.addErrback(failed)

    def unlisten(self, channel: str, listener: Listener) -> None:
        topic = self._topics.get(channel)
        if topic is None or listener not in topic.listeners:
            return
        topic.listeners.remove(listener)
        if not topic.listeners:
            self._forget(channel)
            proto = self._proto
            if proto is not None:
                proto.unsubscribe(self.engine.keys.channel_topic(channel)).addErrback(
                    lambda _: None)

    def _forget(self, channel: str) -> None:
        self._topics.pop(channel, None)
        self._by_topic.pop(self.engine.keys.channel_topic(channel), None)

    def _subscribe(self, *topics: str) -> Deferred[Any]:
        d: Deferred[Any] = self._service.whenConnected(failAfterFailures=1)

        def send(proto: Any) -> Deferred[Any]:
            answer: Deferred[Any] = proto.subscribe(list(topics))
            return answer

        d.addCallback(send)
        d.addTimeout(self.engine.timeout * 4, self.engine.reactor)
        return d

    def _subscribed_again(self, proto: Any) -> Deferred[Any]:
        """
        A new subscriber connection (the first, or after a loss): every
        topic is subscribed again, then caught up from the history, so
        what was published meanwhile still arrives, in order.
        """
        d = self.engine.introduce(proto, "subscriber")
        topics = [self._probe_topic, *self._by_topic]
        d.addCallback(lambda _: proto.subscribe(topics))
        d.addTimeout(max(self.engine.timeout * 4, 1.0), self.engine.reactor)

        def subscribed(_: object) -> None:
            self._proto = proto
            self._probe_sent = None
            self._probe_now()
            proto.whenDisconnected().addCallback(self._lost, proto)
            for channel, topic in list(self._topics.items()):
                if topic.held is None:
                    topic.held = []
                    self._catch_up(channel, topic)

        return d.addCallback(subscribed)

    def _lost(self, _: object, proto: Any) -> None:
        if self._proto is proto:
            self._proto = None
            self._heard = False

    # -- delivering ------------------------------------------------------------

    def _received(self, name: str, message: bytes) -> None:
        if name == self._probe_topic:
            if self._probe_sent is not None and _text(message) == self._probe_sent[0]:
                self._probe_sent = None
                self._heard = True
            return
        channel = self._by_topic.get(name)
        topic = None if channel is None else self._topics.get(channel)
        if channel is None or topic is None:
            return
        epoch, _, rest = message.partition(b":")
        offset, _, data = rest.partition(b":")
        try:
            position = Position(epoch.decode("ascii"), int(offset))
        except (UnicodeDecodeError, ValueError):
            return
        if topic.held is not None:
            topic.held.append((position, data.decode("utf-8")))
            return
        self._deliver(channel, topic, position, data.decode("utf-8"))

    def _deliver(self, channel: str, topic: _Topic, position: Position,
                 data: str) -> None:
        known = topic.position
        if known is not None and position.epoch == known.epoch:
            if position.offset <= known.offset:
                return
            if position.offset > known.offset + 1:
                # Some went missing on the way: fill the gap from the
                # history first, holding this one (and later ones) back.
                topic.held = [(position, data)]
                self._catch_up(channel, topic)
                return
        topic.position = position
        for listener in list(topic.listeners):
            listener(channel, position, data)

    def _catch_up(self, channel: str, topic: _Topic) -> Deferred[None]:
        """Read the history after the last offset delivered, deliver it,
        then what was held back meanwhile."""
        known = topic.position
        d = self.history(channel, _NOW if known is None else known.offset)

        def read(history: History) -> None:
            if self._topics.get(channel) is not topic:
                return
            current = history.position
            if known is None:
                topic.position = current
            elif known.epoch != current.epoch or not history.complete:
                topic.position = current
                for listener in list(topic.listeners):
                    listener(channel, current, None)
            else:
                for offset, data in history.entries:
                    self._deliver(channel, topic, Position(current.epoch, offset),
                                  data)
            held, topic.held = topic.held or [], None
            for position, data in held:
                self._deliver(channel, topic, position, data)

        def failed(failure: Failure) -> Failure | None:
            if known is None:
                return failure  # the listen fails
            # The engine is down: try again once it answers.
            self.engine.reactor.callLater(0.5, self._retry_catch_up, channel, topic)
            return None

        return d.addCallbacks(read, failed)

    def _retry_catch_up(self, channel: str, topic: _Topic) -> None:
        if self._topics.get(channel) is topic and topic.held is not None:
            self._catch_up(channel, topic)

    # -- checking the subscription --------------------------------------------

    def _probe(self) -> None:
        self._probe_timer = None
        if not self._running:
            return
        reactor = self.engine.reactor
        sent = self._probe_sent
        if self._proto is None:
            pass  # not subscribed (yet, or again): nothing to check
        elif sent is not None and reactor.seconds() - sent[1] >= self.probe_interval:
            # The last probe never came back: the subscription is deaf.
            self._heard = False
            _log.warn("channel subscription deaf: replacing it", event="engine_probe")
            proto = self._proto
            if proto is not None and proto.transport is not None:
                proto.transport.abortConnection()
            self._probe_sent = None
        if self._probe_sent is None:
            self._probe_now()
        self._probe_timer = reactor.callLater(self.probe_interval, self._probe)

    def _probe_now(self) -> None:
        """Publish a probe on this node's own topic, once subscribed."""
        if self._proto is None or not self._running:
            return
        token = secrets.token_hex(8)
        self._probe_sent = (token, self.engine.reactor.seconds())
        d = self.engine.call("PUBLISH", self._probe_topic, token)

        def not_sent(_: Failure) -> None:
            # The engine did not take it (it is down): no verdict on the
            # subscription; probe again once the engine is back.
            if self._probe_sent is not None and self._probe_sent[0] == token:
                self._probe_sent = None

        d.addErrback(not_sent)
