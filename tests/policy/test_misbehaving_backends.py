"""
Shared backends (``securews.policy.Shared``) that misbehave in ways their
interfaces do not forbid: raising instead of failing, answering a wrong
type, failing to give a place back.  From an independent review of the
admission restructuring; each failed on 87e4b83.

securews.limits.interfaces promises: "An implementation that cannot
answer (its engine is down or slow) fails the Deferred: the handshake is
then refused (503), never admitted (fail closed)".  rules/admission.py:
"A limiter or store that cannot answer makes the driver throw
Unavailable into the generator: the answer is then 503 (fail closed),
never a 101."
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from securews.auth.interfaces import Principal
from securews.limits.interfaces import IGate, IRateLimiter, ISessionCounter, RateVerdict
from securews.policy import Policy, Shared, build_policy
from securews.rules.actions import Claimed, Vouched
from securews.rules.counters import Lease
from securews.testing import (
    ORIGIN,
    FixedAuthenticator,
    MemorySession,
    make_config,
    upgrade_request,
)
from securews.wire.factory import SecureServerFactory
from securews.wire.protocol import SecureServerProtocol

TLS = {"cert": "/unused/cert.pem", "key": "/unused/key.pem"}
ALICE = Principal("alice", "fixed")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_policy(clock: Clock, authenticator: Any = None, **shared: Any) -> Policy:
    return build_policy(
        make_config(tls=TLS, origin={"allowed": [ORIGIN]}), clock,
        authenticator=authenticator or FixedAuthenticator(ALICE),
        shared=Shared(**shared))


def session(policy: Policy) -> MemorySession:
    factory = SecureServerFactory(policy=policy, protocol=SecureServerProtocol,
                                  reactor=policy.clock)
    return MemorySession(factory)


@implementer(ISessionCounter)
class RaisingCounter:
    """A client library that raises at once when its engine is unreachable
    (as redis-py style clients do) instead of failing a Deferred."""

    limit = 5

    def acquire(self, key: str) -> Deferred[Lease | None]:
        raise ConnectionError("engine unreachable")

    def count(self, key: str) -> Deferred[int]:
        return succeed(0)


@implementer(IRateLimiter)
class RaisingLimiter:
    rate = 1.0
    burst = 1

    def take(self, key: str) -> Deferred[RateVerdict]:
        raise ConnectionError("engine unreachable")


@implementer(ISessionCounter)
class GivesBackBadly:
    """Grants places; giving one back fails (the engine went away between
    acquire and release)."""

    limit = 5

    def acquire(self, key: str) -> Deferred[Lease | None]:
        def give_back() -> None:
            raise ConnectionError("engine unreachable")
        return succeed(Lease(give_back))

    def count(self, key: str) -> Deferred[int]:
        return succeed(0)


@implementer(ISessionCounter)
class AnswersBool:
    """An engine adapter that answers ``True`` (granted) instead of a Lease:
    a wrong type, as the brief's "returns a wrong type"."""

    limit = 5

    def acquire(self, key: str) -> Deferred[Any]:
        return succeed(True)

    def count(self, key: str) -> Deferred[int]:
        return succeed(0)


# -- a backend that raises instead of failing its Deferred ---------------------


def test_a_session_counter_raising_synchronously_is_answered_503() -> None:
    """
    A shared per-client counter whose ``acquire`` raises: the request
    must be answered 503 ``unavailable`` (summarised), like a failed
    Deferred.  On 87e4b83 the exception escapes ``Admission._advance``
    (``policy.hold`` is called outside its try) and out of
    ``dataReceived``: no answer, and in a real reactor one traceback per
    request logged at error level.
    """
    p = make_policy(Clock(), per_client=RaisingCounter())
    s = session(p)
    s.write(upgrade_request())  # raises ConnectionError on 87e4b83
    assert s.status == 503
    assert len(p.capacity) == 0


def test_a_shared_rate_limiter_raising_synchronously_is_answered_503() -> None:
    """As above, for the cluster's connect-rate limiter (``policy.take``)."""
    p = make_policy(Clock(), connect_rate=RaisingLimiter())
    s = session(p)
    s.write(upgrade_request())  # raises ConnectionError on 87e4b83
    assert s.status == 503


def test_a_counter_raising_after_a_later_authenticator_does_not_hang() -> None:
    """
    The authenticator answers later (introspection, JWKS); the run then
    resumes from a Deferred callback and asks the shared per-principal
    counter, which raises.  It must still be a 503 at once, with every
    place given back.  On 87e4b83 the exception is swallowed by the
    authenticator's Deferred ("Unhandled error in Deferred"): the client
    gets no answer, and its per-client and capacity places stay held
    until the handshake timeout.
    """
    later: Deferred[Principal] = Deferred()
    p = make_policy(Clock(), FixedAuthenticator(later),
                    per_principal=RaisingCounter())
    s = session(p)
    s.write(upgrade_request())
    assert s.status is None  # waiting: fine so far
    assert len(p.capacity) == 1
    # Tolerate the error escaping: the answer is the point.
    with contextlib.suppress(ConnectionError):
        later.callback(ALICE)
    assert s.status == 503
    assert len(p.capacity) == 0


def test_a_counter_answering_a_wrong_type_gets_an_answer() -> None:
    """
    ``acquire`` answers ``True`` instead of a Lease or None.  The request
    must still get an HTTP answer (refused).  On 87e4b83 ``Admission._kept``
    asserts (``assert isinstance(result, Lease)``) outside any try: the
    AssertionError escapes ``dataReceived`` and nothing is answered.
    """
    p = make_policy(Clock(), per_client=AnswersBool())
    s = session(p)
    with contextlib.suppress(AssertionError):
        s.write(upgrade_request())
    assert s.status is not None
    assert s.status >= 400


