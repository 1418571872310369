"""
The engine client against real ``redis-server`` processes: verified TLS,
credentials, the checks made before a node starts, recovery.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from securews.cluster.engine import EngineUnavailable
from securews.cluster.preflight import check_engine
from securews.cluster.scripts import SCRIPTS
from securews.rules.cluster import ClusterSettings
from securews.rules.config import ConfigError
from securews.service.cluster import read_password
from tests.cluster.engines import make_engine, started
from tests.support.common import CertFiles, write_cert
from tests.support.redis import RedisServer, running_redis


@pytest.fixture
def tls_redis(tmp_path: Path,
              ca: trustme.CA) -> Iterator[tuple[RedisServer, CertFiles]]:
    certs = write_cert(ca, tmp_path / "tls")
    with running_redis(tmp_path / "redis", tls=certs) as server:
        yield server, certs


@pytest_twisted.ensureDeferred
async def test_rediss_verifies_the_engine_certificate(
    tls_redis: tuple[RedisServer, CertFiles]
) -> None:
    server, certs = tls_redis
    engine = await started(make_engine(server, url=server.tls_url(),
                                       ca_file=str(certs.ca_cert)))
    try:
        assert await engine.call("PING") == "PONG"
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_an_engine_whose_certificate_does_not_verify_is_never_used(
    tls_redis: tuple[RedisServer, CertFiles], tmp_path: Path
) -> None:
    """Another CA's certificate: no call ever reaches it, and the node's
    start is stopped by the check before it."""
    server, _ = tls_redis
    stranger = write_cert(trustme.CA(), tmp_path / "stranger")
    settings = ClusterSettings(redis_url=server.tls_url(),
                               ca_file=str(stranger.ca_cert))
    with pytest.raises(ConfigError, match="certificate does not verify"):
        check_engine(settings, None)
    engine = make_engine(server, url=server.tls_url(), ca_file=str(stranger.ca_cert))
    engine.start()
    try:
        await deferLater(reactor, 1.0)  # type: ignore[arg-type]
        assert not engine.up
        with pytest.raises(EngineUnavailable):
            await engine.call("PING")
    finally:
        await engine.stop()


def test_an_engine_that_may_evict_keys_stops_the_node(tmp_path: Path) -> None:
    with running_redis(tmp_path, policy="allkeys-lru") as server:
        settings = ClusterSettings(redis_url=server.url())
        with pytest.raises(ConfigError, match="maxmemory-policy is allkeys-lru"):
            check_engine(settings, None)


def test_an_unreachable_engine_does_not_stop_the_node() -> None:
    """It starts not ready (503 meanwhile) and connects when it can."""
    settings = ClusterSettings(redis_url="redis://127.0.0.1:9/0")
    assert check_engine(settings, None, timeout=0.5) is None


def test_the_check_reads_the_engine(redis_server: RedisServer) -> None:
    facts = check_engine(ClusterSettings(redis_url=redis_server.url()), None)
    assert facts is not None
    assert facts["maxmemory_policy"] == "noeviction"
    assert int(facts["redis_version"].split(".")[0]) >= 7


@pytest_twisted.ensureDeferred
async def test_an_acl_user_and_its_password_file(tmp_path: Path) -> None:
    """An ACL user (never the URL's password: a password in the URL is a
    configuration error) from cluster.password_file."""
    with running_redis(tmp_path / "redis") as server:
        server.command("ACL", "SETUSER", "securews", "on", ">s3cret-engine-pw",
                       "~*", "+@all")
        secret = tmp_path / "password"
        secret.write_text("s3cret-engine-pw\n")
        password = read_password(str(secret))
        assert password == "s3cret-engine-pw"
        url = f"redis://securews@127.0.0.1:{server.port}/0"
        assert check_engine(ClusterSettings(redis_url=url), password) is not None
        with pytest.raises(ConfigError, match="refused securews"):
            check_engine(ClusterSettings(redis_url=url), "wrong")
        engine = make_engine(server, url=url)
        engine._password = password  # as ClusterNode passes it
        await started(engine)
        try:
            assert await engine.call("PING") == "PONG"
        finally:
            await engine.stop()


def test_a_password_file_that_cannot_be_used(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_password(str(empty))
    with pytest.raises(ConfigError, match="cannot be read"):
        read_password(str(tmp_path / "missing"))


@pytest_twisted.ensureDeferred
async def test_flushed_scripts_are_loaded_again(redis_server: RedisServer) -> None:
    """SCRIPT FLUSH (or a restart keeping data): the call that meets it
    fails (503 for that one request), then the engine loads its scripts
    on a new connection and is back."""
    engine = await started(make_engine(redis_server))
    try:
        redis_server.command("SCRIPT", "FLUSH")
        with pytest.raises(EngineUnavailable):
            await engine.script(SCRIPTS["place_count"], ["k1", "k2"], [""])
        d: Deferred[None] = engine.when_up()
        d.addTimeout(5, reactor)
        await d
        assert await engine.script(SCRIPTS["place_count"], ["k1", "k2"], [""]) == 0
    finally:
        await engine.stop()


@pytest_twisted.ensureDeferred
async def test_a_down_engine_fails_calls_at_once(redis_server: RedisServer) -> None:
    """Once a call has failed, the next fail without waiting for the
    deadline (a flood of handshakes is answered 503 at once)."""
    engine = await started(make_engine(redis_server))
    try:
        redis_server.pause()
        try:
            with pytest.raises(EngineUnavailable):
                await engine.call("PING")
            assert not engine.up
            began = reactor.seconds()  # type: ignore[attr-defined]
            with pytest.raises(EngineUnavailable):
                await engine.call("PING")
            assert reactor.seconds() - began < engine.timeout  # type: ignore[attr-defined]
        finally:
            redis_server.resume()
        d: Deferred[None] = engine.when_up()
        d.addTimeout(5, reactor)
        await d
    finally:
        await engine.stop()
