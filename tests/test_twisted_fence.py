"""
securews/_twisted.py: every private name of Twisted and pyOpenSSL is
listed there, checked at import, touched nowhere else, and each override
is really called by the Twisted installed.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from securews import _twisted
from securews.rules.settings import TLSSettings
from securews.wire.tls import server_context
from tests.support.common import CertFiles
from tests.support.paths import REPO


def test_every_listed_name_exists_in_the_installed_versions() -> None:
    """The import-time check passes (it ran when securews was imported)."""
    assert all(_twisted._present(owner, name) for owner, name, _ in _twisted.NAMES)


def test_a_missing_name_stops_the_import_with_its_name() -> None:
    """Renamed upstream: an ImportError naming it, never a silent no-op."""
    with pytest.raises(ImportError, match=r"TLSMemoryBIOProtocol\._flushRecvBIO "
                                          r"\(batch decrypted records\)"):
        _twisted._check(((_twisted.TLSMemoryBIOProtocol, "_flushRecvBIO",
                          "batch decrypted records"),))


def test_no_other_module_touches_the_fenced_names() -> None:
    """Twisted's private names appear in securews/_twisted.py only."""
    names = {name for _, name, _ in _twisted.NAMES if name.startswith("_")}
    names |= {"_HTTP11ClientFactory", "_util"}
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b")
    offenders = [f"{path.relative_to(REPO)}: {match.group(0)}"
                 for path in (REPO / "securews").rglob("*.py")
                 if path.name != "_twisted.py"
                 for match in pattern.finditer(path.read_text())]
    assert offenders == []


class Recorder(Protocol):
    """Records each delivery and each record count the TLS layer reports."""

    def __init__(self, done: Deferred[None], wanted: int) -> None:
        self.done = done
        self.wanted = wanted
        self.deliveries: list[bytes] = []
        self.counts: list[tuple[int, int]] = []

    def tlsRecordsReceived(self, count: int, size: int) -> None:
        self.counts.append((count, size))

    def dataReceived(self, data: bytes) -> None:
        self.deliveries.append(data)
        if sum(map(len, self.deliveries)) >= self.wanted and not self.done.called:
            self.done.callback(None)


def one_byte_records(port: int, cafile: str, payload: bytes) -> None:
    """TLS, then ``payload`` as one record per byte, written in one go."""
    context = ssl.create_default_context(cafile=cafile)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        for byte in payload:
            tls.write(bytes([byte]))
        sock.sendall(outgoing.read())
        sock.recv(1)  # until the server closes


@pytest_twisted.ensureDeferred
async def test_records_of_one_read_are_delivered_once_and_counted(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A client sending 2,000 one-byte TLS records: the override runs, and the
    protocol gets a handful of deliveries (one per socket read), each told
    how many records it came in.
    """
    calls: list[int] = []
    original = _twisted.SecureTLSTransport._flushReceiveBIO

    def spy(self: Any) -> None:
        calls.append(1)
        original(self)

    monkeypatch.setattr(_twisted.SecureTLSTransport, "_flushReceiveBIO", spy)
    payload = bytes(range(256)) * 8
    done: Deferred[None] = Deferred()
    recorder = Recorder(done, len(payload))
    context = server_context(TLSSettings(cert=str(certs.cert), key=str(certs.key)))
    factory = _twisted.SecureTLSFactory(context, False,
                                        Factory.forProtocol(lambda: recorder))
    port = await TCP4ServerEndpoint(global_reactor, 0,
                                    interface="127.0.0.1").listen(factory)
    thread = threading.Thread(target=one_byte_records, args=(
        port.getHost().port, str(certs.ca_cert), payload))
    thread.start()
    try:
        await done
    finally:
        for connection in list(factory.protocols):
            connection.transport.loseConnection()
        await port.stopListening()
        thread.join(10)
    assert calls
    assert b"".join(recorder.deliveries) == payload
    assert len(recorder.deliveries) < len(payload) / 10
    assert sum(count for count, _ in recorder.counts) == len(payload)
    assert [size for _, size in recorder.counts] == list(map(len, recorder.deliveries))
