"""Shared fixtures: trustme certificates and a loopback securews server."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

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

from securews.factory import SecureServerFactory
from securews.listening import listening_factory

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


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine without the tool; fail under CI, which
    installs it (a skipped check must not pass for a green run)."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def websocket_client_tls(cafile: object) -> ssl.SSLContext:
    """
    A TLS context for the ``websockets`` sync client, capped at TLS 1.2.

    That client reads in a background thread while its main thread writes
    the upgrade request; under TLS 1.3 the reader handles the server's
    session tickets at the same moment on the same SSL object, which
    Python's ssl module does not make safe, and about one connection in a
    few hundred stalls.  TLS 1.3 itself is tested with single-threaded
    clients in test_tls.py and test_proxy_protocol.py.
    """
    context = ssl.create_default_context(cafile=str(cafile))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


@attrs.frozen
class CertFiles:
    """PEM files for a server certificate issued by ``ca``."""

    ca: trustme.CA
    ca_cert: Path
    cert: Path
    key: Path
    chain: Path


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def write_cert(ca: trustme.CA, directory: Path, *names: str,
               **issue: Any) -> CertFiles:
    """Issue a leaf for ``names`` and write leaf, key, chain and CA files."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*(names or ("localhost", "127.0.0.1", "::1")), **issue)
    ca_cert = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_cert))
    cert = directory / "cert.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    key = directory / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    chain = directory / "fullchain.pem"
    chain.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    return CertFiles(ca, ca_cert, cert, key, chain)


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
    port; at teardown every listener is closed and every connection
    dropped, so no test leaks into the next.
    """
    ports: list[Any] = []
    factories: list[SecureServerFactory] = []

    def start(factory: SecureServerFactory) -> Any:
        endpoint = TCP4ServerEndpoint(global_reactor, 0, interface="127.0.0.1")
        factories.append(factory)
        d = endpoint.listen(listening_factory(factory))

        def listening(port: Any) -> RunningServer:
            ports.append(port)
            return RunningServer(factory, port)

        return d.addCallback(listening)

    yield start
    for port in ports:
        await port.stopListening()
    for factory in factories:
        await factory.shutdown(grace=0)
