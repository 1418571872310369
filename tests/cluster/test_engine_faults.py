"""
The engine client and the engine-backed stores when the engine answers
but must not be used (a read-only replica, out of memory, an eviction
policy set while running), what the engine holds in clear, and how an
engine failure during a ticket handshake is answered.  In-process, on
real ``redis-server`` processes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogEvent

from securews.auth.interfaces import Principal
from securews.auth.tickets import TicketAuthenticator
from securews.cluster.engine import EngineUnavailable
from securews.cluster.places import LeaseBook, RedisGate
from securews.cluster.tickets import RedisTicketStore
from securews.policy import build_policy
from securews.testing import ORIGIN, MemorySession, make_config, upgrade_request
from securews.wire.factory import SecureServerFactory
from securews.wire.protocol import SecureServerProtocol
from tests.cluster.engines import make_engine, started
from tests.support.processes import free_port
from tests.support.redis import RedisServer, running_redis

TLS = {"cert": "/unused/cert.pem", "key": "/unused/key.pem"}


def engine_errors(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == "securews.cluster"
            and e.get("log_level") is not None and e["log_level"].name == "error"]


@pytest_twisted.ensureDeferred
async def test_an_engine_that_refuses_every_write_counts_as_down(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    """
    The engine becomes a read-only replica (a failover demoting it) or
    refuses writes (OOM under noeviction): every handshake is 503, the
    engine counts as down (``/readyz`` 503, so the load balancer sends
    clients elsewhere), the connection is given up (a new one finds the
    new primary), and the outage is one log line, not one per request.
    """
    with running_redis(tmp_path / "redis") as server:
        engine = await started(make_engine(server))
        gate = RedisGate(LeaseBook(engine), per_client=5, per_principal=5,
                         rate=100, burst=100)
        try:
            server.command("REPLICAOF", "127.0.0.1", str(free_port()))
            for _ in range(5):
                with pytest.raises(EngineUnavailable):
                    await gate.claim("203.0.113.0/24", rate=True)
            errors = engine_errors(events)
            assert not engine.up, "a read-only engine still counts as up (ready)"
            assert len(errors) <= 1, f"{len(errors)} error lines for one outage"
        finally:
            await engine.stop()


@pytest_twisted.ensureDeferred
async def test_an_eviction_policy_set_after_start_is_noticed(tmp_path: Path) -> None:
    """
    ``CONFIG SET maxmemory-policy allkeys-lru`` on the running engine (an
    operator "fixing" memory pressure): :meth:`Engine.check_policy` (which
    the node runs with every renewal, ``tests/cluster/test_outages.py``)
    takes the engine down; new connections are refused until the policy is
    set back, then the engine is up again by itself.
    """
    with running_redis(tmp_path / "redis") as server:
        engine = await started(make_engine(server, lease=2.0))
        try:
            await engine.check_policy()
            assert engine.up
            server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
            await engine.check_policy()
            assert not engine.up
            assert engine.misconfigured is not None
            assert "allkeys-lru" in engine.misconfigured
            with pytest.raises(EngineUnavailable):
                await engine.call("PING")
            server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
            deadline = reactor.seconds() + 5  # type: ignore[attr-defined]
            while not engine.up and reactor.seconds() < deadline:  # type: ignore[attr-defined]
                await deferLater(reactor, 0.1)  # type: ignore[arg-type]
            assert engine.up
            assert engine.misconfigured is None
        finally:
            await engine.stop()


def _everything_under(server: RedisServer, prefix: str) -> bytes:
    """Every key under ``prefix`` and every value it holds, as one blob."""
    blob = []
    for key in server.scan(prefix + "*"):
        blob.append(key)
        kind = server.command("TYPE", key)
        if kind == "hash":
            blob += server.command("HGETALL", key)
        elif kind == "string":
            blob.append(server.command("GET", key))
        elif kind == "zset":
            blob += server.command("ZRANGE", key, 0, -1)
        elif kind == "stream":
            blob.append(repr(server.command("XRANGE", key, "-", "+")).encode())
    return b"\n".join(blob)


@pytest_twisted.ensureDeferred
async def test_a_ticket_keeps_no_principal_id_or_token_id_in_clear(
    redis_server: RedisServer
) -> None:
    """
    A minted ticket's record carries its credential (the principal and
    every claim) for the node that redeems it: sealed under a key derived
    from the ticket itself, which the engine never holds.  Anyone reading
    the engine (a replica, an RDB/AOF file, a backup, MONITOR) finds no
    principal id, token id or claim in clear.
    """
    engine = await started(make_engine(redis_server))
    try:
        store = RedisTicketStore(engine, ttl=30, max_outstanding=5, bind_ip=True)
        principal = Principal(
            "alice@corp.example", "jwt",
            claims={"sub": "alice@corp.example", "jti": "jti-5f1c0e9a7b",
                    "email": "alice@corp.example", "iat": int(time.time())},
            expires_at=time.time() + 600)
        await store.issue(principal, ORIGIN, "203.0.113.5")
        held = _everything_under(redis_server, engine.keys.prefix)
        assert b"jti-5f1c0e9a7b" not in held, "a token id in clear"
        assert b"alice@corp.example" not in held, "a principal id in clear"
    finally:
        await engine.stop()


def test_an_engine_failure_redeeming_a_ticket_is_503_not_500(
    redis_server: RedisServer, events: list[LogEvent]
) -> None:
    """
    The engine is down when a ticket is redeemed: the handshake is 503
    with ``Retry-After`` (the client retries), as for any admission step
    on the engine, not 500 ``auth_error`` with an error line per request.
    """
    down = make_engine(redis_server)  # never started: calls fail at once
    store = RedisTicketStore(down, ttl=30, max_outstanding=5, bind_ip=True)
    clock = Clock()
    policy = build_policy(
        make_config(tls=TLS, origin={"allowed": [ORIGIN]}), clock,
        authenticator=TicketAuthenticator(store, clock=clock))
    factory = SecureServerFactory(policy=policy, protocol=SecureServerProtocol,
                                  reactor=clock)
    session = MemorySession(factory)
    session.write(upgrade_request("/ws?ticket=" + "A" * 43))
    assert session.status == 503, f"answered {session.status}"
    assert session.response is not None
    assert session.response.header("Retry-After")
