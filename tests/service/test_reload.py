"""
Certificate reload: :meth:`ServerTLSContext.reload`, the SIGHUP service,
and renewal over real TLS on loopback while a session stays open.

A renewal is simulated the way certbot or an ACME client does it: the
certificate and key files the settings name are replaced by a new
certificate from the same CA, with a different serial and common name.
The in-process tests serve with the reactor and run blocking clients in
threads; one test sends a real SIGHUP to a ``twistd`` child (see
``test_systemd.launched``).
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor as global_reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, LogLevel, formatEvent

from securews.rules.config import ConfigError, TLSSettings
from securews.service.reload import CertificateReloadService, reload_certificate
from securews.testing import make_config
from securews.wire.factory import SecureServerFactory
from securews.wire.listening import listening_factory
from securews.wire.tls import ServerTLSContext, server_context
from tests.service.test_systemd import Client, launched
from tests.support.common import CertFiles, write_cert

NOW = datetime.datetime.now(datetime.UTC)
TIMEOUT = 5.0


# -- certificate files ---------------------------------------------------------


@attrs.frozen
class Renewal:
    """
    The files a server was started with, and a renewed certificate.

    :ivar original: the DER of the certificate first in ``live``.
    """

    live: CertFiles
    renewed: CertFiles
    original: bytes

    def install(self, source: CertFiles | None = None) -> None:
        """Replace the live certificate and key (by rename, as ACME clients do)."""
        source = self.renewed if source is None else source
        for new, live in ((source.cert, self.live.cert), (source.key, self.live.key)):
            staged = live.with_suffix(".new")
            shutil.copyfile(new, staged)
            os.replace(staged, live)


@pytest.fixture
def renewal(ca: trustme.CA, tmp_path: Path) -> Renewal:
    live = write_cert(ca, tmp_path / "live")
    renewed = write_cert(ca, tmp_path / "renewed", "localhost", "127.0.0.1", "::1",
                         common_name="renewed.example")
    return Renewal(live, renewed, der(live.cert))


def der(path: Path) -> bytes:
    """The DER form of the first certificate in ``path``."""
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        Encoding.DER)


def settings_for(files: CertFiles) -> TLSSettings:
    return TLSSettings(cert=str(files.cert), key=str(files.key))


def served_der(context: ServerTLSContext) -> bytes:
    """The certificate a new connection from ``context`` presents."""
    cert = context.serverConnectionForTLS(None).get_certificate()  # type: ignore[arg-type]
    assert cert is not None
    return cert.to_cryptography().public_bytes(Encoding.DER)


def reload_messages(events: list[LogEvent]) -> list[tuple[LogLevel, str]]:
    return [(e["log_level"], formatEvent(e)) for e in events
            if e.get("log_namespace") == "securews.reload"]


# -- ServerTLSContext.reload ---------------------------------------------------


def test_reload_serves_the_new_files_to_new_connections_only(
    renewal: Renewal
) -> None:
    """After reload, new connections get the new certificate; made ones keep theirs."""
    context = server_context(settings_for(renewal.live), now=NOW)
    before = context.serverConnectionForTLS(None)  # type: ignore[arg-type]
    renewal.install()
    context.reload(NOW)
    assert served_der(context) == der(renewal.renewed.cert)
    assert context.credentials.leaf.public_bytes(Encoding.DER) == der(
        renewal.renewed.cert)
    old = before.get_certificate()
    assert old is not None
    assert old.to_cryptography().public_bytes(Encoding.DER) == renewal.original


def _garbage_cert(renewal: Renewal) -> None:
    renewal.live.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")


def _new_cert_old_key(renewal: Renewal) -> None:
    shutil.copyfile(renewal.renewed.cert, renewal.live.cert)


def _expired(renewal: Renewal) -> None:
    expired = write_cert(renewal.live.ca, renewal.live.cert.parent.parent / "old",
                         not_after=datetime.datetime(2020, 1, 1))
    renewal.install(expired)


def _key_missing(renewal: Renewal) -> None:
    renewal.install()
    renewal.live.key.unlink()


BROKEN = {
    "garbage certificate": (_garbage_cert, "tls.cert", "holds no PEM certificate"),
    "new certificate, old key": (_new_cert_old_key, "tls.key", "does not match"),
    "expired certificate": (_expired, "tls.cert", "expired on 2020-01-01"),
    "key file missing": (_key_missing, "tls.key", "No such file"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_refused_reload_keeps_the_previous_certificate(
    renewal: Renewal, case: str
) -> None:
    """Each broken renewal raises ConfigError; new connections keep the old one."""
    breaks, key, words = BROKEN[case]
    context = server_context(settings_for(renewal.live), now=NOW)
    credentials = context.credentials
    breaks(renewal)
    with pytest.raises(ConfigError) as refused:
        context.reload(NOW)
    assert refused.value.key == key
    assert words in str(refused.value)
    assert context.credentials is credentials
    assert served_der(context) == credentials.leaf.public_bytes(Encoding.DER)


def test_reload_logs_the_new_expiry(renewal: Renewal, events: list[LogEvent]) -> None:
    """A reload logs one INFO line with the new serial and expiry date."""
    context = server_context(settings_for(renewal.live), now=NOW)
    renewal.install()
    assert reload_certificate(context, NOW)
    leaf = context.credentials.leaf
    ((level, text),) = reload_messages(events)
    assert level == LogLevel.info
    assert "certificate reloaded" in text
    assert f"{leaf.serial_number:x}" in text
    assert f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC" in text


def test_refused_reload_logs_one_error_line_without_key_material(
    renewal: Renewal, events: list[LogEvent]
) -> None:
    """A mismatched key is one ERROR line naming the files, never the key's bytes."""
    context = server_context(settings_for(renewal.live), now=NOW)
    _new_cert_old_key(renewal)
    assert not reload_certificate(context, NOW)
    ((level, text),) = reload_messages(events)
    assert level == LogLevel.error
    assert "\n" not in text
    assert "reload refused" in text
    assert "does not match" in text
    assert str(renewal.live.key) in text
    key_lines = renewal.live.key.read_text().splitlines()[1:-1]
    assert key_lines
    assert not any(line in text for line in key_lines)


