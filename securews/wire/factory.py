"""
The hardened Autobahn server factory.

:class:`SecureServerFactory` is where settings become Autobahn options.
Autobahn's defaults are permissive (no size limits, every Origin, a
status page with an open redirect, protocol errors answered by a silent
TCP drop); every option that matters is set here explicitly, from the
settings object, whatever Autobahn's defaults are or become.

Everything else (limits, stores, authenticators, metrics) is the
server's :class:`~securews.policy.Policy`, which the factory builds (or
is given) and each protocol consults; the factory adds the accept-time
checks, run before any TLS or WebSocket state is built, and graceful
shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger

from securews.auth.interfaces import IAuthenticator, ITicketStore
from securews.ops.logs import WireLogger
from securews.ops.metrics import Metrics
from securews.policy import Policy, build_policy
from securews.rules.actions import Arrival
from securews.rules.config import Config, from_mapping
from securews.wire._handshake import peer_host
from securews.wire._options import PINNED_OPTIONS, PinnedOptions
from securews.wire.deflate_offer import accept_offer, refuse_offers
from securews.wire.protocol import SecureServerProtocol

__all__ = ["SecureServerFactory"]

_log = Logger(namespace="securews.shutdown")


def _frozen(value: Any) -> Any:
    """Lists (``versions``, the Origin patterns) as tuples: pinned means
    not appendable either."""
    return tuple(value) if isinstance(value, list) else value


class SecureServerFactory(WebSocketServerFactory):
    """
    Builds :class:`~securews.wire.protocol.SecureServerProtocol` instances
    configured from one :class:`~securews.rules.config.Config`.

    :param config: the settings; or pass sections as keyword arguments
        (``server={"path": "/chat"}, origin={"allowed": [...]}``), which
        are checked exactly like a TOML file.
    :param protocol: the application class (a ``SecureServerProtocol``
        subclass); defaults to the ``server.app`` setting.
    :param authenticator: an :class:`~securews.auth.interfaces.IAuthenticator`
        that replaces the ``[auth]`` settings.  Without one, the methods
        of ``auth.methods`` are built (key files read and checked now).
    :param ticket_store: where tickets live (an
        :class:`~securews.auth.interfaces.ITicketStore`); by default in
        this process's memory.
    :param ticket_issuer: with ``authenticator``: authenticates
        ``POST issue_path``; the ticket endpoint is off without it.
    :param policy: a policy built already (:func:`securews.policy.build_policy`,
        for one shared by several factories, or with backends of its
        own); it replaces ``config`` and the three above.
    :param reactor: the reactor, also the clock of every limit and timer.
    :ivar policy: the server's :class:`~securews.policy.Policy`.
    """

    log = WireLogger("securews.factory")
    noisy = False
    protocol: type[SecureServerProtocol]

    def __init__(self, config: Config | None = None, *,
                 protocol: type[SecureServerProtocol] | None = None,
                 authenticator: IAuthenticator | None = None,
                 ticket_store: ITicketStore | None = None,
                 ticket_issuer: IAuthenticator | None = None,
                 policy: Policy | None = None,
                 reactor: Any = None,
                 **sections: Mapping[str, object]) -> None:
        if policy is not None:
            if config is not None or sections or authenticator or ticket_store \
                    or ticket_issuer:
                raise TypeError("pass either a policy or what to build one from")
            config = policy.config
        elif config is None:
            config = from_mapping(sections, source="SecureServerFactory()")
        elif sections:
            raise TypeError("pass either a Config or settings sections, not both")
        super().__init__(reactor=reactor)  # type: ignore[no-untyped-call]
        self.config = config
        if protocol is None:
            from securews.wire.apps import load_app

            protocol = load_app(config.server.app)
        if not issubclass(protocol, SecureServerProtocol):
            raise TypeError(f"{protocol!r} is not a SecureServerProtocol subclass")
        self.protocol = protocol
        if policy is None:
            policy = build_policy(config, self.reactor, authenticator=authenticator,
                                  ticket_store=ticket_store,
                                  ticket_issuer=ticket_issuer)
        self.policy = policy
        #: This factory's live connections (a policy may serve several).
        self.connections: set[SecureServerProtocol] = set()
        self._drained: list[Deferred[None]] = []
        limits = config.limits
        self.setProtocolOptions(
            webStatus=False,
            failByDrop=False,
            maxFramePayloadSize=limits.max_frame_size,
            maxMessagePayloadSize=limits.max_message_size,
            # securews runs both timers itself, on the factory's clock.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            allowedOrigins=["*"],
            allowNullOrigin=False,
            maxConnections=0,
            trustXForwardedFor=0,
            autoPingInterval=0,
            autoPingTimeout=0,
            serveFlashSocketPolicy=False,
            perMessageCompressionAccept=(accept_offer(limits.max_message_size)
                                         if limits.compression else refuse_offers),
            echoCloseCodeReason=False,
            requireMaskedClientFrames=True,
            utf8validateIncoming=True,
            versions=[13],
        )
        self.pinned_options = PinnedOptions(**{
            name: _frozen(getattr(self, name)) for name in PINNED_OPTIONS})
        self.server = ""

    def setProtocolOptions(self, **options: Any) -> None:  # type: ignore[override]
        """
        Autobahn's, except that the options securews derives from its
        settings (:data:`~securews.wire._options.PINNED_OPTIONS`, the
        limits among them) are set once, here, and never again: a later
        call that names one raises :exc:`TypeError`.
        """
        pinned = sorted(set(options) & set(PINNED_OPTIONS))
        if pinned and hasattr(self, "pinned_options"):
            raise TypeError(f"{', '.join(pinned)}: securews takes these from "
                            "its settings, once")
        super().setProtocolOptions(**options)  # type: ignore[no-untyped-call]

    def buildProtocol(self, addr: IAddress) -> SecureServerProtocol | None:  # type: ignore[override]
        """
        A protocol for a connection just accepted, or ``None`` to drop it
        (Twisted then closes the socket): the accept-time checks (plaintext
        only from trusted proxies, the connect rate, the unfinished-handshake
        cap) run here, before any TLS or WebSocket state exists.  Behind a
        PROXY header the client is not known yet: they run once it is read.
        """
        proto: SecureServerProtocol = super().buildProtocol(addr)  # type: ignore[assignment]
        proto._option_source = self
        if self.config.server.proxy_protocol:
            return proto
        self.policy.accepted()
        if not proto.arrive(Arrival(peer_host(addr))):
            return None
        return proto

    def startFactory(self) -> None:
        """Listening: the policy's background work (the JWKS refreshes) runs
        while at least one of its factories listens."""
        super().startFactory()  # type: ignore[no-untyped-call]
        self.policy.start()

    def stopFactory(self) -> None:
        """No longer listening (no timer left behind once the last of the
        policy's factories stops)."""
        self.policy.stop()
        super().stopFactory()  # type: ignore[no-untyped-call]

    @property
    def clock(self) -> IReactorTime:
        return self.reactor  # type: ignore[no-any-return]

    @property
    def metrics(self) -> Metrics:
        """The server's metrics (``policy.metrics``)."""
        return self.policy.metrics

    @property
    def connection_count(self) -> int:
        """This factory's live TCP connections, handshaking or open."""
        return len(self.connections)

    def connection_made(self, proto: SecureServerProtocol) -> None:
        self.connections.add(proto)
        self.policy.connections.add(proto)

    def connection_lost(self, proto: SecureServerProtocol) -> None:
        """A connection ended; the last one completes a shutdown."""
        self.connections.discard(proto)
        self.policy.connections.discard(proto)
        if not self.connections:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    # -- shutdown ----------------------------------------------------------

    def shutdown(self, grace: float | None = None) -> Deferred[None]:
        """
        Close every connection: open sessions get a 1001 close frame,
        unfinished handshakes are dropped.

        :param grace: seconds to wait for peers to finish the close
            handshake before their TCP connections are aborted; defaults
            to ``server.shutdown_grace``.
        :returns: a Deferred that fires once no connection is left.
        """
        if grace is None:
            grace = self.config.server.shutdown_grace
        # What the failure log counted so far is logged now, not lost.
        self.policy.failures.stop()
        connections = self.connections
        if not connections:
            return succeed(None)
        _log.info("closing {count} connections (grace {grace}s)",
                  event="shutdown", count=len(connections), grace=grace)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        for proto in list(connections):
            proto.go_away()
        timer = self.clock.callLater(grace, self._abort_all)

        def cancel_timer(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(cancel_timer)
        return d

    def _abort_all(self) -> None:
        connections = self.connections
        if connections:
            _log.warn("aborting {count} connections after the grace period",
                      event="shutdown", count=len(connections))
        for proto in list(connections):
            proto.abort()
