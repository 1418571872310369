"""
Where log events go, and what never gets there.

``[log] format = "text"`` writes the classic twistd line format (with
tracebacks).  ``format = "json"`` writes one JSON object per line
(:class:`JSONLineObserver`), ASCII only, flushed per event: fit for
journald on standard output and for log shippers.  Its schema is
stable; every object has

``time``
    ISO 8601, UTC, milliseconds: ``"2025-01-31T12:00:00.123Z"``.
``level``
    ``"info"``, ``"warn"``, ``"error"`` or ``"critical"`` (lower levels
    are dropped, below).
``namespace``
    The emitting logger's namespace (``"securews.handshake"``); ``"-"``
    if none.
``event``
    securews's event name (``"handshake"``, ``"session_closed"``,
    ``"alert"``, ``"startup"``, ...), ``"log"`` for events without one.
``message``
    The text the ``text`` format shows, on one line (line breaks become
    spaces), at most :data:`MAX_TEXT` characters.  An event whose format
    fails is ``"unformattable event"``: Twisted's fallback text dumps
    every field of the event.

and, only when the event carries them, these fields (:data:`FIELDS`):
``client origin path method outcome reason status code duration
bytes_in bytes_out principal counter count threshold window offenders``,
plus ``error``.  Every other field of an event is dropped, not dumped:
internal ``log_*`` keys, ``log_source`` reprs, and whatever a caller
passed along (headers, a query string) never reach the JSON log.
Values are made JSON-safe: strings, finite numbers, booleans and
``null`` as they are; lists, tuples and string-keyed mappings item by
item (bounded); anything else, NaN and infinities as ``str(value)``.
``path`` is cut at ``?`` or ``#``, so a query string cannot get through
even if a caller logs a raw path.

``error`` is always a Python type name.  For an event with a
``log_failure`` (``Logger.failure``) it is the exception's type name and
nothing else: no message, since exception text can quote a credential,
and no traceback, which a one-line log does not need (run with
``format = "text"`` to see tracebacks).  An ``error`` field that an event
sets itself (securews sets ``error=type(e).__name__``) is kept if it
looks like a type name, else it becomes ``"unknown"``.

An event that cannot be rendered at all is written as a minimal object
(``event`` ``"log"``, ``message`` ``"unrenderable log event"``, ``error``
the type of what went wrong): the observer never raises for an event.

The fields securews itself emits hold normalised values only (the
handshake logs a known path or ``"other"``, a parsed Origin or
``"invalid"``, a client address, reason categories); the same events
feed the text format, which prints their messages.

At DEBUG Autobahn logs the raw handshake, Cookie and query string
included, and it logs every received chunk.  Two guards keep that out:
:class:`WireLogger` replaces Autobahn's ``self.log`` on securews's
protocol and factory and drops debug and trace calls where they are
made (which also keeps them off the per-message path), and the observer
built here drops every event below INFO, whoever emits it.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from securews.rules.admission import printable_origin
from securews.rules.config import ConfigError, LogSettings
from securews.rules.head import RequestHead

__all__ = [
    "FIELDS",
    "MAX_TEXT",
    "JSONLineObserver",
    "WireLogger",
    "at_least_info",
    "event_as_record",
    "log_file_problem",
    "log_handshake",
    "make_observer",
]

#: The event fields the JSON format carries, in output order (``error``
#: follows them); every other field is dropped.
FIELDS = (
    "client", "origin", "path", "method", "outcome", "reason", "status", "code",
    "duration", "bytes_in", "bytes_out", "principal", "counter", "count",
    "threshold", "window", "offenders",
)
#: Longest string value (and message) written; longer ones are cut.
MAX_TEXT = 4096
# Containers in field values: items kept per level, and levels.
_MAX_ITEMS = 100
_MAX_DEPTH = 4
_TRUNCATED = "...[truncated]"
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,199}")
# What twisted.logger.formatEvent returns when the format fails; both
# texts quote the whole event.
_UNFORMATTABLE = ("Unable to format event ", "MESSAGE LOST: unformattable object")
_LINE_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")


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

    :param per_connection: this logger is a connection's (the protocol's).
        Then ``info``, ``warn`` and ``error`` are discarded too: Autobahn
        writes them for what one client did (a protocol violation, a
        dropped connection, a TLS alert such as "certificate unknown"),
        one line per connection, so any client could flood the log with
        them; securews logs those events itself, as fixed categories and
        in aggregate before authentication (:mod:`securews.ops.failures`).
        ``critical`` and ``failure`` (a bug, not a client) are kept.
    """

    def __init__(self, namespace: str = "securews.wire", *,
                 per_connection: bool = False) -> None:
        self._logger = Logger(namespace=namespace)
        if per_connection:
            self.info = self.warn = self.error = self.debug  # type: ignore[method-assign]

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


