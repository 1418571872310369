"""
What a client message must be before the application sees it.

:func:`build_validator` turns ``[messages]`` into a :class:`MessageValidator`
once, at startup; :meth:`~MessageValidator.validate` judges each message.
Refusals carry a close code, a fixed reason and a fixed log category, never
the input.  Decisions:

- UTF-8 is checked again although Autobahn does (``utf8validateIncoming``):
  ``isascii()``, else a decode in 64 KiB chunks, or for JSON the decode
  that parsing needs anyway.  Allowed binary messages pass unparsed.
- Depth is measured before parsing, since ``json`` recurses: C-speed passes
  (transient copies no bigger than the text) drop escapes, strings and all
  but brackets; a running count stops at the first excess.
- Strict RFC 8259: ``NaN``/``Infinity``, overflowing floats, integers over
  Python's 4300 digits, duplicate keys and escaped lone surrogates
  (``"\\ud800"``, a string no UTF-8 encoder can write back) are refused,
  so an accepted document is standard JSON that no other parser reads
  differently.
- Schemas: Draft 2020-12 unless ``$schema`` says otherwise; ``format`` only
  annotates; every ``$ref`` must resolve, at startup, inside the file or the
  bundled meta-schemas.  Nothing is ever fetched.

Pure code: no I/O per message, no reactor.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from itertools import accumulate, repeat
from typing import Any, cast

import attrs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from jsonschema_specifications import REGISTRY  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from securews.rules.codes import Close, CloseCode
from securews.rules.config import ConfigError
from securews.rules.settings import MessagesSettings

__all__ = ["MessageValidator", "Verdict", "build_validator",
           "exceeds_depth", "nesting_depth"]


#: The published meta-schemas and nothing else; its ``retrieve`` fails, so
#: an unknown URI is an error, never a fetch.
_METASCHEMAS: Registry[Any] = REGISTRY


@attrs.frozen
class Verdict:
    """
    The decision on one message: no ``refusal`` means it may reach the
    application.  ``document`` is the parsed JSON of an accepted text
    message when ``format = "json"`` (else ``None``, as for ``null``).
    """

    refusal: Close | None = None
    document: object = None

    @property
    def ok(self) -> bool:
        return self.refusal is None


_ACCEPTED = Verdict()
_BINARY = Verdict(Close(CloseCode.UNSUPPORTED_DATA, "binary messages not accepted",
                                 "binary"))
_REFUSED = {category: Verdict(Close(CloseCode.INVALID_PAYLOAD, "invalid message",
                                             category))
            for category in ("bad_utf8", "bad_json", "too_deep", "schema")}

_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}
# Any escaped surrogate; a pair decodes to one character, a lone one stays.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_ONLY_BRACKETS = dict.fromkeys((c for c in range(128) if chr(c) not in _DELTA), None)
_CHUNK = 65536


def _depths(text: str) -> accumulate[int]:
    """
    The running depth after each bracket outside strings, lazily.  Dropping
    ``\\\\`` then ``\\"`` pairs backslashes left to right as JSON does, so
    each ``"`` left delimits a string and text outside strings sits at even
    indices of the split (an unterminated string runs to the end).
    """
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    outside = "".join(unescaped.split('"')[::2]).translate(_ONLY_BRACKETS)
    return accumulate(map(_DELTA.get, outside, repeat(0)), initial=0)


def nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting outside strings (exact for JSON)."""
    return max(_depths(text))


def exceeds_depth(text: str, limit: int) -> bool:
    """Whether :func:`nesting_depth` exceeds ``limit``; stops at the first excess."""
    return next(filter(limit.__lt__, _depths(text)), None) is not None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("number out of range")
    return number


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_float=_finite,
                            parse_constant=_no_constants)


