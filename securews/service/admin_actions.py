"""
The admin listener's endpoints that change state: ``POST /revoke`` and
``POST /publish``.

They exist only with ``admin.token_file`` set, and answer only requests
carrying its token (``Authorization: Bearer ...``, compared in constant
time).  A browser page cannot send that header to another origin without
a CORS preflight, which is never answered, so a page cannot drive them
even from a loopback address; the listener's ``Host`` check (see
:mod:`securews.service.admin`) applies too.  Bodies are small JSON
objects, read whole and bounded; answers are JSON with fixed texts.
"""

from __future__ import annotations

import hmac
import json
import math
from pathlib import Path
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from securews.limits.memory import RevocationsFull
from securews.policy import Policy
from securews.rules.channels import Position, valid_name
from securews.rules.config import ConfigError

__all__ = ["MAX_BODY", "PublishResource", "RevokeResource", "read_token"]

_log = Logger(namespace="securews.admin")
_JSON = b"application/json"
#: Largest request body accepted (a publish carries a message).
MAX_BODY = 4096
#: Longest principal id or token id a revocation names.
MAX_ID = 512
#: Without ``until``: how long a revocation holds (the longest a
#: credential securews accepts could still be valid is not known here).
DEFAULT_HOLD = 30 * 86400.0
#: The furthest ``until`` accepted.
MAX_HOLD = 366 * 86400.0
_MIN_TOKEN = 16


def read_token(path: str) -> bytes | None:
    """
    ``admin.token_file``: its first line is the bearer token (a trailing
    newline is not part of it), at least 16 characters.

    :raises ConfigError: when it cannot be read, or is too short.
    """
    if not path:
        return None
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({type(e).__name__})",
                          key="admin.token_file") from None
    token = text.splitlines()[0].strip() if text.strip() else ""
    if len(token) < _MIN_TOKEN:
        raise ConfigError(f"{path}: the token must be at least {_MIN_TOKEN} "
                          "characters", key="admin.token_file")
    return token.encode("utf-8")


