"""
Listening on an endpoint as a twistd service, knowing the port.

Twisted's ``StreamServerEndpointService`` does the listening, but tells
when it listens (and what port it got) only through private attributes,
and reports a bind failure synchronously only if another private one is
set.  This small service does the same with public API: it binds in
``privilegedStartService`` (before ``twistd --uid`` drops root, so port
443 works unprivileged), raises a bind failure at once (``twistd`` then
refuses to start), and offers :meth:`when_listening`.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure

__all__ = ["ListeningService"]


class ListeningService(Service):
    """
    Listens with ``factory`` on ``endpoint`` while running.

    :ivar port: the listening port, once listening.
    """

    def __init__(self, endpoint: IStreamServerEndpoint,
                 factory: IProtocolFactory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._waiters: list[Deferred[IListeningPort]] = []
        self._listening: Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        failed: list[Failure] = []
        d = self._listening = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listened, failed.append)
        if failed:  # a bind failure is known at once: refuse to start
            self._listening = None
            failed[0].raiseException()

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once listening (at once if it is)."""
        if self.port is not None:
            return succeed(self.port)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        listening, self._listening = self._listening, None
        port, self.port = self.port, None
        if port is not None:
            stopped: Deferred[Any] | None = port.stopListening()
            return stopped
        if listening is not None:
            listening.cancel()
        return None
