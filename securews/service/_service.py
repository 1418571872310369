"""
The securews service: one listener, one factory, a graceful stop.

:func:`build_service` does every check that can fail (application,
endpoint string, TLS files) before returning, so that ``twistd`` refuses
a bad configuration before anything listens.  The listener binds in
``privilegedStartService``, i.e. before ``twistd --uid`` drops root, so
port 443 works without running the server as root.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.web.resource import Resource

from securews.auth.interfaces import IAuthenticator
from securews.ops.banner import log_banner
from securews.ops.systemd import Notifier, watchdog_service
from securews.policy import build_policy
from securews.rules.config import Config
from securews.service.admin import Readiness, admin_service
from securews.service.admin_actions import (
    PublishResource,
    RevokeResource,
    read_token,
)
from securews.service.cluster import cluster_node
from securews.service.listener import ListeningService
from securews.service.reload import CertificateReloadService
from securews.wire.factory import SecureServerFactory
from securews.wire.listening import listening_factory, server_endpoint
from securews.wire.protocol import SecureServerProtocol
from securews.wire.tls import server_context

__all__ = ["SecureWebSocketService", "build_service"]


class SecureWebSocketService(MultiService):
    """
    Listens with a :class:`SecureServerFactory`; on stop, closes the
    listener first, then every session with 1001, within
    ``server.shutdown_grace``.

    :ivar factory: the WebSocket factory.
    :ivar listener: the listening service (``when_listening()`` fires
        with the port).
    :ivar readiness: what the admin listener's ``/readyz`` reports.
    :ivar admin: the admin listener (a child), stopped last, after the
        drain, so that ``/readyz`` answers 503 while sessions close.
    """

    log = Logger(namespace="securews.service")

    def __init__(self, config: Config, factory: SecureServerFactory,
                 listener: ListeningService,
                 observer: ILogObserver | None = None,
                 notifier: Notifier | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.factory = factory
        self.listener = listener
        self.observer = observer
        self.readiness = Readiness()
        self.notifier = Notifier({}) if notifier is None else notifier
        self.admin: IService | None = None
        self.reloader: IService | None = None
        self.cluster: IService | None = None
        listener.setServiceParent(self)  # type: ignore[no-untyped-call]

    def setServiceParent(self, parent: Any) -> None:
        """Also hand ``[log]``'s observer to twistd's application."""
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)

    def startService(self) -> None:
        self.readiness.draining = False
        super().startService()  # type: ignore[no-untyped-call]
        if not self.config.tls.enabled:
            self.log.warn(
                "TLS is disabled: serving plaintext ws:// to the trusted proxies "
                "{proxies} only", event="startup",
                proxies=", ".join(
                    _shown(n) for n in self.config.server.trusted_proxies),
            )
        self.listener.when_listening().addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self.readiness.listening = True
        address = port.getHost()
        scheme = "wss" if self.config.tls.enabled else "ws"
        host = getattr(address, "host", None)
        where = (f"{scheme}://{_host_for_url(host)}:{address.port}"
                 f"{self.config.server.path}") if host else str(address)
        self.log.info("securews listening on {url}", event="startup", url=where)
        log_banner(self.config, where)
        if self.config.dev:
            page = f"https://{_host_for_url(host or '127.0.0.1')}:{address.port}/"
            self.log.warn(
                "DEVELOPMENT MODE, NOT FOR PRODUCTION: anonymous access, a "
                "missing Origin and pages from this machine (Origins "
                "http(s)://localhost, 127.0.0.1 and [::1], any port) are "
                "allowed. Open {page} in a browser (accept the self-signed "
                "certificate once) for a test page, or connect to {url} "
                "trusting the certificate {cert}", event="startup", url=where,
                page=page, cert=self.config.tls.cert,
            )
        self.notifier.ready()
        return port

    def stopService(self) -> Deferred[None]:
        self.notifier.stopping()
        self.readiness.draining = True
        self.log.info("securews stopping: no new connections", event="shutdown")
        # MultiService.stopService, minus the cluster membership, the admin
        # listener and the SIGHUP handler: they stop last, after the drain
        # (the sessions give their places back in the cluster as they end).
        Service.stopService(self)
        last = [s for s in (self.cluster, self.reloader, self.admin) if s is not None]
        d: Deferred[Any] = DeferredList([
            maybeDeferred(child.stopService)
            for child in reversed(list(self)) if child not in last])
        d.addCallback(lambda _: self.factory.shutdown())
        for service in last:
            d.addBoth(_then_stop, service)
        return d


def _then_stop(result: object, service: IService) -> Deferred[object]:
    """Stop ``service``, then pass ``result`` on."""
    d: Deferred[object] = maybeDeferred(service.stopService)
    return d.addCallback(lambda _: result)


def _shown(network: IPv4Network | IPv6Network) -> str:
    """A trusted proxy as an operator wrote it: the address, or the network."""
    return str(network.network_address if network.num_addresses == 1 else network)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def build_service(config: Config, reactor: Any, *,
                  protocol: type[SecureServerProtocol] | None = None,
                  authenticator: IAuthenticator | None = None,
                  observer: ILogObserver | None = None,
                  notifier: Notifier | None = None) -> IService:
    """
    Build the service for ``config``.

    :param notifier: systemd notifications; given (by ``twistd``), the
        service also reloads certificates on SIGHUP and feeds the systemd
        watchdog.  Embedders and tests leave it out and stay signal-free.
    :raises ConfigError: for a bad app, endpoint or TLS file, or an
        ``[admin]`` listener that is not allowed.
    """
    cluster = None
    if config.cluster.enabled:
        cluster = cluster_node(config, reactor)
        policy = build_policy(config, reactor, authenticator=authenticator,
                              ticket_store=cluster.tickets, shared=cluster.shared())
        cluster.serve(policy)
        factory = SecureServerFactory(policy=policy, protocol=protocol,
                                      reactor=reactor)
    else:
        factory = SecureServerFactory(config, protocol=protocol,
                                      authenticator=authenticator, reactor=reactor)
    endpoint = server_endpoint(reactor, config.server.listen)
    context = server_context(config.tls) if config.tls.enabled else None
    listener = ListeningService(endpoint, listening_factory(factory, context),
                                description=config.server.listen, key="server.listen")
    factory.metrics.watch_certificate(
        None if context is None
        else lambda: context.credentials.leaf.not_valid_after_utc)
    service = SecureWebSocketService(config, factory, listener, observer, notifier)
    if cluster is not None:
        # Connecting before the listener starts: handshakes that come first
        # are refused 503 until the engine is up.
        service.cluster = cluster
        service.readiness.cluster = cluster
        factory.metrics.watch_engine(lambda: cluster.ready)
        service.addService(cluster)  # type: ignore[no-untyped-call]
    token = read_token(config.admin.token_file)
    actions: dict[bytes, Resource] = {}
    if token is not None:
        actions[b"revoke"] = RevokeResource(factory.policy, token)
        actions[b"publish"] = PublishResource(factory.policy, token)
    admin = admin_service(config.admin, factory.metrics, service.readiness, reactor,
                          actions)
    if admin is not None:
        service.admin = admin
        admin.setServiceParent(service)
    if notifier is not None:
        reloader = CertificateReloadService(reactor, context)
        reloader.setServiceParent(service)  # type: ignore[no-untyped-call]
        service.reloader = reloader
        watchdog = watchdog_service(notifier, reactor)
        if watchdog is not None:
            watchdog.setServiceParent(service)  # type: ignore[no-untyped-call]
    return service
