"""Message validation: UTF-8, binary, JSON depth and syntax, JSON Schema."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from jsonschema_specifications import REGISTRY
from referencing.exceptions import Unresolvable

from securews.rules.codes import Close
from securews.rules.config import ConfigError
from securews.rules.settings import MessagesSettings
from securews.rules.validation import (
    MessageValidator,
    Verdict,
    build_validator,
    exceeds_depth,
    nesting_depth,
)

REASONS = {"binary messages not accepted", "invalid message"}
JSON = build_validator(MessagesSettings(format="json", max_json_depth=3))
ANY = build_validator(MessagesSettings())


def refused(verdict: Verdict, code: int, category: str) -> bool:
    reason = {1003: "binary messages not accepted", 1007: "invalid message"}[code]
    return (verdict.refusal == Close(code, reason, category)
            and not verdict.ok and verdict.document is None)


def true_depth(document: object) -> int:
    if isinstance(document, list):
        return 1 + max(map(true_depth, document), default=0)
    if isinstance(document, dict):
        return 1 + max(map(true_depth, document.values()), default=0)
    return 0


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record, and refuse, every DNS lookup and connection attempt."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> Any:
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def schema_file(tmp_path: Path, schema: object) -> str:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    return str(path)


def with_schema(tmp_path: Path, schema: object) -> MessageValidator:
    return build_validator(MessagesSettings(
        format="json", schema=schema_file(tmp_path, schema)))


# -- binary and UTF-8 --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["any", "json"])
def test_binary_is_refused_with_1003_when_not_allowed(fmt: str) -> None:
    """allow_binary = false closes with 1003 and a fixed reason, in both formats."""
    validator = build_validator(MessagesSettings(allow_binary=False, format=fmt))
    verdict = validator.validate(b"\x00secret-bytes", True)
    assert refused(verdict, 1003, "binary")


@pytest.mark.parametrize("fmt", ["any", "json"])
def test_binary_passes_unparsed_when_allowed(fmt: str) -> None:
    """Allowed binary messages are not decoded or parsed, even with format json."""
    validator = build_validator(MessagesSettings(format=fmt))
    verdict = validator.validate(b"\xff not json", True)
    assert verdict.ok
    assert verdict.document is None


@pytest.mark.parametrize("payload", [
    b"\xff", b"abc\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
    b"a" * 65536 + b"\xff", b"a" * 70000 + b"\xe2\x82",
])
@pytest.mark.parametrize("validator", [ANY, JSON], ids=["any", "json"])
def test_invalid_utf8_text_is_refused_with_1007(
    validator: MessageValidator, payload: bytes
) -> None:
    """Bad bytes, truncation, overlongs and surrogates anywhere in the text: 1007."""
    verdict = validator.validate(payload, False)
    assert refused(verdict, 1007, "bad_utf8")


def test_utf8_split_across_the_check_chunks_is_accepted() -> None:
    """A character straddling the 64 KiB decode chunk boundary is still valid."""
    assert ANY.validate(b"a" * 65535 + "\u00e9\U0001f600".encode(), False).ok


@given(st.text())
def test_format_any_accepts_all_valid_text(text: str) -> None:
    """With format any, every UTF-8 text is accepted as it is, unparsed."""
    verdict = ANY.validate(text.encode("utf-8"), False)
    assert verdict == Verdict()


@given(st.binary())
def test_format_any_refuses_exactly_the_bytes_that_are_not_utf8(data: bytes) -> None:
    """The cheap UTF-8 check agrees with Python's strict decoder."""
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert ANY.validate(data, False).ok is valid


