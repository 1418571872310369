"""The log observers: the JSON schema, what never reaches it, the text format."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from securews.ops.logs import (
    FIELDS,
    MAX_TEXT,
    JSONLineObserver,
    WireLogger,
    event_as_record,
    make_observer,
)
from securews.rules.config import LogSettings
from tests.support.memory import SECRET

ALWAYS = {"time", "level", "namespace", "event", "message"}
ALLOWED = ALWAYS | set(FIELDS) | {"error"}


def json_logger(namespace: str = "securews.handshake") -> tuple[Logger, io.StringIO]:
    """A Logger whose events go through ``make_observer`` in JSON format."""
    out = io.StringIO()
    observer = make_observer(LogSettings(format="json"), out=out)
    return Logger(namespace=namespace, observer=observer), out


def records(out: io.StringIO) -> list[dict[str, Any]]:
    text = out.getvalue()
    assert text.endswith("\n") or text == ""
    return [json.loads(line) for line in text.splitlines()]


def log_handshake(log: Logger, **extra: object) -> None:
    """An event shaped like protocol_handshake's ``_log_handshake``."""
    log.info(
        "handshake {outcome} {status} from {client} path={path} "
        "origin={origin} method={method} reason={reason}",
        event="handshake", outcome="refused", status=401, client="203.0.113.7",
        path="/ws", origin="https://app.example.com", method="jwt",
        reason="expired", **extra,
    )


def test_json_observer_provides_the_interface() -> None:
    """The JSON observer is a real ILogObserver."""
    assert verifyObject(ILogObserver, JSONLineObserver(io.StringIO()))


def test_each_event_is_one_line_of_json_with_the_stable_keys() -> None:
    """Three events give three lines, each a JSON object with the schema's keys."""
    log, out = json_logger()
    log_handshake(log)
    log.info("session closed by server ({reason}, code {code}) for {client}",
             event="session_closed", reason="idle", code=1000,
             client="2001:db8::1", principal="alice")
    log.warn("plain {thing}", thing="text")
    assert out.getvalue().count("\n") == 3
    handshake, closed, plain = records(out)
    assert list(handshake) == [
        "time", "level", "namespace", "event", "message",
        "client", "origin", "path", "method", "outcome", "reason", "status",
    ]
    assert handshake["event"] == "handshake"
    assert handshake["level"] == "info"
    assert handshake["namespace"] == "securews.handshake"
    assert handshake["message"] == (
        "handshake refused 401 from 203.0.113.7 path=/ws "
        "origin=https://app.example.com method=jwt reason=expired")
    assert (handshake["status"], handshake["reason"]) == (401, "expired")
    assert closed["event"] == "session_closed"
    assert (closed["code"], closed["principal"]) == (1000, "alice")
    assert plain == {**plain, "event": "log", "level": "warn",
                     "message": "plain text"}
    assert set(plain) == ALWAYS


def test_time_is_iso_8601_utc_with_milliseconds() -> None:
    """``time`` parses as ISO 8601 and is the event's time, in UTC."""
    out = io.StringIO()
    JSONLineObserver(out)({"log_time": 1700000000.25, "log_format": "x",
                           "log_level": LogLevel.info})
    [record] = records(out)
    assert record["time"] == "2023-11-14T22:13:20.250Z"
    parsed = datetime.fromisoformat(record["time"])
    assert parsed.tzinfo == UTC
    assert parsed.timestamp() == 1700000000.25


def test_no_twisted_internals_reach_the_json_log() -> None:
    """``log_*`` keys, the logger's source and its repr stay out."""

    out = io.StringIO()
    observer = make_observer(LogSettings(format="json"), out=out)

    class Source:
        log = Logger(observer=observer)

        def __repr__(self) -> str:
            return "<Source at 0xdeadbeef>"

    Source().log.info("hello {client}", client="203.0.113.7")
    [record] = records(out)
    assert not any(key.startswith("log_") for key in record)
    assert "deadbeef" not in out.getvalue()
    assert record["client"] == "203.0.113.7"
    assert record["namespace"] == "tests.ops.test_logs.Source"


def test_unknown_fields_are_dropped_not_dumped() -> None:
    """
    A handshake-like event carrying a query string, headers and a
    cookie in fields outside the schema writes none of them.
    """
    log, out = json_logger()
    log_handshake(log, query=f"token={SECRET}",
                  headers={"Cookie": f"session={SECRET}"},
                  request=f"GET /ws?ticket={SECRET} HTTP/1.1")
    [record] = records(out)
    assert SECRET not in out.getvalue()
    assert set(record) <= ALLOWED
    assert "query" not in record
    assert "headers" not in record


