"""
Where log events go, and what never gets there.

``[log] format = "json"`` writes one JSON object per line; ``"text"`` the
classic twistd format.

At DEBUG Autobahn logs the raw handshake, Cookie and query string
included, and it logs every received chunk.  Two guards keep that out:
:class:`WireLogger` replaces Autobahn's ``self.log`` on securews's
protocol and factory and drops debug and trace calls where they are
made (which also keeps them off the per-message path), and the observer
built here drops every event below INFO, whoever emits it.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    PredicateResult,
    jsonFileLogObserver,
    textFileLogObserver,
)
from zope.interface import provider

from securews.config import ConfigError, LogSettings

__all__ = ["WireLogger", "at_least_info", "make_observer"]


@provider(ILogFilterPredicate)
def at_least_info(event: LogEvent) -> PredicateResult:
    """Drop events below INFO."""
    level = event.get("log_level", LogLevel.info)
    verdict: PredicateResult = (
        PredicateResult.no if level < LogLevel.info else PredicateResult.maybe
    )
    return verdict


class WireLogger:
    """
    What Autobahn's code sees as ``self.log``.

    Not a descriptor (unlike :class:`twisted.logger.Logger`, whose
    ``__get__`` would hand Autobahn a logger with a live ``debug``):
    ``debug`` and ``trace`` do nothing; the other levels go to a fixed
    ``securews.wire`` namespace.
    """

    def __init__(self, namespace: str = "securews.wire") -> None:
        self._logger = Logger(namespace=namespace)

    def debug(self, *args: object, **kwargs: object) -> None:
        """Discarded."""

    trace = debug

    def info(self, format: str | None = None, **kwargs: object) -> None:
        self._logger.info(format, **kwargs)

    def warn(self, format: str | None = None, **kwargs: object) -> None:
        self._logger.warn(format, **kwargs)

    def error(self, format: str | None = None, **kwargs: object) -> None:
        self._logger.error(format, **kwargs)

    def critical(self, format: str | None = None, **kwargs: object) -> None:
        self._logger.critical(format, **kwargs)

    def failure(self, format: str | None = None, failure: Any = None,
                **kwargs: object) -> None:
        self._logger.failure(format or "", failure, LogLevel.critical, **kwargs)


def _open(settings: LogSettings) -> IO[str]:
    if settings.file == "-":
        return sys.stdout
    try:
        return open(settings.file, "a", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot open {settings.file} for appending: {e.strerror}",
                          key="log.file") from None


def make_observer(settings: LogSettings, out: IO[str] | None = None) -> ILogObserver:
    """
    Build the log observer ``[log]`` asks for.

    :param out: write here instead of ``log.file`` (tests).
    :raises ConfigError: if ``log.file`` cannot be opened.
    """
    stream = out if out is not None else _open(settings)
    if settings.format == "json":
        inner = jsonFileLogObserver(stream, recordSeparator="")
    else:
        inner = textFileLogObserver(stream)
    return FilteringLogObserver(inner, [at_least_info])