# -- JSON ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "category"), [
    ('{"token": "hunter2"', "bad_json"),
    ("hunter2", "bad_json"),
    ("", "bad_json"),
    ('{"a": 1} {"hunter2": 2}', "bad_json"),
    ("\ufeff[]", "bad_json"),
    ("[NaN]", "bad_json"),
    ('{"x": Infinity}', "bad_json"),
    ("-Infinity", "bad_json"),
    ("[1e999]", "bad_json"),
    ("1" * 5000, "bad_json"),
    ('{"hunter2": 1, "hunter2": 2}', "bad_json"),
    ('[{"a": {"b": {"c": 1}}}]', "too_deep"),
    ('{"hunter2": [[[[', "too_deep"),
    (r'"\ud800"', "bad_json"),
    (r'{"a": "x\uDC00"}', "bad_json"),
    (r'{"\udbff": 1}', "bad_json"),
    (r'["\ude00\ud83d"]', "bad_json"),
])
def test_bad_json_is_refused_with_1007_without_echo(text: str, category: str) -> None:
    """Non-JSON, non-finite numbers, duplicate keys, too deep: 1007, fixed reason."""
    verdict = JSON.validate(text.encode("utf-8"), False)
    assert refused(verdict, 1007, category)


_escapes = st.lists(st.one_of(
    st.integers(0xD800, 0xDFFF).map(lambda u: f"\\u{u:04x}"),
    st.integers(0, 0xFFFF).map(lambda u: f"\\u{u:04X}"),
    st.sampled_from(["a", "\\\\", "\\n", "\u00e9"]),
), max_size=6).map("".join)


@given(st.lists(_escapes, min_size=1, max_size=3))
def test_json_strings_pass_exactly_when_they_are_unicode_text(
        strings: list[str]) -> None:
    """Escaped surrogates pass in pairs only: a lone one is not text."""
    text = "[" + ", ".join(f'"{s}"' for s in strings) + "]"
    decoded = json.loads(text)
    try:
        "".join(decoded).encode("utf-8")
    except UnicodeEncodeError:
        assert refused(JSON.validate(text.encode("utf-8"), False), 1007, "bad_json")
    else:
        assert JSON.validate(text.encode("utf-8"), False).document == decoded


@pytest.mark.parametrize(("text", "document"), [
    ('[[["]]]]]]"]]]', [[["]]]]]]"]]]),
    (r'["\"[[[[", "\\", "\\\"{{{{"]', ['"[[[[', "\\", '\\"{{{{']),
    ('{"a": {"b": [1.5, -0.0, null, true, "\u00e9"]}}',
     {"a": {"b": [1.5, -0.0, None, True, "\u00e9"]}}),
    ("null", None),
    (r'["\ud83d\ude00", "\\ud800"]', ["\U0001f600", "\\ud800"]),
])
def test_valid_json_within_the_limit_is_parsed(text: str, document: object) -> None:
    """Brackets inside strings (with escaped quotes) do not count as nesting."""
    verdict = JSON.validate(text.encode("utf-8"), False)
    assert verdict.ok
    assert verdict.document == document


json_documents = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@given(document=json_documents, ascii_only=st.booleans(),
       limit=st.integers(1, 6))
def test_depth_guard_measures_generated_documents_exactly(
    document: object, ascii_only: bool, limit: int
) -> None:
    """Scanned depth is the true depth; within the limit the parse round-trips."""
    text = json.dumps(document, ensure_ascii=ascii_only)
    depth = true_depth(document)
    assert nesting_depth(text) == depth
    validator = build_validator(MessagesSettings(format="json", max_json_depth=limit))
    verdict = validator.validate(text.encode("utf-8"), False)
    if depth <= limit:
        assert verdict.ok
        assert verdict.document == document
    else:
        assert refused(verdict, 1007, "too_deep")


json_ish = st.text(alphabet=st.sampled_from('[]{}"\\:, 01aen\u00e9\n'), max_size=40)


@given(text=st.one_of(json_ish, st.text(max_size=40),
                      json_documents.map(json.dumps)),
       limit=st.integers(0, 5))
@example(text='"\\\\"[[[[', limit=1)
@example(text='["\\"]"]', limit=1)
@example(text='["\\\\\\"]", "\\\\", "[["]', limit=1)
@example(text='["\\\\"]]', limit=1)
def test_any_text_gets_a_verdict_and_parsable_json_is_never_too_deep(
    text: str, limit: int
) -> None:
    """No exception escapes; whatever json.loads parses is measured exactly."""
    assert exceeds_depth(text, limit) == (nesting_depth(text) > limit)
    validator = MessageValidator(parse_json=True, max_depth=max(limit, 1))
    verdict = validator.validate(text.encode("utf-8"), False)
    assert verdict.refusal is None or verdict.refusal.reason in REASONS
    try:
        document = json.loads(text)
    except ValueError:
        assert not verdict.ok
        return
    assert nesting_depth(text) == true_depth(document)
    if true_depth(document) <= max(limit, 1):
        assert not refused(verdict, 1007, "too_deep")


