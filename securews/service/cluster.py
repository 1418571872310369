"""
This node's membership of a cluster (``cluster.redis_url``): the engine
is checked before anything listens (an engine securews must not use stops
the server with one line); then the engine's backends serve the policy,
this node's places are renewed, revocations announced by any node close
the sessions they concern, and the node fences itself when cut off.

**Fencing.**  A node's places count only while it renews them.  A node
that cannot renew for longer than half a lease (the engine is down, or
this node is cut off from it) closes its own sessions, 1013 "try again
later", spread over the next quarter lease, so that they are gone before
its places lapse and no other node ever admits beyond a limit on the
strength of a share that vanished while its sessions lived on.  New
handshakes meanwhile get 503 (the engine does not answer them either).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from securews.cluster.broker import RedisBroker
from securews.cluster.engine import Engine, NodeIdInUse
from securews.cluster.places import (
    LeaseBook,
    RedisGate,
    RedisRateLimiter,
    RedisSessionCounter,
    Renewed,
)
from securews.cluster.preflight import check_engine
from securews.cluster.revocations import ControlFeed, RedisRevocations, Revoked
from securews.cluster.tickets import RedisTicketStore
from securews.policy import Policy, Shared
from securews.policy._sessions import FENCED
from securews.rules.config import Config, ConfigError

__all__ = ["ClusterNode", "cluster_node", "default_node_id", "read_password"]

_log = Logger(namespace="securews.cluster")


def default_node_id() -> str:
    """``hostname-pid-random``, in the characters a node id may hold (the
    random part: two containers sharing a host name both run as pid 1)."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def read_password(path: str) -> str | None:
    """
    ``cluster.password_file``: the engine's ACL password, the file's
    first line (a trailing newline is not part of it).

    :raises ConfigError: when the file cannot be read or is empty.
    """
    if not path:
        return None
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({type(e).__name__})",
                          key="cluster.password_file") from None
    first = text.splitlines()[0] if text.strip() else ""
    if not first:
        raise ConfigError(f"{path}: is empty", key="cluster.password_file")
    return first