# -- SIGHUP ---------------------------------------------------------------------


@pytest.fixture
def restore_sighup() -> Iterator[None]:
    """
    Ignore SIGHUP during the test (so a handler that is not installed
    fails the test rather than ending pytest), then put back the one the
    test run had.
    """
    saved = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGHUP, saved)


def test_reload_service_restores_the_previous_handler(
    renewal: Renewal, restore_sighup: None
) -> None:
    """startService takes SIGHUP; stopService gives back the handler it found."""

    def previous(signum: int, frame: Any) -> None:
        raise AssertionError("called")

    signal.signal(signal.SIGHUP, previous)
    context = server_context(settings_for(renewal.live), now=NOW)
    service = CertificateReloadService(global_reactor, context)
    service.startService()
    assert signal.getsignal(signal.SIGHUP) not in (previous, signal.SIG_DFL)
    service.stopService()
    assert signal.getsignal(signal.SIGHUP) is previous


def test_reload_service_without_tls_survives_sighup(
    events: list[LogEvent]
) -> None:
    """With TLS disabled there is nothing to reload; SIGHUP is logged, not fatal."""
    service = CertificateReloadService(global_reactor, None)
    assert not service.reload()
    ((level, text),) = reload_messages(events)
    assert level == LogLevel.info
    assert "TLS is disabled" in text