def test_a_counter_answering_a_wrong_type_is_not_admitted_under_python_O() -> None:
    """
    The same counter, with assertions off (``python -O`` or
    ``PYTHONOPTIMIZE``, common in production images): the run must not
    treat ``True`` as a granted place.  On 87e4b83 the assert vanishes,
    ``True`` is kept as a "lease" and the handshake gets a 101 (fail
    open); at close ``True.release()`` raises AttributeError.
    """
    script = textwrap.dedent("""
        from twisted.internet.defer import succeed
        from twisted.internet.task import Clock
        from zope.interface import implementer
        from securews.limits.interfaces import ISessionCounter
        from securews.policy import Shared, build_policy
        from securews.auth.interfaces import Principal
        from securews.testing import (ORIGIN, FixedAuthenticator, MemorySession,
                                      make_config, upgrade_request)
        from securews.wire.factory import SecureServerFactory
        from securews.wire.protocol import SecureServerProtocol

        @implementer(ISessionCounter)
        class AnswersBool:
            limit = 5
            def acquire(self, key): return succeed(True)
            def count(self, key): return succeed(0)

        p = build_policy(make_config(tls={"cert": "/u/c", "key": "/u/k"},
                                     origin={"allowed": [ORIGIN]}), Clock(),
                         authenticator=FixedAuthenticator(Principal("a", "fixed")),
                         shared=Shared(per_client=AnswersBool()))
        s = MemorySession(SecureServerFactory(policy=p, protocol=SecureServerProtocol,
                                              reactor=p.clock))
        try:
            s.write(upgrade_request())
        except Exception:
            pass
        print(s.status)
    """)
    out = subprocess.run([sys.executable, "-O", "-c", script], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() != "101", "a non-Lease answer admitted the handshake"


# -- a lease that cannot be given back -----------------------------------------


def test_one_failing_release_does_not_leak_the_other_places() -> None:
    """
    The shared per-client counter's lease fails to give its place back
    (engine down at close).  The server's own places (capacity,
    per-principal, both in memory) must still be given back, and the
    connection must leave ``policy.connections`` (or shutdown never
    drains).  On 87e4b83 ``Admission.close`` stops at the first lease
    that raises: capacity and per-principal places leak for good, and
    ``HandshakeProtocol.connectionLost``'s ``finally`` is cut short before
    ``policy.connections.discard``.  During an engine outage every
    closing session leaks one of ``max_connections``: the node ends up
    answering 503 server_full to everyone, permanently.
    """
    clock = Clock()
    p = make_policy(clock, per_client=GivesBackBadly())
    s = session(p)
    s.write(upgrade_request())
    assert s.status == 101
    # The backend's error may be logged; the places are the point.
    with contextlib.suppress(ConnectionError):
        s.protocol.connectionLost()
    assert len(p.capacity) == 0, "server capacity place leaked"
    assert len(p.per_principal) == 0, "per-principal place leaked"  # type: ignore[arg-type]
    assert s.factory.connection_count == 0, "connection left in policy.connections"
    drained: list[object] = []
    s.factory.shutdown(grace=1).addBoth(drained.append)
    clock.advance(2)
    assert drained == [None]


@implementer(IGate)
class PausedGate:
    """Answers each check with a fired Deferred that is paused, with a
    callback still to run that turns the session place it granted into a
    refusal."""

    def __init__(self) -> None:
        self.answers: list[Deferred[Any]] = []

    def claim(self, key: str, rate: bool) -> Deferred[Claimed]:
        return succeed(Claimed(Lease(lambda: None)))

    def vouch(self, principal: str, jti: str | None,
              issued_at: float | None) -> Deferred[Vouched]:
        d: Deferred[Vouched] = Deferred()
        d.pause()
        d.callback(Vouched(False, Lease(lambda: None)))
        d.addCallback(lambda _: Vouched(False, None))
        self.answers.append(d)
        return d


def test_a_paused_answer_is_awaited_not_read_before_its_callbacks() -> None:
    """
    An answer that has fired but is paused is awaited, and what its
    callbacks make of it counts (here: no session place, 429).
    """
    gate = PausedGate()
    p = make_policy(Clock(), gate=gate)
    s = session(p)
    s.write(upgrade_request())
    assert s.status is None
    gate.answers[0].unpause()
    assert s.status == 429


@implementer(IGate)
class ChainGate:
    """Answers both checks on one chain: ``vouch`` adds to the Deferred
    ``claim`` returned, so it is answered while that chain's callbacks are
    running (admission resumed from one of them)."""

    def __init__(self, released: list[str]) -> None:
        self.chain: Deferred[Any] = Deferred()
        self._released = released

    def claim(self, key: str, rate: bool) -> Deferred[Claimed]:
        return self.chain

    def vouch(self, principal: str, jti: str | None,
              issued_at: float | None) -> Deferred[Vouched]:
        return self.chain.addCallback(lambda _: Vouched(
            False, Lease(lambda: self._released.append("principal"))))


def test_an_answer_whose_callbacks_are_running_is_awaited() -> None:
    """
    A Deferred that has fired is not finished while its callbacks run: its
    result is then what the running callback was given.  Admission must
    wait for the end of the chain.  Reading the result at once (a fast
    path tried during #16, caught by an independent review) took the
    ``Claimed`` for the ``Vouched``: 503, and the principal's place was
    never given back.
    """
    released: list[str] = []
    gate = ChainGate(released)
    s = session(make_policy(Clock(), gate=gate))
    s.write(upgrade_request())
    gate.chain.callback(Claimed(Lease(lambda: released.append("client"))))
    assert s.status == 101
    s.protocol.connectionLost(Failure(ConnectionDone()))
    assert sorted(released) == ["client", "principal"]
