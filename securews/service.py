"""
The securews service: one listener, one factory, a graceful stop.

:func:`build_service` does every check that can fail (application,
endpoint string, TLS files) before returning, so that ``twistd`` refuses
a bad configuration before anything listens.  The listener binds in
``privilegedStartService``, i.e. before ``twistd --uid`` drops root, so
port 443 works without running the server as root.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from securews.auth.interfaces import IAuthenticator
from securews.config import Config
from securews.factory import SecureServerFactory
from securews.listening import listening_factory, server_endpoint
from securews.protocol import SecureServerProtocol

__all__ = ["SecureWebSocketService", "build_service"]


class SecureWebSocketService(MultiService):
    """
    Listens with a :class:`SecureServerFactory`; on stop, closes the
    listener first, then every session with 1001, within
    ``server.shutdown_grace``.

    :ivar factory: the WebSocket factory.
    :ivar listener: the endpoint service (its ``_waitingForPort`` fires
        with the listening port).
    """

    log = Logger(namespace="securews.service")

    def __init__(self, config: Config, factory: SecureServerFactory,
                 listener: StreamServerEndpointService,
                 observer: ILogObserver | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.factory = factory
        self.listener = listener
        self.observer = observer
        listener.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        """Also hand ``[log]``'s observer to twistd's application."""
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if not self.config.tls.enabled:
            self.log.warn(
                "TLS is disabled: serving plaintext ws:// to the trusted proxies "
                "{proxies} only", event="startup",
                proxies=", ".join(self.config.server.trusted_proxies),
            )
        waiting = self.listener._waitingForPort
        if waiting is not None:
            waiting.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        address = port.getHost()
        scheme = "wss" if self.config.tls.enabled else "ws"
        host = getattr(address, "host", None)
        where = (f"{scheme}://{_host_for_url(host)}:{address.port}"
                 f"{self.config.server.path}") if host else str(address)
        self.log.info("securews listening on {url}", event="startup", url=where)
        if self.config.dev:
            self.log.warn(
                "DEVELOPMENT MODE, NOT FOR PRODUCTION: anonymous access and a "
                "missing Origin are allowed. Connect to {url}, trusting the "
                "self-signed certificate {cert}", event="startup", url=where,
                cert=self.config.tls.cert,
            )
        return port

    def stopService(self) -> Deferred[None]:
        self.log.info("securews stopping: no new connections", event="shutdown")
        d: Deferred[None] = maybeDeferred(super().stopService)
        d.addCallback(lambda _: self.factory.shutdown())
        return d


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def build_service(config: Config, reactor: Any, *,
                  protocol: type[SecureServerProtocol] | None = None,
                  authenticator: IAuthenticator | None = None,
                  observer: ILogObserver | None = None) -> IService:
    """
    Build the service for ``config``.

    :raises ConfigError: for a bad app, endpoint or TLS file.
    """
    factory = SecureServerFactory(config, protocol=protocol,
                                  authenticator=authenticator, reactor=reactor)
    endpoint = server_endpoint(reactor, config.server.listen)
    listener = StreamServerEndpointService(endpoint, listening_factory(factory))
    listener._raiseSynchronously = True
    return SecureWebSocketService(config, factory, listener, observer)