def test_a_raw_path_loses_its_query_and_fragment() -> None:
    """Even a caller that logs a raw path cannot put a query string in JSON."""
    log, out = json_logger()
    log.info("raw", event="handshake", path=f"/ws?token={SECRET}")
    log.info("raw", event="handshake", path=f"/ws#{SECRET}")
    assert [r["path"] for r in records(out)] == ["/ws", "/ws"]
    assert SECRET not in out.getvalue()


def test_failures_carry_the_exception_type_only() -> None:
    """A logged failure is its type name: no message text, no traceback."""
    log, out = json_logger()
    try:
        raise ValueError(f"bad token {SECRET}")
    except ValueError:
        log.failure("authenticator crashed")
    [record] = records(out)
    assert record["error"] == "ValueError"
    assert record["level"] == "critical"
    assert record["message"] == "authenticator crashed"
    assert SECRET not in out.getvalue()
    assert "Traceback" not in out.getvalue()


def test_wire_logger_failures_are_rendered_the_same_way() -> None:
    """Autobahn's ``self.log.failure`` through WireLogger: type name only."""
    out = io.StringIO()
    wire = WireLogger("securews.wire")
    wire._logger.observer = make_observer(LogSettings(format="json"), out=out)
    try:
        raise KeyError(SECRET)
    except KeyError:
        wire.failure()
    [record] = records(out)
    assert record["error"] == "KeyError"
    assert record["namespace"] == "securews.wire"
    assert SECRET not in out.getvalue()


@pytest.mark.parametrize(("value", "expected"), [
    ("RuntimeError", "RuntimeError"),
    ("twisted.internet.error.ConnectionLost", "twisted.internet.error.ConnectionLost"),
    (f"token {SECRET} rejected", "unknown"),
    (42, "unknown"),
])
def test_an_error_field_is_kept_only_as_a_type_name(value: object,
                                                    expected: str) -> None:
    """securews logs ``error=type(e).__name__``; anything else is "unknown"."""
    record = event_as_record({"log_format": "x", "error": value})
    assert record["error"] == expected


def test_unformattable_event_does_not_dump_its_fields() -> None:
    """
    Twisted's fallback for a bad format quotes the whole event; the JSON
    message says only that it was unformattable.
    """
    log, out = json_logger()
    log.info("{secret:d} for {client}", secret=SECRET, client="203.0.113.7")
    [record] = records(out)
    assert record["message"] == "unformattable event"
    assert record["client"] == "203.0.113.7"
    assert SECRET not in out.getvalue()


def test_messages_are_single_line_and_bounded() -> None:
    """Line breaks in a message become spaces; huge text is cut."""
    log, out = json_logger()
    log.info("first\nsecond\r\nthird")
    log.info("{big}", big="x" * (MAX_TEXT * 3))
    assert out.getvalue().count("\n") == 2
    first, big = records(out)
    assert first["message"] == "first second third"
    assert len(big["message"]) == MAX_TEXT
    assert big["message"].endswith("[truncated]")


def test_values_are_made_json_safe() -> None:
    """Objects become text, NaN and infinity too; lists and mappings stay."""

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    record = event_as_record({
        "log_format": "x", "client": object(), "count": float("nan"),
        "duration": float("inf"), "bytes_in": 12, "window": 10.0,
        "offenders": [{"network": "203.0.113.0/24", "count": 3}, ("a", 1)],
        "origin": Unprintable(), "principal": b"bytes", "code": True,
        "status": 10**40,
    })
    json.dumps(record, allow_nan=False)
    assert str(record["client"]).startswith("<object object at")
    assert (record["count"], record["duration"]) == ("nan", "inf")
    assert (record["bytes_in"], record["window"], record["code"]) == (12, 10.0, True)
    assert record["offenders"] == [{"network": "203.0.113.0/24", "count": 3},
                                   ["a", 1]]
    assert record["origin"] == "<unprintable>"
    assert record["principal"] == "b'bytes'"
    assert record["status"] == str(10**40)


def test_deeply_nested_and_long_values_are_bounded() -> None:
    """A self-referencing list or a huge one cannot blow up the line."""
    loop: list[object] = []
    loop.append(loop)
    record = event_as_record({"log_format": "x", "offenders": loop,
                              "count": list(range(10_000))})
    line = json.dumps(record)
    assert len(line) < 10_000


