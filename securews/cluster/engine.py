"""
One node's connection to the engine several nodes share (Redis >= 7.0 or
Valkey >= 7.2), failing closed and recovering by itself.

The client is ``txredisapi``'s protocol (RESP over Twisted, Deferreds),
driven by Twisted's ``ClientService`` for (re)connection, with what the
library does not do added here:

* TLS (``rediss://``) through ``optionsForClientTLS``: the engine's
  certificate is verified against ``cluster.ca_file`` or the system's
  trust store, never skipped.
* A deadline on every call, the wait for a connection included
  (``cluster.timeout``).  A call past it has failed, the connection is
  cut (a stalled engine gets a fresh one) and the engine counts as
  *down*: calls then fail at once (no wait per request) until a probe
  succeeds and this node has reasserted what it holds there (see
  :attr:`Engine.on_recovered`).
* The outage is logged once when it starts and once when it ends.
* Lua scripts are loaded on every new connection and called by digest.

Every caller sees one error, :exc:`EngineUnavailable`, whose text holds
no reply from the engine.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import ssl
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from securews.cluster.scripts import SCRIPTS, Script
from securews.rules.actions import Unavailable
from securews.rules.cluster import ClusterSettings, EngineAddress, Keys
from securews.rules.config import ConfigError

__all__ = ["Engine", "EngineMisconfigured", "EngineUnavailable", "engine_endpoint",
           "trust_root"]

_log = Logger(namespace="securews.cluster")

#: Seconds between probes of an engine that is down.
PROBE_INTERVAL = 0.5


class EngineUnavailable(Unavailable):
    """The engine did not answer in time, or cannot be reached (wherever it
    happens during admission, an authenticator included: 503)."""


class NodeIdInUse(Exception):
    """Another live process runs under this node id."""


class EngineMisconfigured(Exception):
    """The engine answers but must not be used as it is configured."""


def trust_root(ca_file: str) -> Any:
    """
    What a ``rediss://`` engine's certificate is verified with:
    ``cluster.ca_file``'s certificate, or the system's trust store.

    :raises ConfigError: (key ``cluster.ca_file``) when the file cannot be
        read or holds no PEM certificate.
    """
    if not ca_file:
        return ssl.platformTrust()
    try:
        pem = Path(ca_file).read_bytes()
    except OSError as e:
        raise ConfigError(f"{ca_file}: cannot be read ({e.strerror or e})",
                          key="cluster.ca_file") from None
    try:
        # A CA file may hold several certificates (a bundle): all count.
        certificates = [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM))
                        for c in x509.load_pem_x509_certificates(pem)]
    except (ValueError, crypto.Error):
        raise ConfigError(f"{ca_file}: not a PEM certificate",
                          key="cluster.ca_file") from None
    return ssl.trustRootFromCertificates(certificates)


def engine_endpoint(reactor: Any, address: EngineAddress, timeout: float,
                    ca_file: str = "") -> IStreamClientEndpoint:
    """
    The client endpoint for ``address``: TLS verified for ``rediss://``.

    :raises ConfigError: for an unusable ``ca_file`` (:func:`trust_root`).
    """
    if address.path:
        return UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, address.host.encode("idna"), address.port, timeout=timeout)
    if address.tls:
        options = ssl.optionsForClientTLS(address.host,
                                          trustRoot=trust_root(ca_file))
        endpoint = wrapClientTLS(options, endpoint)
    return endpoint


def retry_policy() -> Callable[[int], float]:
    """Reconnection: 50 ms at first, up to 1 s, a little jitter (Twisted's
    default jitter alone adds up to a second to every reconnection)."""
    return backoffPolicy(initialDelay=0.05, maxDelay=1.0,
                         jitter=lambda: random.uniform(0, 0.05))  # noqa: S311


def _protocol() -> Any:
    """txredisapi's plain protocol, bytes in and out, no timers of its own."""
    import txredisapi

    return txredisapi.BaseRedisProtocol(charset=None, convertNumbers=False)