def _answer(request: Request, status: int, document: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    headers = request.responseHeaders
    headers.removeHeader(b"server")
    headers.setRawHeaders(b"content-type", [_JSON])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    headers.setRawHeaders(b"x-content-type-options", [b"nosniff"])
    return json.dumps(document).encode("ascii") + b"\n"


def authorised(request: Request, token: bytes) -> bool:
    """Whether the request carries the bearer token (constant time)."""
    values = request.requestHeaders.getRawHeaders(b"authorization") or []
    if len(values) != 1:
        return False
    scheme, _, offered = values[0].partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(offered.strip(), token)


def _body(request: Request, limit: int = MAX_BODY) -> dict[str, Any] | str:
    """The JSON object in the body, or why not."""
    content = request.content
    if content is None:
        return "empty body"
    raw = content.read(limit + 1)
    if len(raw) > limit:
        return "body too large"
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "body is not JSON"
    if not isinstance(document, dict):
        return "body is not a JSON object"
    return document


class _Action(Resource):
    """POST only, with the admin token."""

    isLeaf = True

    def __init__(self, policy: Policy, token: bytes) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._policy = policy
        self._token = token

    @property
    def max_body(self) -> int:
        """The largest body this endpoint reads: the listener refuses a
        longer one (413) as it arrives, before anyone looks at a token."""
        return MAX_BODY

    def refusal(self, request: Request) -> bytes | None:
        if request.postpath:
            return _answer(request, 404, {"error": "not found"})
        if request.method != b"POST":
            request.responseHeaders.setRawHeaders(b"allow", [b"POST"])
            return _answer(request, 405, {"error": "method not allowed"})
        if not authorised(request, self._token):
            request.responseHeaders.setRawHeaders(b"www-authenticate", [b"Bearer"])
            return _answer(request, 401, {"error": "bearer token required"})
        return None


class PublishResource(_Action):
    """
    ``POST /publish`` with ``{"channel": NAME, "data": ANY}``: a trusted
    backend publishes to a channel (its subscribers on every node get it).
    Answers 202 ``{"channel", "epoch", "offset"}``, 400 for a bad request,
    401 without the token, 503 when the broker cannot take it.
    """

    @property
    def max_body(self) -> int:
        return self._policy.config.limits.max_message_size

    def render(self, request: Request) -> bytes | int:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        document = _body(request, self.max_body)
        if isinstance(document, str):
            return _answer(request, 400, {"error": document})
        if set(document) != {"channel", "data"}:
            return _answer(request, 400, {"error": "give channel and data, only"})
        channel = document["channel"]
        if not valid_name(channel):
            return _answer(request, 400, {"error": "channel is not a valid name"})
        data = json.dumps(document["data"], separators=(",", ":"), ensure_ascii=False)
        d = self._policy.broker.publish(channel, data)

        def done(position: Position) -> None:
            _finish(request, 202, {"channel": channel, "epoch": position.epoch,
                                   "offset": position.offset})

        def failed(failure: Failure) -> None:
            _log.error("a publish could not be made ({error})", event="publish",
                       error=failure.type.__name__ if failure.type else "?")
            _finish(request, 503, {"error": "channels unavailable"})

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


class RevokeResource(_Action):
    """
    ``POST /revoke`` with ``{"principal": ID}`` or ``{"jti": ID}``, and
    ``"until"``: the Unix time until which it holds (when the credential
    would have expired anyway; 30 days when not given).  Every open
    session of it, on every node, closes with 4401 "credential revoked";
    new handshakes with it are refused.  Answers 200 ``{"revoked": KIND,
    "closed_here": N}``, 400 for a bad request, 401 without the token, 503
    when the revocation could not be stored (nothing was revoked then).
    """

    def render(self, request: Request) -> bytes | int:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        document = _body(request)
        if isinstance(document, str):
            return _answer(request, 400, {"error": document})
        what = _revocation(document, self._policy.clock.seconds())
        if isinstance(what, str):
            return _answer(request, 400, {"error": what})
        kind, name, until = what
        if kind == "principal":
            d = self._policy.revoke(principal=name, until=until)
        else:
            d = self._policy.revoke(jti=name, until=until)

        def done(closed: int) -> None:
            _log.info("revoked a {kind} until {until:.0f}; {closed} sessions closed "
                      "here", event="revocation", kind=kind, until=until,
                      closed=closed)
            _finish(request, 200, {"revoked": kind, "closed_here": closed})

        def failed(failure: Failure) -> None:
            error = failure.type.__name__ if failure.type else "?"
            _log.error("a revocation could not be stored ({error})",
                       event="revocation", error=error)
            reason = ("too many revocations held" if failure.check(RevocationsFull)
                      else "revocations unavailable")
            _finish(request, 503, {"error": reason})

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


def _finish(request: Request, status: int, document: dict[str, Any]) -> None:
    if request.finished or request.channel is None:
        return
    request.write(_answer(request, status, document))
    request.finish()


def _revocation(document: dict[str, Any],
                now: float) -> tuple[str, str, float] | str:
    """``(kind, id, until)`` from a request body, or what is wrong with it."""
    unknown = set(document) - {"principal", "jti", "until"}
    if unknown:
        return "unknown field " + sorted(unknown)[0][:32]
    named = [k for k in ("principal", "jti") if k in document]
    if len(named) != 1:
        return "name exactly one of principal and jti"
    kind = named[0]
    name = document[kind]
    if not isinstance(name, str) or not name or len(name) > MAX_ID:
        return f"{kind} must be a non-empty string of at most {MAX_ID} characters"
    until = document.get("until", now + DEFAULT_HOLD)
    if (isinstance(until, bool) or not isinstance(until, int | float)
            or not math.isfinite(until)):
        return "until must be a Unix time"
    if until <= now:
        return "until is in the past"
    return kind, name, min(float(until), now + MAX_HOLD)
