"""
systemd's readiness and watchdog notifications, without libsystemd.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, the address of
an ``AF_UNIX`` datagram socket, and reads one ``KEY=value`` line per
assignment from each datagram it receives there (``sd_notify(3)``):

``READY=1``
    the server accepts connections: ``systemctl start`` returns, and
    units ordered after securews may start.
``STOPPING=1``
    the server is draining its sessions.
``WATCHDOG=1``
    the event loop is alive.  With ``WatchdogSec=`` systemd also passes
    ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``); a service silent for that
    long is killed with SIGABRT and, with ``Restart=on-failure``,
    restarted.  :class:`WatchdogService` pings at half that period from a
    timer on the reactor, so a blocked reactor stops the pings.

Without ``NOTIFY_SOCKET`` every notification is a no-op.  Only the
``AF_UNIX`` forms of the address are supported: an absolute path or an
``@name`` in the abstract namespace.  A notification that cannot be sent
is a logged warning, never an exception in the reactor, and never blocks
it (the socket is non-blocking: a full queue is a failed send).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = [
    "Notifier",
    "WatchdogService",
    "notify_address",
    "watchdog_interval",
    "watchdog_service",
]

#: ``socket.socket`` or a stand-in: ``(family, type) -> socket``.
SocketFactory = Callable[[int, int], socket.socket]

_log = Logger(namespace="securews.systemd")


def notify_address(value: str) -> str:
    """
    The ``AF_UNIX`` address to send to, from ``NOTIFY_SOCKET``.

    :returns: the path, or ``"\\0name"`` for the abstract name ``@name``.
    :raises ValueError: for anything else (a relative path, ``vsock:``).
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    raise ValueError(
        f"NOTIFY_SOCKET={value!r} is not supported (only an absolute AF_UNIX "
        "path or an @abstract name)"
    )


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """
    How often to send ``WATCHDOG=1``: half of ``WATCHDOG_USEC``, in seconds.

    :param pid: this process's id; ``WATCHDOG_PID``, when set, must name it
        (the variables may have been inherited from a parent).
    :returns: ``None`` when no watchdog is asked of this process.
    :raises ValueError: when ``WATCHDOG_USEC`` or ``WATCHDOG_PID`` is not a
        positive integer.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and _positive(owner, "WATCHDOG_PID") != pid:
        return None
    return _positive(usec, "WATCHDOG_USEC") / 2 / 1_000_000


def _positive(value: str, name: str) -> int:
    number = int(value) if value.isascii() and value.isdigit() else 0
    if number <= 0:
        raise ValueError(f"{name}={value!r} is not a positive integer")
    return number


class Notifier:
    """
    Sends notifications to ``NOTIFY_SOCKET``.

    :param environ: where to read ``NOTIFY_SOCKET``; by default the
        process environment.
    :param socket_factory: makes the datagram socket, one per notification.
    :ivar address: where notifications go; ``None`` when they go nowhere.
    """

    def __init__(self, environ: Mapping[str, str] | None = None,
                 socket_factory: SocketFactory = socket.socket) -> None:
        raw = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        self._socket_factory = socket_factory
        self._failure: str | None = None
        if raw:
            try:
                self.address = notify_address(raw)
            except ValueError as e:
                _log.warn("systemd notifications disabled: {error}",
                          event="systemd", error=str(e))

    @property
    def enabled(self) -> bool:
        """Whether notifications are sent anywhere."""
        return self.address is not None

    def notify(self, state: str) -> bool:
        """
        Send ``state`` (``KEY=value`` lines) in one datagram.

        :returns: whether it was sent; a failure is logged (once, until a
            notification gets through again), never raised.
        """
        if self.address is None:
            return False
        try:
            with self._socket_factory(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(state.encode("utf-8"), self.address)
        except (OSError, ValueError) as e:
            failure = f"{type(e).__name__}: {e}"
            if failure != self._failure:
                _log.warn("systemd notification {state} not sent: {error}",
                          event="systemd", state=state.replace("\n", " "),
                          error=failure)
            self._failure = failure
            return False
        self._failure = None
        return True

    def ready(self) -> bool:
        """``READY=1``: the server accepts connections."""
        return self.notify("READY=1")

    def stopping(self) -> bool:
        """``STOPPING=1``: the server is shutting down."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the reactor is alive."""
        return self.notify("WATCHDOG=1")


class WatchdogService(Service):
    """
    Sends ``WATCHDOG=1`` every ``interval`` seconds while running, the
    first at start.

    :param clock: the reactor (or a ``Clock`` in tests).
    """

    def __init__(self, notifier: Notifier, interval: float,
                 clock: IReactorTime) -> None:
        if interval <= 0:
            raise ValueError(f"watchdog interval must be positive, not {interval}")
        self.notifier = notifier
        self.interval = interval
        self._pinger = LoopingCall(notifier.watchdog)
        self._pinger.clock = clock

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._pinger.start(self.interval, now=True)

    def stopService(self) -> None:
        if self._pinger.running:
            self._pinger.stop()
        super().stopService()  # type: ignore[no-untyped-call]


def watchdog_service(notifier: Notifier, clock: IReactorTime, *,
                     environ: Mapping[str, str] | None = None,
                     pid: int | None = None) -> WatchdogService | None:
    """
    The watchdog systemd asks of this process, if any.

    :param environ: where to read ``WATCHDOG_USEC`` and ``WATCHDOG_PID``;
        by default the process environment.
    :param pid: this process's id; by default ``os.getpid()``.
    :returns: ``None`` without ``WATCHDOG_USEC``, when it is meant for
        another process, when it is malformed (logged as a warning), or
        when ``notifier`` sends nowhere.
    """
    environ = os.environ if environ is None else environ
    try:
        interval = watchdog_interval(environ, os.getpid() if pid is None else pid)
    except ValueError as e:
        _log.warn("systemd watchdog disabled: {error}", event="systemd",
                  error=str(e))
        return None
    if interval is None or not notifier.enabled:
        return None
    _log.info("systemd watchdog: WATCHDOG=1 every {interval} s",
              event="systemd", interval=interval)
    return WatchdogService(notifier, interval, clock)