def test_an_unreadable_event_is_written_as_a_minimal_object() -> None:
    """The observer never raises: a broken event still gives one line."""

    class Broken(dict[str, Any]):
        def get(self, key: str, default: object = None) -> object:
            raise RuntimeError(SECRET)

    out = io.StringIO()
    JSONLineObserver(out)(Broken(log_format="x"))
    [record] = records(out)
    assert record["event"] == "log"
    assert record["message"] == "unrenderable log event"
    assert record["error"] == "RuntimeError"
    assert set(record) == ALWAYS | {"error"}
    assert SECRET not in out.getvalue()


def test_odd_twisted_fields_do_not_break_the_record() -> None:
    """A missing or strange time, level or namespace still renders."""
    record = event_as_record({"log_time": "yesterday", "log_level": "loud",
                              "log_namespace": 42, "event": 7})
    assert set(record) == ALWAYS
    assert (record["level"], record["namespace"], record["event"]) == (
        "info", "42", "log")
    datetime.fromisoformat(str(record["time"]))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_events_below_info_are_dropped(fmt: str) -> None:
    """DEBUG (Autobahn's raw handshake) is dropped in both formats."""
    out = io.StringIO()
    log = Logger(namespace="autobahn",
                 observer=make_observer(LogSettings(format=fmt), out=out))
    log.debug("raw handshake {data}", data=f"Cookie: session={SECRET}")
    assert out.getvalue() == ""


def test_text_format_is_twisted_classic_text() -> None:
    """``format = "text"`` is Twisted's own text observer, unchanged."""
    event: LogEvent = {
        "log_format": "handshake {outcome} from {client}", "outcome": "accepted",
        "client": "203.0.113.7", "log_level": LogLevel.info,
        "log_namespace": "securews.handshake", "log_time": 1700000000.0,
    }
    ours, theirs = io.StringIO(), io.StringIO()
    make_observer(LogSettings(format="text"), out=ours)(dict(event))
    textFileLogObserver(theirs)(dict(event))
    assert ours.getvalue() == theirs.getvalue()
    assert "[securews.handshake#info] handshake accepted from 203.0.113.7\n" in (
        ours.getvalue())


text_events = st.fixed_dictionaries({
    "log_format": st.sampled_from([
        "handshake {outcome} from {client}", "line one\nline {two}", "{missing}",
        "{outcome!r:>12}", "{call()}", "{{braces}} {outcome}", "", "{0}", "{client.x}",
    ]) | st.text(max_size=20),
    "outcome": st.text(max_size=8) | st.integers() | st.none(),
    "client": st.text(max_size=8),
    "two": st.text(max_size=4),
    "call": st.just(lambda: "called"),
}, optional={
    # What make_observer lets through (below INFO is dropped).
    "log_level": st.sampled_from([LogLevel.info, LogLevel.warn, LogLevel.error,
                                  LogLevel.critical]),
    "log_namespace": st.text(max_size=10),
    "log_time": st.floats(min_value=0, max_value=4e9),
    "log_system": st.text(max_size=6),
    "log_failure": st.builds(lambda: Failure(ValueError("x"))),
})


@given(text_events, st.floats(min_value=0, max_value=4e9))
def test_text_lines_are_twisted_classic_text_for_any_event(
    event: LogEvent, other_time: float
) -> None:
    """securews's text formatting (one time stamp per second, str.format_map
    for plain events) writes exactly what Twisted's text observer writes,
    for any event, the same second twice and after another one."""
    observer = make_observer(LogSettings(format="text"), out=io.StringIO())
    for when in (event.get("log_time"), other_time, event.get("log_time")):
        moved = dict(event) if when is None else {**event, "log_time": when}
        moved["log_level"] = moved.get("log_level", LogLevel.info)
        ours, theirs = io.StringIO(), io.StringIO()
        make_observer(LogSettings(format="text"), out=ours)(dict(moved))
        observer(dict(moved))
        textFileLogObserver(theirs)(dict(moved))
        assert ours.getvalue() == theirs.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@given(fields=st.dictionaries(st.sampled_from([*FIELDS, "error", "event",
                                               "query", "log_format", "x"]),
                              json_values),
       level=st.sampled_from(list(LogLevel.iterconstants())))
def test_any_event_is_one_line_of_json_with_schema_keys(
    fields: dict[str, Any], level: LogLevel
) -> None:
    """Whatever the field values, an event is one ASCII line of JSON."""
    out = io.StringIO()
    JSONLineObserver(out)({**fields, "log_level": level, "log_time": 0.0})
    text = out.getvalue()
    assert text.count("\n") == 1
    assert text.endswith("\n")
    assert text.isascii()
    record = json.loads(text)
    assert ALWAYS <= set(record) <= ALLOWED
    assert record["level"] == level.name
