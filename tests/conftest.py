"""Shared fixtures: trustme certificates and a loopback securews server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import trustme
import txaio
from hypothesis import HealthCheck, settings
from twisted.internet import reactor as global_reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from securews.wire.factory import SecureServerFactory
from securews.wire.listening import listening_factory
from tests.support.common import CertFiles, write_cert
from tests.support.redis import RedisServer, running_redis

# No per-example deadline (loaded CI machines), and a fixed seed under CI
# so a red run is reproducible from its log.
settings.register_profile(
    "securews", deadline=None, derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("securews")


@pytest.fixture
def clock() -> Iterator[Clock]:
    """Point Autobahn's timers (txaio's loop) at a Clock for the test."""
    clock = Clock()
    saved = txaio.config.loop
    txaio.config.loop = clock
    yield clock
    txaio.config.loop = saved


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    """Every log event emitted during the test."""
    captured: list[LogEvent] = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca: trustme.CA, tmp_path: Path) -> CertFiles:
    return write_cert(ca, tmp_path / "tls")


@attrs.define
class RunningServer:
    """A securews factory listening on loopback with real TLS."""

    factory: SecureServerFactory
    port: Any

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    def url(self, path: str | None = None) -> str:
        scheme = "wss" if self.factory.config.tls.enabled else "ws"
        path = self.factory.config.server.path if path is None else path
        return f"{scheme}://127.0.0.1:{self.port_number}{path}"


@pytest_twisted.async_yield_fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """
    ``server = await serve(factory)`` listens on 127.0.0.1 on a free
    port (``serve(factory, context=...)``: with that TLS context, kept by
    the caller, rather than one built from the factory's ``[tls]``); at
    teardown every listener is closed and every connection dropped, so no
    test leaks into the next.
    """
    ports: list[Any] = []
    factories: list[SecureServerFactory] = []

    def start(factory: SecureServerFactory, context: Any = None) -> Any:
        endpoint = TCP4ServerEndpoint(global_reactor, 0, interface="127.0.0.1")
        factories.append(factory)
        d = endpoint.listen(listening_factory(factory, context=context))

        def listening(port: Any) -> RunningServer:
            ports.append(port)
            return RunningServer(factory, port)

        return d.addCallback(listening)

    yield start
    for port in ports:
        await port.stopListening()
    for factory in factories:
        await factory.shutdown(grace=0)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the session; tests keep apart by key prefix."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