def test_megabyte_of_open_brackets_is_refused_quickly() -> None:
    """1 MiB of '[' is refused as too_deep at once, before json recurses."""
    start = time.perf_counter()
    verdict = JSON.validate(b"[" * 2**20, False)
    assert refused(verdict, 1007, "too_deep")
    assert time.perf_counter() - start < 1.0


def test_megabyte_of_brackets_inside_a_string_is_not_nesting() -> None:
    """The same brackets inside one string are plain text."""
    verdict = JSON.validate(b'["' + b"[" * 2**20 + b'"]', False)
    assert verdict.ok
    assert verdict.document == ["[" * 2**20]


def test_depth_at_the_highest_setting_never_raises() -> None:
    """At max_json_depth = 1000, Python's recursion limit ends in a refusal."""
    validator = MessageValidator(parse_json=True, max_depth=1000)
    verdict = validator.validate(b"[" * 1000 + b"]" * 1000, False)
    assert verdict.ok or refused(verdict, 1007, "too_deep")


def test_recursive_schema_on_a_deep_document_is_a_refusal() -> None:
    """jsonschema recursing past Python's stack refuses the message as too_deep."""
    schema = Draft202012Validator({"items": {"$ref": "#"}}, registry=REGISTRY)
    validator = MessageValidator(parse_json=True, max_depth=1000, schema=schema)
    assert validator.validate(b"[" * 10 + b"]" * 10, False).ok
    verdict = validator.validate(b"[" * 700 + b"]" * 700, False)
    assert refused(verdict, 1007, "too_deep")


# -- JSON Schema ---------------------------------------------------------------

COMMAND = {
    "type": "object",
    "required": ["op"],
    "properties": {"op": {"enum": ["ping", "say"]}, "text": {"$ref": "#/$defs/t"}},
    "additionalProperties": False,
    "$defs": {"t": {"type": "string", "maxLength": 5}},
}


@pytest.mark.parametrize(("text", "ok"), [
    ('{"op": "ping"}', True),
    ('{"op": "say", "text": "hi"}', True),
    ('{"op": "hunter2"}', False),
    ('{"op": "say", "text": "too long"}', False),
    ('{"op": "ping", "extra": 1}', False),
    ("[]", False),
])
def test_schema_decides_which_json_passes(tmp_path: Path, text: str, ok: bool) -> None:
    """Schema failures close with 1007 and the generic reason."""
    verdict = with_schema(tmp_path, COMMAND).validate(text.encode(), False)
    if ok:
        assert verdict.ok
        assert verdict.document == json.loads(text)
    else:
        assert refused(verdict, 1007, "schema")


def test_schema_dialect_follows_dollar_schema(tmp_path: Path) -> None:
    """A draft-07 schema is read as draft 07 (array-form items)."""
    validator = with_schema(tmp_path, {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "items": [{"type": "integer"}],
    })
    assert validator.validate(b"[1]", False).ok
    assert refused(validator.validate(b'["x"]', False), 1007, "schema")


def test_references_to_published_metaschemas_resolve_offline(
    tmp_path: Path, no_network: list[object]
) -> None:
    """A $ref to the 2020-12 meta-schema resolves from the bundled copy."""
    validator = with_schema(
        tmp_path, {"$ref": "https://json-schema.org/draft/2020-12/schema"})
    assert validator.validate(b'{"type": "string"}', False).ok
    assert refused(validator.validate(b'{"type": 5}', False), 1007, "schema")
    assert no_network == []


@pytest.mark.parametrize("ref", [
    "http://127.0.0.1:9/x", "https://schemas.example.invalid/s.json",
    "other.json", "#/$defs/missing",
])
def test_unresolvable_refs_fail_at_startup_without_network(
    tmp_path: Path, no_network: list[object], ref: str
) -> None:
    """A $ref that is not in the file is a ConfigError, never a fetch."""
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="outside the file") as info:
        with_schema(tmp_path, {"properties": {"a": {"$ref": ref}}})
    assert info.value.key == "messages.schema"
    assert no_network == []
    assert time.perf_counter() - start < 5