async def _until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Let the reactor run until ``condition()`` holds, within ``timeout``."""
    waited = 0.0
    while not condition():
        assert waited < timeout
        await deferLater(global_reactor, 0.02, lambda: None)
        waited += 0.02


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_on_the_reactor(
    renewal: Renewal, restore_sighup: None, events: list[LogEvent]
) -> None:
    """A real SIGHUP to this process makes the running service reload."""
    context = server_context(settings_for(renewal.live), now=NOW)
    service = CertificateReloadService(global_reactor, context)
    service.startService()
    try:
        renewal.install()
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: bool(reload_messages(events)))
    finally:
        service.stopService()
    assert served_der(context) == der(renewal.renewed.cert)
    assert reload_messages(events)[0][0] == LogLevel.info


# -- renewal over TLS, a session staying open ------------------------------------


@attrs.define
class Reloadable:
    """A dev-mode echo server on loopback and its reload service."""

    port: int
    service: CertificateReloadService
    ca_cert: Path

    def client(self) -> Client:
        """A connected client (blocking: call it in a thread)."""
        return Client(self.port, self.ca_cert, TIMEOUT)


@pytest_twisted.async_yield_fixture
async def serve_reloadable() -> AsyncIterator[Callable[..., Any]]:
    """
    ``await serve_reloadable(ca_cert, cert=..., key=..., chain=...)``
    serves those files with a context the reload service holds; closed
    at teardown.
    """
    running: list[tuple[Any, SecureServerFactory]] = []

    async def start(ca_cert: Path, **tls: str) -> Reloadable:
        config = make_config(tls=tls, dev=True)
        factory = SecureServerFactory(config, reactor=global_reactor)
        context = server_context(config.tls)
        endpoint = TCP4ServerEndpoint(global_reactor, 0, interface="127.0.0.1")
        port = await endpoint.listen(listening_factory(factory, context))
        running.append((port, factory))
        service = CertificateReloadService(global_reactor, context)
        return Reloadable(port.getHost().port, service, ca_cert)

    yield start
    for port, factory in running:
        await port.stopListening()
        await factory.shutdown(grace=0)


@pytest_twisted.async_yield_fixture
async def reloadable(renewal: Renewal,
                     serve_reloadable: Any) -> AsyncIterator[Reloadable]:
    """Serve ``renewal.live`` with a context the reload service holds."""
    yield await serve_reloadable(renewal.live.ca_cert, cert=str(renewal.live.cert),
                                 key=str(renewal.live.key))


@pytest_twisted.ensureDeferred
async def test_renewed_certificate_reaches_new_clients_while_old_session_lives(
    reloadable: Reloadable, renewal: Renewal
) -> None:
    """After a reload client B sees the renewed certificate; client A still echoes."""
    with await deferToThread(reloadable.client) as a:
        assert a.peer_der == renewal.original
        assert await deferToThread(a.echo, "before") == "before"
        renewal.install()
        assert reloadable.service.reload()

        def client_b() -> bytes:
            with reloadable.client() as b:
                assert b.echo("b") == "b"
                return b.peer_der

        assert await deferToThread(client_b) == der(renewal.renewed.cert)
        assert await deferToThread(a.echo, "after") == "after"
        assert a.peer_der == renewal.original


@pytest_twisted.ensureDeferred
async def test_broken_renewal_is_refused_and_the_last_good_certificate_serves(
    reloadable: Reloadable, renewal: Renewal, events: list[LogEvent]
) -> None:
    """A garbage certificate after a good renewal: ERROR, and the renewed one serves."""
    with await deferToThread(reloadable.client) as a:
        renewal.install()
        assert reloadable.service.reload()
        _garbage_cert(renewal)
        assert not reloadable.service.reload()
        errors = [text for level, text in reload_messages(events)
                  if level == LogLevel.error]
        assert len(errors) == 1
        assert "tls.cert" in errors[0]

        def client_c() -> bytes:
            with reloadable.client() as c:
                assert c.echo("c") == "c"
                return c.peer_der

        assert await deferToThread(client_c) == der(renewal.renewed.cert)
        assert await deferToThread(a.echo, "still here") == "still here"


@pytest_twisted.ensureDeferred
async def test_reload_reads_the_chain_file_too(
    ca: trustme.CA, tmp_path: Path, serve_reloadable: Any
) -> None:
    """A renewal from a new intermediate verifies once the reload re-reads tls.chain."""
    live = write_cert(ca, tmp_path / "live")
    live.chain.write_bytes(ca.cert_pem.bytes())  # any first chain
    server = await serve_reloadable(live.ca_cert, cert=str(live.cert),
                                    key=str(live.key), chain=str(live.chain))
    intermediate = ca.create_child_ca()
    renewed = write_cert(intermediate, tmp_path / "renewed")
    Renewal(live, renewed, b"").install()
    live.chain.write_bytes(intermediate.cert_pem.bytes())
    assert server.service.reload()

    def client() -> bytes:
        with server.client() as ws:
            return ws.peer_der

    assert await deferToThread(client) == der(renewed.cert)


# -- a real SIGHUP to a twistd server ---------------------------------------------


def test_sighup_to_twistd_swaps_certificate_and_refuses_a_broken_one(
    tmp_path: Path, renewal: Renewal
) -> None:
    """twistd child: SIGHUP renews for new clients, keeps A open, refuses garbage."""
    with launched(tmp_path / "server", renewal.live) as server:
        server.wait_for_datagram("READY=1")

        def client() -> Client:
            return Client(server.port, renewal.live.ca_cert, TIMEOUT)

        with client() as a:
            assert a.peer_der == renewal.original
            renewal.install()
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for_log("certificate reloaded")
            with client() as b:
                assert b.peer_der == der(renewal.renewed.cert)
                assert b.echo("b") == "b"
            assert a.echo("a") == "a"

            _garbage_cert(renewal)
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for_log("certificate reload refused")
            with client() as c:
                assert c.peer_der == der(renewal.renewed.cert)
            assert a.echo("a again") == "a again"
        assert server.proc.poll() is None
        assert "Traceback" not in server.output()