def _is_utf8(payload: bytes) -> bool:
    if payload.isascii():
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(payload)
    try:
        for start in range(0, len(view), _CHUNK):
            decoder.decode(view[start:start + _CHUNK])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _has_lone_surrogate(document: Any) -> bool:
    """Whether a decoded document holds a string that is not Unicode text."""
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@attrs.frozen
class MessageValidator:
    """``[messages]``, ready to judge messages; see :func:`build_validator`."""

    allow_binary: bool = True
    parse_json: bool = False
    max_depth: int = 32
    schema: Validator | None = attrs.field(default=None, eq=False)

    def validate(self, payload: bytes, is_binary: bool) -> Verdict:
        """Judge one whole message.  Never raises for any payload."""
        if is_binary:
            return _ACCEPTED if self.allow_binary else _BINARY
        if not self.parse_json:
            return _ACCEPTED if _is_utf8(payload) else _REFUSED["bad_utf8"]
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return _REFUSED["bad_utf8"]
        if exceeds_depth(text, self.max_depth):
            return _REFUSED["too_deep"]
        try:
            document = _DECODER.decode(text)
        except ValueError:
            return _REFUSED["bad_json"]
        except RecursionError:  # within the limit, yet near Python's stack
            return _REFUSED["too_deep"]
        if _SURROGATE_ESCAPE.search(text):
            try:
                if _has_lone_surrogate(document):
                    return _REFUSED["bad_json"]
            except RecursionError:  # as for the decode above
                return _REFUSED["too_deep"]
        try:
            if self.schema is not None and not self.schema.is_valid(document):
                return _REFUSED["schema"]
        except RecursionError:  # a recursive schema on a deep document
            return _REFUSED["too_deep"]
        except Unresolvable:  # build_validator rules this out; fail closed
            return _REFUSED["schema"]
        return Verdict(document=document)


def _bad(problem: str) -> ConfigError:
    return ConfigError(problem, key="messages.schema")


def _load_schema(path: str) -> Validator:
    try:
        with open(path, "rb") as f:
            schema = _DECODER.decode(f.read().decode("utf-8"))
    except OSError as e:
        raise _bad(f"cannot read {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise _bad(f"{path!r} is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise _bad(f"{path!r} is not JSON ({e.msg}, line {e.lineno} "
                   f"column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise _bad(f"{path!r} is not strict JSON ({e})") from None
    cls: type[Validator] = Draft202012Validator
    if isinstance(schema, dict) and "$schema" in schema:
        unknown = cast("type[Validator]", _UnknownDraft)
        if not isinstance(schema["$schema"], str) or (
                cls := validator_for(schema, default=unknown)) is unknown:
            raise _bad(f"{path!r}: $schema names no known JSON Schema draft")
    try:
        cls.check_schema(schema)
        if isinstance(schema, dict):
            _check_refs(Resource.from_contents(
                schema, default_specification=DRAFT202012))
    except SchemaError as e:
        raise _bad(f"{path!r} is not a valid JSON Schema (the meta-schema's "
                   f"{e.validator!r} rule fails)") from None
    except Unresolvable:
        raise _bad(f"{path!r}: a $ref points outside the file (remote "
                   "references are never fetched)") from None
    except RecursionError:
        raise _bad(f"{path!r} is nested too deeply") from None
    return cls(schema, registry=_METASCHEMAS)


class _UnknownDraft:
    """What :func:`validator_for` returns for a ``$schema`` it does not know."""


def _check_refs(root: Resource[Any]) -> None:
    """Resolve every ``$ref`` once, as validation would, without retrieval."""
    pending = [(_METASCHEMAS.resolver_with_root(root), root)]
    while pending:
        resolver, resource = pending.pop()
        contents = resource.contents
        for keyword in ("$ref", "$dynamicRef"):
            if isinstance(contents, dict) and isinstance(contents.get(keyword), str):
                resolver.lookup(contents[keyword])
        pending += ((resolver.in_subresource(sub), sub)
                    for sub in resource.subresources())


def build_validator(settings: MessagesSettings) -> MessageValidator:
    """
    Build the validator once, at startup.

    :raises ConfigError: (key ``messages.schema``) if the schema file cannot
        be read, is not JSON, is not a valid JSON Schema, has a ``$ref`` that
        does not resolve locally, or is given without ``format = "json"``.
    """
    schema = None
    if settings.schema:
        if settings.format != "json":
            raise _bad('a schema needs format = "json"')
        schema = _load_schema(settings.schema)
    return MessageValidator(allow_binary=settings.allow_binary,
                            parse_json=settings.format == "json",
                            max_depth=settings.max_json_depth, schema=schema)