def test_built_validator_never_retrieves_references(
    tmp_path: Path, no_network: list[object]
) -> None:
    """The schema validator's registry has no retrieval: a stray remote $ref fails."""
    built = with_schema(tmp_path, COMMAND).schema
    assert built is not None
    stray = built.evolve(schema={"$ref": "http://127.0.0.1:9/x"})
    with pytest.raises(Unresolvable):
        stray.is_valid({})
    assert no_network == []


def test_unresolvable_ref_at_validation_refuses_without_network(
    no_network: list[object]
) -> None:
    """Were a remote $ref to reach validation, the message fails closed."""
    schema = Draft202012Validator({"$ref": "http://127.0.0.1:9/x"},
                                  registry=REGISTRY)
    validator = MessageValidator(parse_json=True, schema=schema)
    assert refused(validator.validate(b"{}", False), 1007, "schema")
    assert no_network == []


@pytest.mark.parametrize(("content", "problem"), [
    (b'{"type": "SECRET-MARKER"', "is not JSON"),
    (b"SECRET-MARKER", "is not JSON"),
    (b'{"a": "\xff SECRET-MARKER"}', "is not UTF-8"),
    (b'{"minimum": NaN, "x": "SECRET-MARKER"}', "is not strict JSON"),
    (b'{"type": "SECRET-MARKER"}', "is not a valid JSON Schema"),
    (b'{"properties": ["SECRET-MARKER"]}', "is not a valid JSON Schema"),
    (b'"SECRET-MARKER"', "is not a valid JSON Schema"),
    (b'{"pattern": "(SECRET-MARKER"}', "is not a valid JSON Schema"),
    (b'{"$schema": "https://example.com/SECRET-MARKER"}', "no known"),
    (b'{"$schema": ["SECRET-MARKER"]}', "no known"),
])
def test_bad_schema_files_are_one_line_config_errors(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """Unparsable or invalid schemas stop startup without echoing the file."""
    path = tmp_path / "schema.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=problem) as info:
        build_validator(MessagesSettings(format="json", schema=str(path)))
    assert info.value.key == "messages.schema"
    assert "SECRET-MARKER" not in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_schema_file_is_a_config_error(tmp_path: Path) -> None:
    """An unreadable schema path is named with the OS reason."""
    with pytest.raises(ConfigError, match=r"cannot read .*No such file") as info:
        build_validator(MessagesSettings(format="json",
                                         schema=str(tmp_path / "nope.json")))
    assert info.value.key == "messages.schema"


def test_schema_without_json_format_is_a_config_error(tmp_path: Path) -> None:
    """A schema would never be applied to format any, so it is refused."""
    with pytest.raises(ConfigError, match='needs format = "json"') as info:
        build_validator(MessagesSettings(schema=schema_file(tmp_path, COMMAND)))
    assert info.value.key == "messages.schema"


@given(st.binary(max_size=64), st.booleans())
def test_reasons_are_fixed_whatever_the_payload(payload: bytes, binary: bool) -> None:
    """A close reason is one of the fixed strings, never derived from input."""
    validator = build_validator(MessagesSettings(allow_binary=False, format="json"))
    verdict = validator.validate(payload, binary)
    if verdict.refusal is not None:
        assert verdict.refusal.reason in REASONS
        assert verdict.refusal.code == (1003 if binary else 1007)
    assert verdict.ok == (verdict.refusal is None)


def test_escaped_pairs_near_the_stack_limit_are_too_deep_not_bad_json() -> None:
    """Re-encoding for the surrogate check recurses deeper than the decode;
    where that hits Python's stack, the refusal says so."""
    validator = build_validator(MessagesSettings(format="json", max_json_depth=1000))
    for depth in range(1, 1001):
        text = "[" * depth + '"\\ud83d\\ude00"' + "]" * depth
        verdict = validator.validate(text.encode("utf-8"), False)
        assert verdict.ok or refused(verdict, 1007, "too_deep"), depth
