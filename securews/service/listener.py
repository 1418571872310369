"""
Listening on an endpoint as a twistd service, knowing the port.

Twisted's ``StreamServerEndpointService`` does the listening, but tells
when it listens (and what port it got) only through private attributes,
and reports a bind failure synchronously only if another private one is
set.  This small service does the same with public API: it binds in
``privilegedStartService`` (before ``twistd --uid`` drops root, so port
443 works unprivileged), raises a bind failure at once (``twistd`` then
refuses to start), and offers :meth:`when_listening`.

A bind failure is a :class:`ListenError`: one line naming the address and
the cause in an operator's words ("address already in use", "ports below
1024 need ..."), never Twisted's traceback.  :func:`try_bind` finds the
same failures for a TCP endpoint without listening (``securews check``,
and ``twistd`` before it daemonizes and its standard error is gone).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure

from securews._twisted import endpoint_address
from securews.rules.config import ConfigError

__all__ = ["ListenError", "ListeningService", "listen_error", "try_bind"]

_PRIVILEGED_PORTS = 1024


class ListenError(ConfigError):
    """The server cannot listen where it is told to (one line, no traceback)."""


def _cause(error: BaseException, port: int | None) -> str:
    code = getattr(error, "errno", None)
    if isinstance(error, socket.gaierror):
        return "no such interface (not an address of this machine, nor a name " \
            "that resolves to one)"
    if code == errno.EADDRINUSE:
        return "address already in use (is another server, or securews, running?)"
    if code in (errno.EACCES, errno.EPERM):
        if port is not None and 0 < port < _PRIVILEGED_PORTS:
            return (f"permission denied: ports below {_PRIVILEGED_PORTS} need root "
                    "or CAP_NET_BIND_SERVICE (conf/securews.service grants it)")
        return "permission denied"
    if code == errno.EADDRNOTAVAIL:
        return "no such address on this machine (check interface=)"
    if code == errno.EAFNOSUPPORT:
        return "address family not supported here (IPv6 disabled?)"
    if isinstance(code, int):
        return os.strerror(code).lower()
    return type(error).__name__


def _where(interface: str | None, port: object) -> str:
    if interface is None:
        return str(port)
    host = f"[{interface}]" if ":" in interface else (interface or "*")
    return f"{host}:{port}"


def listen_error(error: BaseException, description: str = "",
                 key: str = "") -> ListenError:
    """
    ``error`` (a :class:`CannotListenError` or an ``OSError``) as one line.

    :param description: the endpoint string, when known.
    :param key: the setting it comes from, when known.
    """
    prefix = f"{description!r}: " if description else ""
    if isinstance(error, CannotListenError):
        port = error.port if isinstance(error.port, int) else None
        return ListenError(f"{prefix}cannot listen on "
                           f"{_where(error.interface, error.port)}: "
                           f"{_cause(error.socketError, port)}", key=key)
    # (os.symlink names its source first: Twisted's lock file is a link
    # whose source is a pid, so the path is whichever name holds a "/".)
    names = (getattr(error, "filename2", None), getattr(error, "filename", None))
    path = next((n for n in names if isinstance(n, str) and os.sep in n), None)
    target = f" on {path}" if path else ""
    return ListenError(f"{prefix}cannot listen{target}: {_cause(error, None)}",
                       key=key)


def try_bind(endpoint: IStreamServerEndpoint, description: str = "",
             key: str = "") -> None:
    """
    Bind ``endpoint``'s TCP address and let go at once, as a check.

    Other endpoints (``unix:``, ``systemd:``) and port 0 are not tried:
    binding a UNIX socket creates its file, and an inherited socket is
    used once.

    :raises ListenError: when the address cannot be bound now.
    """
    address = endpoint_address(endpoint)
    if address is None or address[1] == 0:
        return
    interface, port, ipv6 = address
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As Twisted's listening sockets do, so that the check and the
            # server agree about a port in TIME_WAIT.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((interface, port))
    except OSError as e:
        raise listen_error(CannotListenError(interface, port, e),
                           description, key) from None


class ListeningService(Service):
    """
    Listens with ``factory`` on ``endpoint`` while running.

    :param description: the endpoint string and
    :param key: the setting it comes from, for a :class:`ListenError`.
    :ivar port: the listening port, once listening.
    """

    def __init__(self, endpoint: IStreamServerEndpoint,
                 factory: IProtocolFactory, *, description: str = "",
                 key: str = "") -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.key = key
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
        """
        :raises ListenError: when binding fails at once (it does for TCP and
            UNIX endpoints): ``twistd`` then refuses to start.
        """
        failed: list[Failure] = []
        try:
            d = self._listening = self.endpoint.listen(self.factory)
        except OSError as e:
            self._listening = None
            raise listen_error(e, self.description, self.key) from None
        d.addCallbacks(self._listened, failed.append)
        if failed:  # a bind failure is known at once: refuse to start
            self._listening = None
            error = failed[0].value
            if isinstance(error, CannotListenError | OSError):
                raise listen_error(error, self.description, self.key) from None
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
