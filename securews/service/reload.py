"""
Certificate renewal without a restart: SIGHUP reads the TLS files again.

``systemctl reload securews`` (``ExecReload=/bin/kill -HUP $MAINPID``),
typically from a certificate renewal hook, sends SIGHUP.
:class:`CertificateReloadService` then has the server's
:class:`~securews.wire.tls.ServerTLSContext` read the certificate, chain, key
and client CA files again, with every check of a start.  New connections
get the new certificate; open connections keep the TLS state they were
made with.  Files that fail a check (half-written by a renewal, a key
that does not match, expired) are refused with one ERROR line, and the
previous certificate keeps serving.

The signal handler only schedules the reload on the reactor
(``callFromThread``, as Twisted's own SIGTERM and twistd's SIGUSR1 log
rotation do): a handler runs between any two bytecodes of the reactor
thread.  twistd and the reactor leave SIGHUP alone, whose default action
would end the process: the handler stays installed with TLS disabled
too, so that a reload never stops the server.
"""

from __future__ import annotations

import datetime
import signal
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from securews.rules.config import ConfigError
from securews.wire.tls import ServerTLSContext

__all__ = ["CertificateReloadService", "reload_certificate"]

_log = Logger(namespace="securews.reload")


def _utc(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def reload_certificate(context: ServerTLSContext, now: datetime.datetime) -> bool:
    """
    Have ``context`` read its files again; log the outcome.

    :returns: whether new connections now get the new files.  A refusal is
        logged at ERROR with the one-line reason (file names, never key
        material), and the previous certificate stays in use.
    """
    try:
        context.reload(now)
    except ConfigError as e:
        _log.error(
            "certificate reload refused, still serving the previous certificate "
            "(valid until {not_after}): {error}", event="reload", error=str(e),
            not_after=_utc(context.credentials.leaf.not_valid_after_utc),
        )
        return False
    leaf = context.credentials.leaf
    _log.info(
        "certificate reloaded from {cert}: serial {serial:x}, valid until "
        "{not_after}", event="reload", cert=context.settings.cert,
        serial=leaf.serial_number, not_after=_utc(leaf.not_valid_after_utc),
    )
    return True


class CertificateReloadService(Service):
    """
    While running, SIGHUP reloads ``context``'s certificate.

    :param reactor: runs the reload (``callFromThread``) and tells the
        time for the expiry check (``seconds``).
    :param context: the context the listener uses; ``None`` when TLS is
        disabled, and SIGHUP is then only logged.
    :param signum: the signal to handle.
    """

    def __init__(self, reactor: Any, context: ServerTLSContext | None, *,
                 signum: int = signal.SIGHUP) -> None:
        self._reactor = reactor
        self.context = context
        self.signum = signum
        self._previous: Any = None
        self._installed = False

    def reload(self) -> bool:
        """
        Reload now (what SIGHUP schedules).

        :returns: whether new connections get the new files.
        """
        if self.context is None:
            _log.info("SIGHUP: TLS is disabled, no certificate to reload",
                      event="reload")
            return False
        now = datetime.datetime.fromtimestamp(self._reactor.seconds(),
                                              datetime.UTC)
        return reload_certificate(self.context, now)

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self.reload)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        try:
            self._previous = signal.signal(self.signum, self._received)
        except ValueError as e:  # not the main thread
            _log.warn("certificate reload on {signal} unavailable: {error}",
                      event="reload", signal=signal.Signals(self.signum).name,
                      error=str(e))
            return
        self._installed = True

    def stopService(self) -> None:
        if self._installed:
            # None: the previous handler was not set from Python.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(self.signum, previous)
            self._installed = False
        super().stopService()  # type: ignore[no-untyped-call]