class ClusterNode(Service):
    """
    Give it the policy it serves (:meth:`serve`) before it starts.

    :param password: the engine's ACL password (``cluster.password_file``).
    :ivar ready: the engine is up and this node's places are written.
    """

    def __init__(self, config: Config, reactor: Any, *,
                 password: str | None = None,
                 engine: Engine | None = None) -> None:
        settings = config.cluster
        self.settings = settings
        self.reactor = reactor
        self.engine = engine or Engine(
            settings, reactor, node=settings.node_id or default_node_id(),
            password=password)
        engine = self.engine
        self.book = LeaseBook(engine)
        rates = config.ratelimit
        ticket = config.auth.ticket
        self.rate = RedisRateLimiter(engine, rates.connect_rate, rates.connect_burst)
        self.gate = RedisGate(self.book, per_client=rates.connections_per_ip,
                              per_principal=rates.sessions_per_principal,
                              rate=rates.connect_rate, burst=rates.connect_burst)
        self.revocations = RedisRevocations(engine)
        self.tickets = RedisTicketStore(engine, ttl=ticket.ttl,
                                        max_outstanding=ticket.max_outstanding,
                                        bind_ip=ticket.bind_ip)
        channels = config.channels
        self.broker = RedisBroker(engine, history_size=channels.history_size,
                                  history_ttl=channels.history_ttl,
                                  probe_interval=channels.probe_interval)
        self.feed = ControlFeed(engine, engine.endpoint,
                                lambda proto: engine.introduce(proto, "feed"),
                                self._announced)
        self._policy: Policy | None = None
        self._renewal: IDelayedCall | None = None
        self._renewed_at: float | None = None
        self._fenced = False
        self._fence_timer: IDelayedCall | None = None
        engine.on_recovered = self._reassert

    @property
    def ready(self) -> bool:
        """The engine is up (this node's places written) and the channel
        subscription hears its own probes."""
        return self.engine.up and self.broker.ready()

    def shared(self) -> Shared:
        """The policy's backends: the engine's."""
        return Shared(connect_rate=self.rate,
                      per_client=RedisSessionCounter(
                          self.book, "network", self.gate.per_client),
                      per_principal=RedisSessionCounter(
                          self.book, "principal", self.gate.per_principal),
                      revocations=self.revocations, gate=self.gate,
                      broker=self.broker)

    def serve(self, policy: Policy) -> None:
        """The policy whose sessions revocations and fencing close."""
        self._policy = policy

    def _announced(self, revoked: Revoked) -> None:
        """A revocation, from any node (this one too): this node's sessions
        on it are closed (those closed already are not closed twice)."""
        if self._policy is not None:
            self._policy.sessions.end_revoked(revoked.kind, revoked.digest,
                                              revoked.at)

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.engine.start()
        self.feed.start()
        self.broker.start()
        self._written(self.reactor.seconds())
        self._schedule_renewal()

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]
        for timer in (self._renewal, self._fence_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._renewal = self._fence_timer = None
        # What this node held is given back by its sessions' ends; what is
        # left lapses with its lease.
        return DeferredList([maybeDeferred(self.feed.stop),
                             maybeDeferred(self.broker.stop),
                             maybeDeferred(self.engine.stop)])

    # -- renewal and fencing -------------------------------------------------
    #
    # The node's shares count in the engine until ``lease`` after the last
    # renewal that was *written*, dated from when it was sent (its reply
    # may come later).  The fence is a timer of its own, half a lease after
    # that: whatever the renewals are doing (waiting on a deadline, or not
    # running at all in a frozen process), the sessions are closed before
    # the shares lapse.  A process that comes back from longer than half a
    # lease away (frozen, its clock held back) fences before it writes
    # anything: what it held may have been given to others meanwhile.

    @property
    def _period(self) -> float:
        return self.settings.lease / 3

    def _schedule_renewal(self) -> None:
        if self.running:
            self._renewal = self.reactor.callLater(self._period, self._renew)

    def _written(self, sent: float) -> None:
        """A renewal sent at ``sent`` was written: the fence moves on."""
        if self._renewed_at is not None and sent < self._renewed_at:
            return
        self._renewed_at = sent
        self._fenced = False
        if self._fence_timer is not None and self._fence_timer.active():
            self._fence_timer.cancel()
        if self.running:
            self._fence_timer = self.reactor.callLater(
                max(0.0, sent + self.settings.lease / 2 - self.reactor.seconds()),
                self._fence)

    def _renew(self) -> None:
        self._renewal = None
        sent = self.reactor.seconds()
        if self._overdue(sent):
            self._fence()
        d = self.book.renew()
        d.addCallbacks(self._renewed, lambda _: None, callbackArgs=(sent,))
        # The engine's eviction policy, again: someone may CONFIG SET it
        # while the nodes run (an evicted limit key silently lifts a limit).
        d.addCallback(lambda _: self.engine.check_policy() if self.engine.up else None)
        d.addErrback(lambda _: None)
        d.addBoth(lambda _: self._schedule_renewal())

    def _renewed(self, renewed: Renewed, sent: float) -> None:
        if renewed.owner is not None:
            _log.error("node id {node} is in use by another live process: this "
                       "one is not ready and writes nothing until it is free",
                       event="node_id_in_use", node=self.engine.node)
            self.engine.went_down("node id in use")
            return
        if renewed.epoch != self.engine.epoch:
            # The engine lost its data since the last renewal: what this
            # node holds was just written again; the epoch is the engine's.
            self.engine.went_down("engine lost its data")
            return
        self._written(sent)

    def _overdue(self, now: float) -> bool:
        """Half a lease since the last write: what this node held may be
        lapsing (or gone, after a longer freeze)."""
        last = self._renewed_at
        return last is not None and now - last > self.settings.lease / 2

    def _fence(self) -> None:
        """Cut off for half a lease: close every session before its place
        lapses (a quarter lease to spread them, a quarter to spare)."""
        self._fence_timer = None
        if self._fenced or self._renewed_at is None:
            return
        self._fenced = True
        away = self.reactor.seconds() - self._renewed_at
        lease = self.settings.lease
        _log.error("cannot renew this node's places in the cluster for "
                   "{seconds:.1f} s: closing its sessions (1013) before they "
                   "lapse", event="fenced", seconds=away)
        if self._policy is not None:
            spread = max(0.0, min(lease / 4, lease * 3 / 4 - away))
            self._policy.sessions.end_all(FENCED, spread, self.reactor.callLater)

    def _reassert(self) -> Deferred[Any]:
        """The engine is back (or lost its data): write what this node holds
        before it counts as up."""
        sent = self.reactor.seconds()
        if self._overdue(sent):
            self._fence()
        d = self.book.renew(recovering=True)

        def written(renewed: Renewed) -> None:
            if renewed.owner is not None:
                raise NodeIdInUse(self.engine.node)
            self._written(sent)

        return d.addCallback(written)


def cluster_node(config: Config, reactor: Any) -> ClusterNode:
    """
    :raises ConfigError: for an unreadable password file, or an engine that
        may evict keys, is older than Redis 7.0, refuses the credentials or
        presents a certificate that does not verify.
    """
    settings = config.cluster
    password = read_password(settings.password_file)
    facts = check_engine(settings, password)
    if facts is None:
        _log.warn("engine {engine} cannot be reached now: handshakes are refused "
                  "(503) until it can", event="startup", engine=str(settings.engine))
    return ClusterNode(config, reactor, password=password)
