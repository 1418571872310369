"""
JWT keys from a JWKS URL, in memory: the fetched-set parser, freshness
(``Cache-Control``), the refresh schedule, and :class:`JWKSKeys` on a
``Clock`` with a fake HTTP agent (the network is test_auth_jwks_e2e.py's
business).
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import attrs
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseNeverReceived
from twisted.web.http_headers import Headers

from securews.auth.interfaces import AuthenticationFailed, HandshakeRequest, Principal
from securews.auth.jwks import JWKSKeys, jwt_key_source
from securews.auth.jwks_fetch import JWKSAnswer, max_age
from securews.auth.jwks_plan import MIN_REFRESH, RefreshPlan, refresh_interval
from securews.auth.jwt import JWTAuthenticator
from securews.auth.jwt_keys import (
    SKIP_CATEGORIES,
    JWKSError,
    parse_fetched_jwks,
)
from securews.ops.metrics import Metrics
from securews.rules.config import ConfigError, from_mapping
from securews.rules.head import RequestHead
from securews.rules.settings import JWT_ALGORITHMS, JWTSettings
from tests.support.jwkstools import (
    EC_A,
    EC_B,
    RSA_A,
    RSA_B,
    RSA_WEAK,
    document,
    jwk,
    material,
    token,
)
from tests.support.memory import result_of

ALGORITHMS = ("RS256", "ES256")
SETTINGS = JWTSettings(algorithms=ALGORITHMS, jwks_url="https://idp.test/jwks",
                       jwks_cooldown=10, jwks_refresh=300, jwks_timeout=5)
NOW = 1_700_000_000.0
A = document(jwk(RSA_A, "a"))
AB = document(jwk(RSA_A, "a"), jwk(EC_B, "b"))


def parse(data: bytes, algorithms: tuple[str, ...] = ALGORITHMS,
          max_keys: int = 100) -> Any:
    return parse_fetched_jwks(data, algorithms, max_keys=max_keys)


# -- the fetched-set parser ----------------------------------------------------


def test_fetched_set_keeps_usable_keys_and_counts_the_rest() -> None:
    """Keys not for us or unfit are skipped by category; the good ones are kept."""
    entries = [
        jwk(RSA_A, "rsa"), jwk(EC_A, "ec", alg="ES256", use="sig"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEy"},
        jwk(EC_B, "private", private=True),
        jwk(RSA_B, "encryption", use="enc"),
        jwk(RSA_B, "wrapping", key_ops=["wrapKey"]),
        jwk(RSA_B, None), jwk(RSA_B, ""), jwk(RSA_B, "rsa"),
        jwk(RSA_WEAK, "weak"),
        jwk(ec.generate_private_key(ec.SECP384R1()), "p384"),
        jwk(RSA_B, "pss", alg="PS256"),
        "not an object", {"kty": "XYZ", "kid": "strange"},
    ]
    found = parse(document(*entries))
    assert set(found.keys.by_kid) == {"rsa", "ec"}
    assert found.keys.by_kid["rsa"].algorithms == ("RS256",)
    assert dict(found.skipped) == {
        "symmetric": 1, "private": 1, "not_for_signatures": 2, "no_kid": 2,
        "duplicate_kid": 1, "weak": 1, "algorithm": 2, "not_an_object": 1,
        "unusable": 1}
    assert set(found.skipped) <= SKIP_CATEGORIES
    assert found.describe() == ("2 keys (12 skipped: 2 algorithm, 1 duplicate_kid, "
                                "2 no_kid, 1 not_an_object, 2 not_for_signatures, "
                                "1 private, 1 symmetric, 1 unusable, 1 weak)")


def test_alg_in_a_key_narrows_the_allow_list_and_never_widens_it() -> None:
    """An RSA key verifies RS256 and PS256 when allowed; its alg picks one of them."""
    both = ("RS256", "PS256")
    assert parse(document(jwk(RSA_A, "k")), both).keys.by_kid["k"].algorithms == both
    narrowed = parse(document(jwk(RSA_A, "k", alg="PS256")), both)
    assert narrowed.keys.by_kid["k"].algorithms == ("PS256",)
    with pytest.raises(JWKSError):
        parse(document(jwk(RSA_A, "k", alg="RS512")), both)


@given(alg=st.sampled_from([*JWT_ALGORITHMS, "none", "RSA-OAEP", ""]) | st.text(),
       allowed=st.sets(st.sampled_from(
           [a for a in JWT_ALGORITHMS if not a.startswith("HS")]), min_size=1))
def test_a_fetched_key_verifies_only_allowed_algorithms_that_fit_it(
        alg: str, allowed: set[str]) -> None:
    """Whatever alg a key claims, it verifies allowed RSA ones only, or is skipped."""
    algorithms = tuple(sorted(allowed))
    fitting = {a for a in algorithms if a[:2] in ("RS", "PS")}
    try:
        found = parse(document(jwk(RSA_A, "k", alg=alg)), algorithms)
    except JWKSError:
        assert alg not in fitting
        return
    verifies = set(found.keys.by_kid["k"].algorithms)
    assert verifies == {alg}
    assert verifies <= fitting


@pytest.mark.parametrize(("data", "says"), [
    (b"<html>", "not JSON"),
    (b"[" * 100_000, "not JSON"),
    (b'{"keys": {}}', "not a JWKS"),
    (b"[]", "not a JWKS"),
    (document(), "no usable key: 0 keys"),
    (document({"kty": "oct", "kid": "s", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}),
     "no usable key: 0 keys (1 skipped: 1 symmetric)"),
    (document(*[jwk(EC_A, str(n)) for n in range(101)]), "101 keys, more than 100"),
])
def test_unusable_fetched_sets_are_errors(data: bytes, says: str) -> None:
    """No JWKS, no usable key or too many keys: JWKSError with a fixed line."""
    with pytest.raises(JWKSError) as info:
        parse(data)
    assert says in str(info.value)


def test_no_key_material_in_parse_errors() -> None:
    """A set of private keys is refused without quoting any of them."""
    entries = [jwk(EC_A, "p", private=True), jwk(RSA_WEAK, "w")]
    with pytest.raises(JWKSError) as info:
        parse(document(*entries))
    for secret in material(*entries):
        assert secret not in str(info.value)


def test_hmac_algorithms_take_no_keys_from_a_url() -> None:
    """With HS256 allowed, even a well-formed oct key is never taken from a JWKS URL."""
    entry = {"kty": "oct", "kid": "s", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEy"}
    with pytest.raises(JWKSError, match="HMAC"):
        parse(document(entry), ("HS256",))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from(["RSA", "EC", "OKP", "oct", "sig", "enc", "RS256", "ES256",
                       "P-256", "AQAB", "kid", "verify"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["kty", "kid", "use", "alg", "n", "e", "crv", "x", "y", "d",
                         "k", "key_ops", "keys"]) | st.text(max_size=4),
        inner, max_size=6),
    max_leaves=20)


@given(entries=st.lists(_json | st.sampled_from([jwk(RSA_A, "a"), jwk(EC_A, "e")]),
                        max_size=6),
       raw=st.binary(max_size=64))
def test_any_document_gives_a_key_set_or_jwks_error(entries: list[Any],
                                                     raw: bytes) -> None:
    """Arbitrary JSON in "keys", or arbitrary bytes, never raises anything else."""
    for data in (json.dumps({"keys": entries}).encode(), raw):
        try:
            found = parse(data)
        except JWKSError:
            continue
        assert found.keys.by_kid
        assert set(found.skipped) <= SKIP_CATEGORIES
        for key in found.keys.by_kid.values():
            assert set(key.algorithms) <= set(ALGORITHMS)


# -- freshness -----------------------------------------------------------------


@pytest.mark.parametrize(("cache_control", "age", "expected"), [
    ([], [], None),
    (["public"], [], None),
    (["s-maxage=30"], [], None),
    (["max-age=120"], [], 120.0),
    (["public, Max-Age = \"90\""], [], 90.0),
    (["public", "max-age=120"], [], 120.0),
    (["max-age=120"], ["30"], 90.0),
    (["max-age=120"], ["300"], 0.0),
    (["max-age=120"], ["soon"], 120.0),
    (["max-age=120"], ["10", "20"], 120.0),
    (["max-age=120, max-age=120"], [], 120.0),
    (["max-age=60", "max-age=120"], [], 0.0),
    (["max-age=soon"], [], 0.0),
    (["max-age=-5"], [], 0.0),
    (["no-store"], [], 0.0),
    (["max-age=600, no-cache"], [], 0.0),
    (["max-age=" + "9" * 50], [], float(2**31)),
])
def test_max_age_follows_rfc_9111(cache_control: list[str], age: list[str],
                                  expected: float | None) -> None:
    """max-age less Age; stale (0) when invalid, conflicting or no-store/no-cache."""
    assert max_age(cache_control, age) == expected


@given(st.lists(st.text(max_size=30), max_size=3), st.lists(st.text(max_size=12),
                                                            max_size=2))
def test_max_age_of_any_header_is_none_or_finite(cache_control: list[str],
                                                 age: list[str]) -> None:
    """Any header text gives None or a finite, non-negative number of seconds."""
    found = max_age(cache_control, age)
    assert found is None or (math.isfinite(found) and found >= 0)


@pytest.mark.parametrize(("fresh_for", "refresh", "expected"), [
    (None, 300, 300), (0, 300, MIN_REFRESH), (5, 300, MIN_REFRESH), (120, 300, 120),
    (3600, 300, 300), (3600, 86400, 3600), (10**9, 86400, 86400),
])
def test_refresh_interval_clamps_max_age(fresh_for: float | None, refresh: float,
                                         expected: float) -> None:
    """max-age counts between one minute and jwks_refresh; jwks_refresh without it."""
    assert refresh_interval(fresh_for, refresh) == expected


# -- the refresh schedule --------------------------------------------------------


_steps = st.lists(st.tuples(
    st.floats(0, 200), st.booleans(), st.booleans(),
    st.none() | st.floats(0, 10**6), st.floats(0, 5)), max_size=60)


@given(cooldown=st.floats(1, 60), refresh=st.floats(60, 86400), steps=_steps)
def test_fetches_start_at_least_a_cooldown_apart_and_unknown_kids_are_served(
        cooldown: float, refresh: float,
        steps: list[tuple[float, bool, bool, float | None, float]]) -> None:
    """
    Whatever tokens arrive and however fetches end, two fetches start at
    least ``cooldown`` apart, and an unknown kid gets a fetch within one.
    """
    plan = RefreshPlan.after(0.0, None, refresh=refresh, cooldown=cooldown)
    now, starts, done_at = 0.0, [0.0], math.inf
    for wait, unknown_kid, works, fresh_for, duration in steps:
        target = now + wait
        while True:  # the timer and the fetch, in time order
            event = done_at if plan.fetching else plan.due
            if event > target:
                break
            now = max(now, event)
            if plan.fetching:
                plan.succeeded(now, fresh_for) if works else plan.failed(now)
            else:
                plan.start(now)
                starts.append(now)
                done_at = now + duration
        now = target
        if unknown_kid and not plan.fetching:
            due = plan.due
            plan.unknown_kid(now)
            if plan.failures:  # the provider's backoff stands
                assert plan.due == due
            else:
                assert plan.due <= max(now, plan.last_start + cooldown)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= cooldown - 1e-6 for gap in gaps)


def test_unknown_kids_do_not_shorten_the_backoff_of_a_failing_provider() -> None:
    """While the provider fails, a flood of made-up kids changes no retry."""
    plan = RefreshPlan.after(0.0, None, refresh=300, cooldown=2)
    plan.start(plan.due)
    plan.failed(plan.due)
    plan.start(plan.due)
    plan.failed(plan.due)
    due = plan.due
    for n in range(100):
        assert not plan.unknown_kid(plan.last_start + 2 + n * 0.01)
    assert plan.due == due


def test_backoff_doubles_from_the_cooldown_up_to_the_refresh_interval() -> None:
    """Failures retry after 10, 20, 40, ... seconds, never more than jwks_refresh."""
    plan = RefreshPlan.after(0.0, None, refresh=300, cooldown=10)
    waits = []
    for _ in range(7):
        plan.start(plan.due)
        started = plan.due
        plan.failed(started)
        waits.append(plan.due - started)
    assert waits == [10, 20, 40, 80, 160, 300, 300]
    plan.start(plan.due)
    plan.succeeded(plan.due, None)
    assert plan.failures == 0


# -- JWKSKeys on a Clock -----------------------------------------------------------


@attrs.define
class FakeResponse:
    code: int
    body: bytes
    headers: Headers

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


@attrs.define
class FakeProvider:
    """An IAgent answering with ``answer`` (a response, an error, or "hang")."""

    clock: Clock
    answer: Any = None
    requests: list[float] = attrs.Factory(list)
    pending: list[Deferred[Any]] = attrs.Factory(list)

    def serve(self, body: bytes, code: int = 200, **headers: str) -> None:
        raw = {k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()}
        self.answer = FakeResponse(code, body, Headers(raw))

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Deferred[Any]:
        assert (method, uri) == (b"GET", b"https://idp.test/jwks")
        self.requests.append(self.clock.seconds())
        if self.answer == "hang":
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(self.answer)


def keys_on_clock(first: bytes = A, fresh_for: float | None = None,
                  **settings: Any) -> tuple[Clock, FakeProvider, JWKSKeys]:
    """Started keys whose first fetch (of ``first``) was at NOW."""
    clock = Clock()
    clock.advance(NOW)
    provider = FakeProvider(clock)
    provider.serve(first)
    config = attrs.evolve(SETTINGS, **settings)
    answer = JWKSAnswer(parse(first), fresh_for, NOW)
    keys = JWKSKeys(config, clock, answer, agent=provider)
    keys.start()
    return clock, provider, keys


def verdict(keys: JWKSKeys, clock: Clock, jwt_text: str) -> str:
    """"ok", or the refusal reason; the answer must come at once."""
    authenticator = JWTAuthenticator(SETTINGS, keys, clock)
    head = RequestHead("GET", "/ws", f"token={jwt_text}", "HTTP/1.1", (), 0)
    try:
        principal = result_of(authenticator.authenticate(
            HandshakeRequest(head, "203.0.113.5", None)))
    except AuthenticationFailed as e:
        return e.reason
    assert isinstance(principal, Principal)
    return "ok"


def jwks_events(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("event") == "jwks"]


@pytest.mark.parametrize(("fresh_for", "due"), [
    (None, 300), (5, 60), (120, 120), (86400, 300)])
def test_refresh_is_due_after_max_age_clamped(fresh_for: float | None,
                                              due: float) -> None:
    """The next fetch comes exactly when the clamped max-age runs out, not before."""
    clock, provider, _keys = keys_on_clock(fresh_for=fresh_for)
    clock.advance(due - 0.25)
    assert provider.requests == []
    clock.advance(0.25)
    assert provider.requests == [NOW + due]
    clock.advance(299.75)  # the answer had no Cache-Control: jwks_refresh
    assert len(provider.requests) == 1
    clock.advance(0.25)
    assert len(provider.requests) == 2


def test_nothing_is_scheduled_before_start_or_after_stop() -> None:
    """Unstarted or stopped, the keys leave no timer and fetch nothing."""
    clock = Clock()
    provider = FakeProvider(clock)
    keys = JWKSKeys(SETTINGS, clock, JWKSAnswer(parse(A), None, 0.0), agent=provider)
    assert verdict(keys, clock, token(RSA_B, "new", now=0)) == "unknown_key"
    assert clock.getDelayedCalls() == []
    keys.start()
    assert len(clock.getDelayedCalls()) == 1
    keys.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert verdict(keys, clock, token(RSA_B, "new", now=3600)) == "unknown_key"
    assert provider.requests == []


def test_unknown_kid_is_refused_at_once_and_fetched_after_the_cooldown() -> None:
    """A rotated-in kid is 401 at once; cooldown after the last fetch it is accepted."""
    clock, provider, keys = keys_on_clock()
    clock.advance(3)
    rotated = token(EC_B, "b", now=clock.seconds())
    provider.serve(AB)
    assert verdict(keys, clock, rotated) == "unknown_key"
    assert provider.requests == []
    clock.advance(6.75)
    assert provider.requests == []
    clock.advance(0.25)
    assert provider.requests == [NOW + 10]
    assert verdict(keys, clock, rotated) == "ok"
    assert verdict(keys, clock, token(RSA_A, "a", now=clock.seconds())) == "ok"


def test_unknown_kid_long_after_the_last_fetch_is_fetched_at_once() -> None:
    """Past the cooldown, the fetch is scheduled for now (next reactor turn)."""
    clock, provider, keys = keys_on_clock()
    clock.advance(100)
    provider.serve(AB)
    assert verdict(keys, clock, token(EC_B, "b", now=clock.seconds())) == "unknown_key"
    clock.advance(0)
    assert provider.requests == [NOW + 100]


def test_flood_of_unknown_kids_costs_one_fetch_per_cooldown() -> None:
    """16 made-up kids a second for a minute: six fetches (cooldown 10 s)."""
    clock, provider, keys = keys_on_clock()
    refused = 0
    for n in range(960):
        clock.advance(0.0625)
        forged = token(EC_A, f"kid-{n}", now=clock.seconds())
        refused += verdict(keys, clock, forged) == "unknown_key"
    assert refused == 960
    assert provider.requests == [NOW + 10 * i for i in range(1, 7)]


def test_removed_key_stops_verifying_after_a_refresh() -> None:
    """When the provider drops a kid, its tokens are refused after the next fetch."""
    clock, provider, keys = keys_on_clock(first=AB)
    old = token(RSA_A, "a", now=NOW)
    assert verdict(keys, clock, old) == "ok"
    provider.serve(document(jwk(EC_B, "b")))
    clock.advance(300)
    assert verdict(keys, clock, old) == "unknown_key"


def test_failed_refresh_keeps_the_keys_logs_once_and_recovers(
        events: list[LogEvent]) -> None:
    """Provider down: old keys verify, one WARN, backoff, one INFO on recovery."""
    clock, provider, keys = keys_on_clock()
    provider.serve(b"down", code=503)
    clock.advance(300)
    for wait in (10, 20, 40):
        assert verdict(keys, clock, token(RSA_A, "a", now=clock.seconds())) == "ok"
        clock.advance(wait)
    assert provider.requests == [NOW + 300, NOW + 310, NOW + 330, NOW + 370]
    assert keys.refresh_failures == 4
    assert keys.last_success == NOW
    warnings = [e for e in jwks_events(events) if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1
    assert "answered HTTP 503" in formatEvent(warnings[0])
    assert "idp.test" in formatEvent(warnings[0])
    provider.serve(AB)
    clock.advance(80)
    assert keys.last_success == NOW + 450
    assert keys.refresh_failures == 4
    recovered = [formatEvent(e) for e in jwks_events(events)
                 if "works again" in formatEvent(e)]
    assert recovered == ["JWKS refresh from idp.test works again after 4 failed "
                         "attempts: 2 keys"]
    clock.advance(300)
    assert len(provider.requests) == 6
    assert len([e for e in jwks_events(events) if e["log_level"] == LogLevel.warn]) == 1


@pytest.mark.parametrize(("answer", "why"), [
    (FakeResponse(500, b"oops", Headers()), "answered HTTP 500"),
    (FakeResponse(302, b"", Headers({b"location": [b"https://evil.test/"]})),
     "answered HTTP 302 (redirects are not followed)"),
    (FakeResponse(200, b" " * 262_145, Headers()), "larger than 262144 bytes"),
    (FakeResponse(200, b"<html>", Headers()), "not JSON"),
    (FakeResponse(200, document(*[jwk(EC_A, str(n)) for n in range(101)]), Headers()),
     "more than 100"),
    (FakeResponse(200, document(jwk(EC_A, "p", private=True)), Headers()),
     "no usable key: 0 keys (1 skipped: 1 private)"),
    (error.ConnectionRefusedError(), "connection refused"),
    (error.DNSLookupError(), "does not resolve"),
    (ResponseNeverReceived([Failure(error.ConnectionLost())]), "ConnectionLost"),
])
def test_every_kind_of_failed_refresh_keeps_the_last_good_keys(
        events: list[LogEvent], answer: Any, why: str) -> None:
    """Bad statuses, bodies and transport errors: counted, logged, keys kept."""
    clock, provider, keys = keys_on_clock()
    provider.answer = answer
    clock.advance(300)
    assert keys.refresh_failures == 1
    assert verdict(keys, clock, token(RSA_A, "a", now=clock.seconds())) == "ok"
    [warning] = jwks_events(events)[1:]
    assert why in formatEvent(warning)
    assert "\n" not in formatEvent(warning)


def test_refresh_times_out_at_jwks_timeout_and_cancels_the_request() -> None:
    """A provider that never answers fails the refresh exactly at jwks_timeout."""
    clock, provider, keys = keys_on_clock()
    provider.answer = "hang"
    clock.advance(300)
    clock.advance(4.75)
    assert keys.refresh_failures == 0
    clock.advance(0.25)
    assert keys.refresh_failures == 1
    assert provider.pending[0].called
    clock.advance(10)  # backoff after the failure
    assert len(provider.requests) == 2


def test_stop_abandons_a_refresh_under_way() -> None:
    """Stopping cancels the request in flight; nothing is counted or scheduled."""
    clock, provider, keys = keys_on_clock()
    provider.answer = "hang"
    clock.advance(300)
    keys.stop()
    assert provider.pending[0].called
    assert keys.refresh_failures == 0
    assert clock.getDelayedCalls() == []
    keys.start()  # restarting fetches again, as it is overdue
    clock.advance(0)
    assert len(provider.requests) == 2


def test_no_key_material_or_token_in_log_events(events: list[LogEvent]) -> None:
    """Fetch, change, failure and recovery events name counts and hosts only."""
    entries = [jwk(RSA_A, "a"), jwk(EC_B, "b"), jwk(EC_A, "p", private=True)]
    clock, provider, keys = keys_on_clock(first=document(*entries[:1]))
    sent = token(EC_B, "b", now=NOW)
    provider.serve(document(*entries))
    verdict(keys, clock, sent)
    clock.advance(10)
    provider.answer = error.ConnectionRefusedError()
    clock.advance(300)
    provider.serve(document(*entries))
    clock.advance(10)
    texts = [formatEvent(e) + repr(e) for e in jwks_events(events)]
    assert len(texts) == 4
    for text in texts:
        for secret in [*material(*entries), sent, sent.split(".")[2]]:
            assert secret not in text


def test_metrics_report_failures_last_success_and_key_count() -> None:
    """The admin /metrics shows the refresh figures of the watched keys."""
    clock, provider, keys = keys_on_clock(first=AB)
    metrics = Metrics(connections=lambda: 0, sessions=lambda: 0, process=False)
    assert b"securews_jwks" not in metrics.exposition()
    metrics.watch_jwks(keys)
    provider.serve(b"", code=500)
    clock.advance(300)
    text = metrics.exposition().decode()
    assert "securews_jwks_refresh_failures_total 1.0" in text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines()
                   if line.startswith("securews_jwks"))
    assert float(samples["securews_jwks_last_success_timestamp_seconds"]) == NOW
    assert "securews_jwks_keys 2.0" in text


# -- settings ------------------------------------------------------------------


@pytest.mark.parametrize(("jwt_settings", "key", "says"), [
    ({"jwks_url": "http://idp.test/jwks"}, "auth.jwt.jwks_url", "https://"),
    ({"jwks_refresh": 59}, "auth.jwt.jwks_refresh", "at least 60"),
    ({"jwks_refresh": 86401}, "auth.jwt.jwks_refresh", "at most 86400"),
    ({"jwks_refresh": math.nan}, "auth.jwt.jwks_refresh", "at least 60"),
    ({"jwks_cooldown": math.nan}, "auth.jwt.jwks_cooldown", "at least 1"),
    ({"jwks_cooldown": 0.5}, "auth.jwt.jwks_cooldown", "at least 1"),
    ({"jwks_cooldown": 61}, "auth.jwt.jwks_cooldown", "at most 60"),
    ({"jwks_timeout": 0}, "auth.jwt.jwks_timeout", "greater than 0"),
    ({"jwks_timeout": 61}, "auth.jwt.jwks_timeout", "at most 60"),
])
def test_jwks_settings_are_bounded(jwt_settings: dict[str, Any], key: str,
                                   says: str) -> None:
    """A plaintext URL or an unbounded interval is refused when settings load."""
    with pytest.raises(ConfigError) as info:
        from_mapping({"auth": {"jwt": jwt_settings}})
    assert info.value.key == key
    assert says in info.value.problem


@pytest.mark.parametrize(("jwt_settings", "key", "says"), [
    ({}, "auth.jwt.key_file", "or set auth.jwt.jwks_url"),
    ({"key_file": "/k.pem", "jwks_url": "https://idp.test/jwks"},
     "auth.jwt.jwks_url", "not both"),
    ({"jwks_url": "https://idp.test/jwks", "algorithms": ("RS256", "HS256")},
     "auth.jwt.algorithms", "HS256 cannot be used with auth.jwt.jwks_url"),
    ({"jwks_url": "https://user:pw@idp.test/jwks"}, "auth.jwt.jwks_url",
     "credentials"),
    ({"jwks_url": "https://idp.test/jwks#x"}, "auth.jwt.jwks_url", "fragment"),
    ({"jwks_url": "https://idp.test/jwks", "jwks_ca": "/nonexistent/ca.pem"},
     "auth.jwt.jwks_ca", "cannot read"),
])
def test_key_source_needs_exactly_one_usable_source(
        jwt_settings: dict[str, Any], key: str, says: str) -> None:
    """Neither, both, HS* with a URL, or a bad URL/CA: ConfigError, nothing fetched."""
    with pytest.raises(ConfigError) as info:
        jwt_key_source(JWTSettings(**jwt_settings), Clock())
    assert info.value.key == key
    assert says in info.value.problem


def test_hs256_token_forged_with_a_fetched_public_key_is_refused() -> None:
    """HS256 over the RSA key's public JWK cannot pass for RS256 (no confusion)."""
    clock, _provider, keys = keys_on_clock()
    public = json.dumps(jwk(RSA_A, "a")).encode()
    forged = jwt.encode({"sub": "mallory", "exp": NOW + 60}, public + b"-" * 32,
                        algorithm="HS256", headers={"kid": "a"})
    assert verdict(keys, clock, forged) == "bad_algorithm"
