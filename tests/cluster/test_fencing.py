"""
Self-fencing: a node cut off from its engine closes its sessions *before*
its places lapse there, so the other nodes never under-count (README:
"closes its own sessions with 1013 ... before they would lapse").

A real :class:`Engine` and :class:`ClusterNode` on a ``task.Clock``, the
engine behind an endpoint that never answers (a stalled engine, as under
SIGSTOP): the first call waits for its deadline, the next fail at once.
No process, no network.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from zope.interface import implementer

from securews.auth.interfaces import Principal
from securews.cluster.engine import Engine
from securews.cluster.places import Renewed
from securews.policy._sessions import FENCED, SessionIndex
from securews.rules.codes import Close
from securews.service.cluster import ClusterNode
from securews.testing import make_config

TLS = {"cert": "/unused/cert.pem", "key": "/unused/key.pem"}


@implementer(IStreamClientEndpoint)
class Unanswered:
    """An engine that accepts nothing and refuses nothing."""

    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred()


class Recorded:
    """An open session: when it was told to close, and how."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.closed_at: float | None = None
        self.close: Close | None = None

    def end_session(self, close: Close) -> None:
        if self.closed_at is None:
            self.closed_at = self.clock.seconds()
            self.close = close


class FakePolicy:
    def __init__(self) -> None:
        self.sessions = SessionIndex()


def running_node(clock: Clock, *, lease: float, timeout: float,
                 sessions: int = 300) -> tuple[ClusterNode, list[Recorded]]:
    """A node whose last renewal was written at the clock's now, whose
    engine has just stalled, holding ``sessions`` open sessions."""
    config = make_config(tls=TLS, cluster={
        "redis_url": "redis://127.0.0.1:6379/0", "lease": lease, "timeout": timeout})
    engine = Engine(config.cluster, clock, node="node-a", endpoint=Unanswered())
    engine.up = True  # it was, until now
    engine.epoch = "e1"
    node = ClusterNode(config, clock, engine=engine)
    policy = FakePolicy()
    node.serve(policy)  # type: ignore[arg-type]
    opened = [Recorded(clock) for _ in range(sessions)]
    for i, session in enumerate(opened):
        policy.sessions.opened(session, Principal(f"user-{i}", "jwt"))
    Service.startService(node)  # running, without connecting anything
    node._written(clock.seconds())
    node._schedule_renewal()
    return node, opened


def run(clock: Clock, seconds: float, step: float = 0.01) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


@pytest.mark.parametrize(("lease", "timeout"), [(2.0, 0.25), (10.0, 1.0)])
def test_fenced_sessions_are_closed_before_the_nodes_places_lapse(
    lease: float, timeout: float
) -> None:
    """
    The places this node renewed at t=0 lapse in the engine at t=lease at
    the latest: every session has been told to close before then, whatever
    the engine deadline (a first renewal against a stalled engine waits
    for it), with a lease of 2 s as with 10 s.
    """
    clock = Clock()
    _node, sessions = running_node(clock, lease=lease, timeout=timeout)
    run(clock, 2 * lease)
    closes = [s.closed_at for s in sessions]
    assert all(t is not None for t in closes), "some sessions were never fenced"
    assert all(s.close == FENCED for s in sessions)
    latest = max(t for t in closes if t is not None)
    assert latest < lease, (
        f"the last session was closed at {latest:.2f} s, its place lapsed "
        f"at {lease:.2f} s")


def test_a_node_frozen_past_its_lease_does_not_keep_its_sessions_on_resume() -> None:
    """
    The node's process is frozen for longer than a lease (SIGSTOP, a VM
    paused or migrated): its places lapsed in the engine and other nodes
    may have admitted into them.  On resume its sessions are closed before
    anything is written again; a renewal that comes after the lease ran
    out is never taken for one in time.
    """
    clock = Clock()
    node, sessions = running_node(clock, lease=10.0, timeout=0.25)
    node.book.renew = lambda **kwargs: succeed(Renewed("e1"))  # type: ignore[method-assign]
    run(clock, 4.0)  # renewals go well
    assert not any(s.closed_at for s in sessions)
    clock.advance(30.0)  # frozen for three leases; resumes, renews at once
    run(clock, 5.0)
    assert all(s.closed_at is not None for s in sessions), (
        "the node's places lapsed while it was frozen, yet all its sessions "
        "go on after it resumed")