# -- the JSON format ---------------------------------------------------------


def _iso_time(when: float) -> str:
    moment = datetime.fromtimestamp(when, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _event_time(event: LogEvent) -> str:
    when = event.get("log_time")
    if isinstance(when, int | float) and not isinstance(when, bool):
        try:
            return _iso_time(float(when))
        except (ValueError, OverflowError, OSError):
            pass
    return _iso_time(time.time())


def _text(value: str) -> str:
    if len(value) > MAX_TEXT:
        return value[:MAX_TEXT - len(_TRUNCATED)] + _TRUNCATED
    return value


def _str(value: object) -> str:
    try:
        return _text(str(value))
    except Exception:
        return "<unprintable>"


def _json_safe(value: object, depth: int = 0) -> object:
    """``value`` as something :func:`json.dumps` writes, bounded in size."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Beyond 64 bits a number is not a count: text (bounded) instead.
        return int(value) if value.bit_length() <= 64 else _str(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _text(str(value))
    if depth < _MAX_DEPTH:
        if isinstance(value, list | tuple):
            return [_json_safe(item, depth + 1) for item in value[:_MAX_ITEMS]]
        if isinstance(value, Mapping):
            safe: dict[str, object] = {}
            for key, item in value.items():
                if len(safe) == _MAX_ITEMS:
                    break
                if isinstance(key, str):
                    safe[_text(key)] = _json_safe(item, depth + 1)
            return safe
    return _str(value)


def _level(event: LogEvent) -> str:
    level = event.get("log_level")
    name = getattr(level, "name", None) if level is not None else "info"
    return name if isinstance(name, str) else "info"


def _message(event: LogEvent) -> str:
    text = formatEvent(event)
    if text.startswith(_UNFORMATTABLE):
        return "unformattable event"
    return _text(_LINE_BREAKS.sub(" ", text))


def _error(event: LogEvent) -> str | None:
    if "log_failure" in event:
        failure = event["log_failure"]
        kind = failure.type if isinstance(failure, Failure) else type(failure)
        name = getattr(kind, "__name__", None)
        return name if isinstance(name, str) else "unknown"
    if "error" in event:
        error = event["error"]
        if isinstance(error, str) and _TYPE_NAME.fullmatch(error):
            return error
        return "unknown"
    return None


def event_as_record(event: LogEvent) -> dict[str, object]:
    """
    The JSON object :class:`JSONLineObserver` writes for ``event`` (see
    the module docstring for the schema).

    :raises Exception: only for an event that cannot be read at all (a
        mapping whose lookups fail); the observer catches it.
    """
    name = event.get("event")
    record: dict[str, object] = {
        "time": _event_time(event),
        "level": _level(event),
        "namespace": _str(event.get("log_namespace", "-")),
        "event": _text(name) if isinstance(name, str) else "log",
        "message": _message(event),
    }
    for field in FIELDS:
        if field in event:
            record[field] = _json_safe(event[field])
    path = record.get("path")
    if isinstance(path, str):
        record["path"] = re.split(r"[?#]", path, maxsplit=1)[0]
    error = _error(event)
    if error is not None:
        record["error"] = error
    return record


def _unrenderable(error: BaseException) -> dict[str, object]:
    return {
        "time": _iso_time(time.time()), "level": "error",
        "namespace": "securews.logs", "event": "log",
        "message": "unrenderable log event", "error": type(error).__name__,
    }


@implementer(ILogObserver)
class JSONLineObserver:
    """
    Writes each event as one line of JSON (:func:`event_as_record`) and
    flushes.  Never raises for an event; errors writing to ``out``
    propagate, as with Twisted's own file observers.

    :param out: a text stream.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        try:
            line = json.dumps(event_as_record(event), ensure_ascii=True,
                              allow_nan=False, separators=(",", ":"))
        except Exception as e:
            line = json.dumps(_unrenderable(e), separators=(",", ":"))
        self._out.write(line + "\n")
        self._out.flush()


# -- the text format ----------------------------------------------------------


class ClassicText:
    """
    Twisted's classic text line (``textFileLogObserver``: an RFC 3339 time
    to the second, ``[namespace#level]``, the formatted event, continuation
    lines indented), written the same way for a plain event (a ``str``
    format of ``{field}`` items, no traceback, no ``log_system``), with
    ``str.format_map`` instead of Twisted's formatter, written in Python,
    and a time stamp formatted once per second: about a twelfth of a
    handshake's instructions otherwise.  Every other event, and one that
    fails to format this way, is Twisted's to write.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._stamp = ""

    def __call__(self, event: LogEvent) -> str | None:
        form = event.get("log_format")
        if (type(form) is str and "()" not in form and "log_failure" not in event
                and "log_system" not in event and "log_flattened" not in event):
            try:
                text = form.format_map(event)
            except Exception:
                text = ""
            if text:
                level = event.get("log_level")
                line = (f"{self._time(event.get('log_time'))} "
                        f"[{event.get('log_namespace', '-')}#"
                        f"{'-' if level is None else level.name}] {text}")
                return line.replace("\n", "\n\t") + "\n"
        return formatEventAsClassicLogText(event, formatTime=_classic_time)

    def _time(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = math.floor(when)
        if second != self._second:
            self._stamp = _classic_time(when)
            self._second = second
        return self._stamp


def _classic_time(when: float | None) -> str:
    return formatTime(when, timeFormatRFC3339)


# -- choosing the observer ---------------------------------------------------


def _open(settings: LogSettings) -> IO[str]:
    if settings.file == "-":
        return sys.stdout
    try:
        return open(settings.file, "a", encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot open {settings.file} for appending: {e.strerror}",
                          key="log.file") from None


def log_file_problem(settings: LogSettings) -> ConfigError | None:
    """
    Whether ``log.file`` could be opened for appending, checked without
    creating it (``securews check``): an existing file must be writable, a
    new one's directory too.
    """
    if settings.file == "-":
        return None
    path = Path(settings.file)
    if path.exists():
        if path.is_dir() or not os.access(path, os.W_OK):
            return ConfigError(f"cannot open {settings.file} for appending: "
                               "not a writable file", key="log.file")
        return None
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return ConfigError(f"cannot create {settings.file}: {folder} is not a "
                           "writable directory", key="log.file")
    return None


def make_observer(settings: LogSettings, out: IO[str] | None = None) -> ILogObserver:
    """
    Build the log observer ``[log]`` asks for: :class:`JSONLineObserver`
    or Twisted's text observer, behind the INFO filter.

    :param out: write here instead of ``log.file`` (tests).
    :raises ConfigError: if ``log.file`` cannot be opened.
    """
    stream = out if out is not None else _open(settings)
    inner: ILogObserver
    if settings.format == "json":
        inner = JSONLineObserver(stream)
    else:
        inner = FileLogObserver(stream, ClassicText())
    return FilteringLogObserver(inner, [at_least_info])


_handshakes = Logger(namespace="securews.handshake")


def log_handshake(outcome: str, status: int, reason: str | None, *, client: str,
                  head: RequestHead | None, served: tuple[str, ...],
                  method: str | None, principal: str | None = None) -> None:
    """
    The one event of a request (``event = "handshake"``).  Client text is
    logged only in normalised form: the path only when it is one securews
    serves (``served``; ``"other"`` otherwise: a path can carry a token as
    well as a query can), the Origin only when it parses (``"invalid"``
    otherwise); never a header, never the query.

    :param principal: who was admitted (or given a ticket): the id an
        authenticator vouched for, never the credential.
    """
    path = origin = None
    if head is not None:
        path = head.path if head.path in served else "other"
        origin = printable_origin(head.values("origin"))
    _handshakes.info(
        "handshake {outcome} {status} from {client} path={path} "
        "origin={origin} method={method} reason={reason}"
        + (" principal={principal}" if principal is not None else ""),
        event="handshake", outcome=outcome, status=status, client=client,
        path=path, origin=origin, reason=reason, method=method,
        **({"principal": principal} if principal is not None else {}),
    )