class Engine:
    """
    :param settings: ``[cluster]``.
    :param reactor: the reactor (its clock runs the deadlines).
    :param password: the ACL password, read from ``cluster.password_file``.
    :param endpoint: where to connect (tests); by default from the settings.
    :ivar keys: the key layout under ``cluster.key_prefix``.
    :ivar node: this node's id in the engine's counts.
    :ivar on_recovered: called (a Deferred may be returned) when the engine
        is reachable again or lost its data, before it counts as up: the
        node reasserts its places there.
    """

    def __init__(self, settings: ClusterSettings, reactor: Any, *, node: str,
                 password: str | None = None,
                 endpoint: IStreamClientEndpoint | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.node = node
        self.keys = Keys(settings.key_prefix)
        #: This process, among the nodes: two live processes with one node
        #: id would overwrite each other's places (see renewals).
        self.instance = secrets.token_hex(8)
        self.timeout = settings.timeout
        self._password = password
        address = settings.engine
        self._address = address
        self.endpoint = endpoint or engine_endpoint(
            reactor, address, settings.timeout, settings.ca_file)
        self._service = ClientService(
            self.endpoint, Factory.forProtocol(_protocol),
            retryPolicy=retry_policy(), clock=reactor,
            prepareConnection=self._prepare)
        self.up = False
        self.misconfigured: str | None = None
        self.epoch: str | None = None
        self.on_recovered: Callable[[], object] | None = None
        self.on_change: list[Callable[[bool], None]] = []
        #: The time the scripts use: ``""``, the engine's own clock; tests
        #: give milliseconds of a clock of theirs.
        self.time_arg: Callable[[], str | int] = _engine_time
        self._probe: IDelayedCall | None = None
        self._down_since: float | None = None
        self._running = False
        self._recovering: Deferred[Any] | None = None
        self._proto: Any = None
        self._up_waiters: list[Deferred[None]] = []
        self._lost_data = False
        self._id_in_use = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Connect; the engine counts as up once a probe succeeded."""
        self._running = True
        self._service.startService()
        self._schedule_probe(0)

    def when_up(self) -> Deferred[None]:
        """Fires once the engine is up (at once if it is)."""
        if self.up:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._up_waiters.append(d)
        return d

    def stop(self) -> Deferred[None]:
        """Give this node id back (if the engine answers), then disconnect."""
        self._running = False
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        if self.up:
            given: Deferred[Any] = self.script(
                SCRIPTS["unregister"], [self.keys.node(self.node)], ["", self.instance])
            given.addErrback(lambda _: None)
        else:
            given = succeed(None)
        self.up = False
        d: Deferred[None] = given.addCallback(lambda _: self._service.stopService())
        return d

    # -- calls -------------------------------------------------------------

    def call(self, *args: bytes | str | int | float,
             recovering: bool = False) -> Deferred[Any]:
        """
        One command, within the deadline; fails at once while down, unless
        it is part of the recovery (``recovering``: the reassertion that
        comes before the engine counts as up).
        """
        if not (self.up or recovering):
            return fail(EngineUnavailable())
        return self._call(args, recovering)

    def script(self, script: Script, keys: Sequence[str],
               args: Sequence[bytes | str | int | float], *,
               recovering: bool = False) -> Deferred[Any]:
        """Run a Lua script (by its digest) within the deadline."""
        return self.call("EVALSHA", script.sha, len(keys), *keys, *args,
                         recovering=recovering)

    def _call(self, args: Sequence[object], recovering: bool = True) -> Deferred[Any]:
        d: Deferred[Any] = self._service.whenConnected(failAfterFailures=1)

        def send(proto: Any) -> Deferred[Any]:
            # Asked while up, the engine may have gone down meanwhile (a
            # new connection found it without its data): only recovery
            # goes on then, before the node's places are written again.
            if not (self.up or recovering):
                raise EngineUnavailable()
            answer: Deferred[Any] = proto.execute_command(*args)
            return answer

        d.addCallback(send)
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(self._failed)

    def _drop_connection(self) -> None:
        """Give the current connection up; a fresh one is prepared."""
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()

    def _failed(self, failure: Failure) -> Failure:
        import txredisapi

        if failure.check(EngineUnavailable):
            return failure
        if failure.check(txredisapi.ResponseError):
            error = str(failure.value).split(" ", 1)[0]
            if error == "NOSCRIPT":
                # The engine's scripts were flushed: a new connection loads
                # them again.
                self._drop_connection()
                self.went_down("scripts lost")
            elif error in _UNUSABLE:
                # A read-only replica (after a failover), out of memory,
                # loading, a busy script: nothing can be written there; a
                # new connection finds the primary (or waits for it).
                self._drop_connection()
                self.went_down(error)
            else:
                # A refused command (a bug, a wrong type): this request
                # fails, the engine is not down.
                _log.error("engine refused a command ({error})",
                           event="engine_error", error=type(failure.value).__name__)
            return Failure(EngineUnavailable())
        if failure.check(CancelledError, TimeoutError):
            # A stalled engine: its connection is given up.
            self._drop_connection()
        self.went_down(failure.type.__name__ if failure.type else "?")
        return Failure(EngineUnavailable())

    # -- each new connection -----------------------------------------------

    def introduce(self, proto: Any, name: str) -> Deferred[Any]:
        """What every connection of this node does first: authenticate,
        select the database, say who it is."""
        steps: list[tuple[object, ...]] = []
        if self._password is not None:
            steps.append(("AUTH", self._address.username or "default", self._password))
        if self._address.db:
            steps.append(("SELECT", self._address.db))
        steps.append(("CLIENT", "SETNAME", f"securews-{self.node}-{name}"))
        d: Deferred[Any] = succeed(None)
        for step in steps:
            d.addCallback(_send, proto, *step)
        return d

    def _prepare(self, proto: Any) -> Deferred[Any]:
        """Introduce the connection, check the engine, load the scripts; a
        connection that fails any of it is dropped and retried."""
        self._proto = proto

        def send(_: object, *command: object) -> Deferred[Any]:
            return _send(None, proto, *command)

        d = self.introduce(proto, "calls")
        d.addCallback(send, "INFO", "memory")
        d.addCallback(self._check_info)
        d.addCallback(send, "ROLE")
        d.addCallback(self._check_role)
        for script in SCRIPTS.values():
            d.addCallback(send, "SCRIPT", "LOAD", script.source)
        d.addCallback(send, "GET", self.keys.epoch)
        d.addCallback(self._epoch_on_connect)
        d.addTimeout(max(self.timeout * 4, 1.0), self.reactor)

        def refused(failure: Failure) -> Failure:
            proto.transport.abortConnection()
            return failure

        return d.addErrback(refused)

    def _epoch_on_connect(self, current: bytes | None) -> None:
        """A new connection to an engine that lost its data (a quick
        restart, noticed by no failed call): down now, before any waiting
        call gets this connection, until this node has reasserted."""
        if self.epoch is not None and (current is None
                                       or current.decode() != self.epoch):
            self.went_down("engine restarted")

    def _check_role(self, role: Any) -> None:
        if isinstance(role, list) and role and role[0] not in (b"master", "master"):
            raise EngineMisconfigured("a replica, not the primary")

    def check_policy(self) -> Deferred[None]:
        """
        Check again that the engine may not evict keys (someone could
        ``CONFIG SET`` it while the node runs): if it may now, the engine
        counts as down, logged once, until it is set back.
        """
        d = self.call("INFO", "memory")

        def checked(info: bytes) -> None:
            try:
                self._check_info(info)
            except EngineMisconfigured:
                self._drop_connection()
                self.went_down("maxmemory-policy")

        return d.addCallback(checked)

    def _check_info(self, info: bytes) -> None:
        policy = _info_field(info, b"maxmemory_policy")
        if policy != b"noeviction":
            shown = policy.decode("ascii", "replace") if policy else "unknown"
            problem = (f"{self._address}: maxmemory-policy is {shown}; securews "
                       "needs noeviction (an evicted limit key silently lifts a "
                       "limit)")
            if problem != self.misconfigured:
                _log.error("{problem}: new handshakes are refused 503",
                           event="engine_misconfigured", problem=problem)
            self.misconfigured = problem
            raise EngineMisconfigured(problem)
        self.misconfigured = None

    # -- down and up ---------------------------------------------------------

    def went_down(self, why: str) -> None:
        if self.up:
            self.up = False
            self._down_since = self.reactor.seconds()
            _log.error("engine {engine} unavailable ({why}): new handshakes are "
                       "refused 503 until it is back", event="engine_down",
                       engine=str(self._address), why=why)
            for callback in list(self.on_change):
                callback(False)
        self._schedule_probe(PROBE_INTERVAL)

    def _schedule_probe(self, delay: float) -> None:
        if not self._running or (self._probe is not None and self._probe.active()):
            return
        self._probe = self.reactor.callLater(delay, self._run_probe)

    def _run_probe(self) -> None:
        self._probe = None
        if self.up or self._recovering is not None:
            return
        d = self._call(("GET", self.keys.epoch))
        d.addCallback(self._epoch_seen)
        d.addCallback(lambda _: self._register())
        d.addCallback(lambda _: self._recover())
        self._recovering = d

        def done(result: object) -> None:
            self._recovering = None
            if isinstance(result, Failure):
                self._schedule_probe(PROBE_INTERVAL)
            elif self._lost_data:
                # The other nodes reassert their places as they reconnect:
                # admitting before they have would count without them.
                self._lost_data = False
                self.reactor.callLater(self.settings.lease / 3, self._came_up)
            else:
                self._came_up()

        d.addBoth(done)

    def _epoch_seen(self, current: bytes | None) -> Deferred[Any] | None:
        """
        The engine's epoch: a value set once.  Missing or different from
        the one this node saw, the engine lost its data (a restart without
        persistence): a new epoch is set and the node reasserts.
        """
        if current is not None and current.decode() == self.epoch:
            return None
        if self.epoch is not None:
            self._lost_data = True
            _log.warn("engine {engine} lost its data (new epoch): this node "
                      "reasserts its places", event="engine_epoch",
                      engine=str(self._address))
        fresh = secrets.token_hex(8)
        d = self._call(("SET", self.keys.epoch, fresh, "NX"))
        d.addCallback(lambda _: self._call(("GET", self.keys.epoch)))
        d.addCallback(lambda value: setattr(self, "epoch", value.decode()))
        return d

    def _register(self) -> Deferred[None]:
        """
        Take this node id for this process (for a lease; each renewal
        extends it) before counting as up: two live processes under one id
        would overwrite each other's shares of every count.  While another
        holds it, this node stays down, says so once, and tries again.
        """
        lease_ms = int(self.settings.lease * 1000)
        d = self._call(("SET", self.keys.node(self.node), self.instance,
                        "NX", "GET", "PX", lease_ms))

        def taken(previous: bytes | None) -> None:
            if previous is None or previous.decode() == self.instance:
                self._id_in_use = False
                return
            if not self._id_in_use:
                self._id_in_use = True
                _log.error("node id {node} is in use by another live process: "
                           "this one stays unavailable until it is free (give "
                           "each node its own cluster.node_id)",
                           event="node_id_in_use", node=self.node)
            raise NodeIdInUse(self.node)

        return d.addCallback(taken)

    def _recover(self) -> Deferred[Any]:
        if self.on_recovered is None:
            return succeed(None)
        return maybeDeferred(self.on_recovered)

    def _came_up(self) -> None:
        if self.up or not self._running:
            return
        self.up = True
        if self._down_since is not None:
            _log.info("engine {engine} available again after {seconds:.1f} s",
                      event="engine_up", engine=str(self._address),
                      seconds=self.reactor.seconds() - self._down_since)
        else:
            _log.info("engine {engine} available", event="engine_up",
                      engine=str(self._address))
        self._down_since = None
        for callback in list(self.on_change):
            callback(True)
        waiters, self._up_waiters = self._up_waiters, []
        for d in waiters:
            d.callback(None)


def _send(_: object, proto: Any, *command: object) -> Deferred[Any]:
    answer: Deferred[Any] = proto.execute_command(*command)
    return answer


def _engine_time() -> str:
    return ""


#: Error replies meaning nothing can be done on this engine now.
_UNUSABLE = frozenset({"READONLY", "OOM", "LOADING", "MASTERDOWN", "BUSY",
                       "NOREPLICAS", "CLUSTERDOWN"})


def _info_field(info: bytes, name: bytes) -> bytes | None:
    for line in info.splitlines():
        key, _, value = line.partition(b":")
        if key == name:
            return value.strip()
    return None
