"""
Development mode's page (securews/rules/devpage.py) and where admission
serves it: ``GET /``, only when the rules carry it, fixed bytes whatever
the request says.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re

import attrs
from hypothesis import given
from hypothesis import strategies as st

from securews.rules.actions import (
    FINAL,
    Action,
    AdmissionRules,
    Answer,
    Arrival,
    Refuse,
)
from securews.rules.admission import admission
from securews.rules.devpage import dev_page_response
from securews.rules.origin import parse_allow_list
from securews.testing import read_response
from tests.support.memory import FUZZ, request

PAGE = dev_page_response("/ws")
RULES = AdmissionRules(
    websocket_path="/ws", ticket_path=None, ticket_ttl=30, tls=True,
    trusted=(ipaddress.ip_network("10.0.0.0/8"),), reads_forwarded_for=False,
    ipv6_prefix=64, max_header_bytes=8192, max_headers=64,
    origins=parse_allow_list(["https://127.0.0.1:*"]), allow_missing_origin=True,
    dev_page=PAGE)


@attrs.frozen
class _Verdict:
    admitted: bool = True
    retry_after: float = 0.0


def final(data: bytes, rules: AdmissionRules = RULES) -> Action:
    """Run admission with every limiter admitting, up to its final action.
    (Answers go by action name: the page is decided before any action
    but the accept-time ones and reading the head.)"""
    steps = admission(rules, Arrival("203.0.113.7"))
    action = next(steps)
    while not isinstance(action, FINAL):
        name = type(action).__name__
        reply: object = {"TakeToken": _Verdict(), "Hold": True,
                         "ReadHead": data, "ReadBody": data}.get(name)
        if name in ("Upgrade", "Authenticate", "IssueTicket"):
            raise AssertionError(f"the page request reached {name}")
        action = steps.send(reply)
    return action


def test_get_slash_answers_the_page_in_development_mode() -> None:
    """GET / is a 200 with the page, before anything upgrades or authenticates."""
    answer = final(request("/", upgrade=False, origin=None))
    assert isinstance(answer, Answer)
    assert (answer.outcome, answer.status, answer.response) == ("page", 200, PAGE)


def test_other_methods_on_slash_are_405() -> None:
    """The page is read-only: POST / is 405 with Allow: GET."""
    refused = final(request("/", method="POST", upgrade=False))
    assert isinstance(refused, Refuse)
    assert refused.refusal.status == 405
    assert ("Allow", "GET") in refused.refusal.headers


def test_a_foreign_origin_cannot_fetch_the_page() -> None:
    """The Origin rule holds for the page as for the WebSocket."""
    refused = final(request("/", upgrade=False, origin="https://evil.example"))
    assert isinstance(refused, Refuse)
    assert refused.refusal.status == 403


def test_without_development_mode_slash_is_404() -> None:
    """Production rules carry no page: / is a path like any other."""
    refused = final(request("/", upgrade=False, origin=None),
                    attrs.evolve(RULES, dev_page=None))
    assert isinstance(refused, Refuse)
    assert refused.refusal.status == 404


def test_the_websocket_path_is_unaffected() -> None:
    """Only / is the page; an upgrade to /ws still goes on to the upgrade."""
    steps = admission(RULES, Arrival("203.0.113.7"))
    data = request("/ws", origin="https://127.0.0.1:8443")
    granted = attrs.make_class("Granted", ["lease", "retry_after"])(object(), None)
    action = next(steps)
    while type(action).__name__ != "Upgrade":
        assert not isinstance(action, FINAL), action
        # Claim is a cluster's one action for a place and a rate token.
        reply: object = {"TakeToken": _Verdict(), "Hold": True, "ReadHead": data,
                         "Claim": granted}.get(type(action).__name__)
        action = steps.send(reply)


@FUZZ
@given(query=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                                            exclude_characters="#"),
                     max_size=60),
       header=st.text(alphabet=st.characters(min_codepoint=0x20,
                                             max_codepoint=0x7e), max_size=60))
def test_nothing_from_the_request_reaches_the_page(query: str, header: str) -> None:
    """Whatever the query string and headers, the answer is the same bytes."""
    head = request(f"/?{query}" if query else "/", upgrade=False, origin=None,
                   extra=(f"X-Test: {header}",))
    answer = final(head)
    assert isinstance(answer, Answer)
    assert answer.response == PAGE


def _csp_hash(source: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source).digest()).decode() + "'"


def test_the_page_is_locked_down_by_its_headers() -> None:
    """Strict CSP (inline code by hash only, nothing external, own origin
    only), no framing, no referrer, never cached."""
    parsed = read_response(PAGE)
    assert parsed is not None
    response, rest = parsed
    assert rest == b""
    assert response.status == 200
    assert response.header("Content-Type") == ["text/html; charset=utf-8"]
    assert response.header("Cache-Control") == ["no-store"]
    assert response.header("X-Frame-Options") == ["DENY"]
    assert response.header("Referrer-Policy") == ["no-referrer"]
    (policy,) = response.header("Content-Security-Policy")
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    script = re.search(rb"<script>(.*)</script>", response.body, re.S)
    style = re.search(rb"<style>(.*)</style>", response.body, re.S)
    assert script is not None
    assert style is not None
    assert directives["script-src"] == _csp_hash(script.group(1))
    assert directives["style-src"] == _csp_hash(style.group(1))
    assert b"http://" not in response.body
    assert b"https://" not in response.body


def test_the_websocket_path_cannot_break_out_of_the_script() -> None:
    """server.path is the operator's, but is still escaped for the script."""
    page = dev_page_response("/ws</script><script>alert(1)//")
    assert page.count(b"</script>") == 1
    assert b"\\u003c/script\\u003e" in page
