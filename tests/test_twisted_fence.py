"""
securews/_twisted.py: every private name of Twisted and pyOpenSSL is
listed there, checked at import, touched nowhere else, and each override
is really called by the Twisted installed.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from zope.interface import providedBy

from securews import _twisted
from securews.rules.settings import TLSSettings
from securews.wire.tls import server_context
from tests.support.common import EACH_VERSION, CertFiles, write_cert
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


class MemoryTLS:
    """A TLS client over memory BIOs on a real socket, so that a test
    decides which records go out in which TCP segment."""

    def __init__(self, sock: socket.socket, cafile: str) -> None:
        context = ssl.create_default_context(cafile=cafile)
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(self.outgoing.read())
                self.incoming.write(sock.recv(65536))
        self.send()

    def send(self) -> None:
        """Everything written so far, in one ``sendall``."""
        self.sock.sendall(self.outgoing.read())


def one_byte_records(port: int, cafile: str, payload: bytes) -> None:
    """TLS, then ``payload`` as one record per byte, written in one go."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client = MemoryTLS(sock, cafile)
        for byte in payload:
            client.tls.write(bytes([byte]))
        client.send()
        with contextlib.suppress(ConnectionResetError):  # the test closes with
            sock.recv(1)  # bytes unread, which the kernel may answer with RST


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


class Echo(Protocol):
    """Echoes each delivery; fires ``done`` after ``wanted`` bytes."""

    def __init__(self, done: Deferred[None], wanted: int) -> None:
        self.done = done
        self.wanted = wanted
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]
        self.received += len(data)
        if self.received >= self.wanted and not self.done.called:
            self.done.callback(None)


def ping_pong(port: int, cafile: str, messages: list[bytes]) -> list[bytes]:
    """Over TLS, send each message and wait for its echo, then for two
    more bytes; what came back."""
    context = ssl.create_default_context(cafile=cafile)
    echoes = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        for message in messages:
            sock.sendall(message)
            echo = b""
            while len(echo) < len(message):
                echo += sock.recv(65536)
            echoes.append(echo)
        last = b""
        while len(last) < 2:  # the server's two writes outside a read
            last += sock.recv(65536)
        echoes.append(last)
    return echoes


@pytest_twisted.ensureDeferred
async def test_writes_go_straight_to_the_socket_at_the_end_of_the_iteration(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    An echo over TLS: what each read writes is sent at the end of the
    reactor iteration by the shared flusher, through the ``_flushSendBIO``
    override, straight to the socket (the TCP transport never queues it
    nor watches for writability).  Writes made outside a read wait for the
    same flusher, joined into one.
    """
    calls: dict[str, int] = {"flush": 0, "queued": 0, "timer": 0}
    flush_send = _twisted.SecureTLSTransport._flushSendBIO
    queue = tcp.Server.write
    timer = _twisted._Flusher.run

    def flush_spy(self: Any) -> None:
        calls["flush"] += 1
        flush_send(self)

    def queue_spy(self: Any, data: bytes) -> None:
        calls["queued"] += 1
        queue(self, data)

    def timer_spy(self: Any) -> None:
        calls["timer"] += 1
        timer(self)

    monkeypatch.setattr(_twisted.SecureTLSTransport, "_flushSendBIO", flush_spy)
    monkeypatch.setattr(tcp.Server, "write", queue_spy)
    monkeypatch.setattr(_twisted._Flusher, "run", timer_spy)
    messages = [bytes([65 + i % 26]) * (1 + i) for i in range(50)]
    done: Deferred[None] = Deferred()
    echo = Echo(done, sum(map(len, messages)))
    context = server_context(TLSSettings(cert=str(certs.cert), key=str(certs.key)))
    factory = _twisted.SecureTLSFactory(context, False,
                                        Factory.forProtocol(lambda: echo))
    port = await TCP4ServerEndpoint(global_reactor, 0,
                                    interface="127.0.0.1").listen(factory)
    result: list[list[bytes]] = []
    thread = threading.Thread(target=lambda: result.append(ping_pong(
        port.getHost().port, str(certs.ca_cert), messages)))
    thread.start()
    try:
        await done
        await deferLater(global_reactor, 0)  # the last echo is sent
        assert calls["queued"] == 0
        assert calls["flush"] >= len(messages)
        assert calls["timer"] >= len(messages)  # one round trip per iteration
        tls = next(iter(factory.protocols))
        assert isinstance(tls._aggregator, _twisted._Aggregator)
        before = calls["timer"]
        tls.write(b"a")
        tls.write(b"b")
        assert _twisted.queued_bytes(tls) == 2
        await deferLater(global_reactor, 0)
        assert calls["timer"] == before + 1
        assert _twisted.queued_bytes(tls) == 0
    finally:
        for connection in list(factory.protocols):
            connection.transport.loseConnection()
        await port.stopListening()
        thread.join(10)
    assert result == [[*messages, b"ab"]]


def test_one_timer_sends_every_connections_writes_in_order() -> None:
    """
    However many connections write in one reactor iteration, one
    ``callLater(0)`` sends them all, each connection's writes joined in
    the order written; more than 64,000 bytes go at once; a failing
    connection does not keep the others' writes.
    """
    from twisted.internet.task import Clock

    clock = Clock()
    sent: list[tuple[int, bytes]] = []

    def writer(i: int) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            if i == 1:
                raise RuntimeError("this connection's TLS failed")
            sent.append((i, data))
        return write

    aggregators = [_twisted._Aggregator(writer(i), clock) for i in range(100)]
    for round_ in range(2):
        for i, aggregator in enumerate(aggregators):
            aggregator.write(b"%d-%d;" % (i, round_))
    assert len(clock.getDelayedCalls()) == 1
    assert sent == []
    clock.advance(0)
    assert sent == [(i, b"%d-0;%d-1;" % (i, i)) for i in range(100) if i != 1]
    assert clock.getDelayedCalls() == []
    sent.clear()
    aggregators[0].write(b"x" * 64_001)
    assert sent == [(0, b"x" * 64_001)]
    assert clock.getDelayedCalls() == []


def test_a_cancelled_flusher_timer_is_replaced() -> None:
    """Somebody else cancelling the shared timer (a test's clean-up, say)
    loses no write and stops no later one."""
    from twisted.internet.task import Clock

    clock = Clock()
    sent: list[bytes] = []
    first = _twisted._Aggregator(sent.append, clock)
    second = _twisted._Aggregator(sent.append, clock)
    first.write(b"a")
    for call in clock.getDelayedCalls():
        call.cancel()
    second.write(b"b")
    clock.advance(0)
    assert sent == [b"a", b"b"]
    assert clock.getDelayedCalls() == []


def test_what_stops_a_run_leaves_the_rest_queued() -> None:
    """A ``BaseException`` out of one connection's flush stops the run; the
    connections it did not reach are sent by the next one."""
    from twisted.internet.task import Clock

    clock = Clock()
    sent: list[bytes] = []

    def interrupted(data: bytes) -> None:
        raise KeyboardInterrupt

    aggregators = [_twisted._Aggregator(interrupted, clock)] + [
        _twisted._Aggregator(sent.append, clock) for _ in range(3)]
    for i, aggregator in enumerate(aggregators):
        aggregator.write(b"%d" % i)
    with pytest.raises(KeyboardInterrupt):
        clock.advance(0)
    clock.advance(0)
    assert sent == [b"1", b"2", b"3"]
    assert [a.queued for a in aggregators] == [False] * 4


def test_a_connection_whose_writes_raise_is_aborted() -> None:
    """Its stream would have a gap: it is aborted, as a write raising in
    ``doRead`` would have dropped it, and the others are sent."""
    from twisted.internet.task import Clock

    clock = Clock()
    sent: list[bytes] = []
    aborted: list[int] = []

    def broken(data: bytes) -> None:
        raise RuntimeError("this connection's TLS failed")

    bad = _twisted._Aggregator(broken, clock, lambda: aborted.append(1))
    good = _twisted._Aggregator(sent.append, clock, lambda: aborted.append(2))
    bad.write(b"x")
    good.write(b"y")
    clock.advance(0)
    assert aborted == [1]
    assert sent == [b"y"]


def test_the_flusher_keeps_no_reactor_alive() -> None:
    """The shared flusher holds its reactor weakly; a reactor that cannot
    be referenced weakly gets a flusher per connection."""
    import gc
    import weakref

    from twisted.internet.task import Clock

    clock = Clock()
    aggregator = _twisted._Aggregator(lambda data: None, clock)
    gone = weakref.ref(clock)
    del clock, aggregator
    gc.collect()
    assert gone() is None

    class SlotClock:
        __slots__ = ("clock",)

        def __init__(self) -> None:
            self.clock = Clock()

        def callLater(self, delay: float, f: Any) -> Any:
            return self.clock.callLater(delay, f)

    slotted = SlotClock()
    sent: list[bytes] = []
    lone = _twisted._Aggregator(sent.append, slotted)  # type: ignore[arg-type]
    lone.write(b"z")
    slotted.clock.advance(0)
    assert sent == [b"z"]


def test_twisted_uses_the_aggregator_only_as_securews_provides() -> None:
    """Twisted's TLS transport calls ``write``, ``flush`` and ``close`` on
    its aggregator, which :class:`_Aggregator` implements; a new call (a
    flush in ``unregisterProducer``, say) must be looked at first."""
    import twisted.protocols.tls as tls_module

    source = _twisted._source(tls_module.__name__)
    used = set(re.findall(r"self\._aggregator\.(\w+)", source))
    assert used == {"write", "flush", "close"}
    assert all(callable(getattr(_twisted._Aggregator, name)) for name in used)


async def client_in_thread(port: Any, client: Callable[[], bytes]) -> list[bytes]:
    """Run a blocking ``client`` in a thread while the reactor serves; stop
    listening on ``port`` once it is done.  ``[what it returned]``, or
    ``[]`` if it raised."""
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(client()))
    thread.start()
    try:
        while thread.is_alive():
            await deferLater(global_reactor, 0.01)
    finally:
        await port.stopListening()
        thread.join(10)
    return result


def close_notify_after(port: int, cafile: str, message: bytes) -> bytes:
    """Send ``message`` and TLS close_notify in one TCP segment; what the
    server sent back before closing."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client = MemoryTLS(sock, cafile)
        client.tls.write(message)
        with contextlib.suppress(ssl.SSLWantReadError):
            client.tls.unwrap()
        client.send()
        while chunk := sock.recv(65536):
            client.incoming.write(chunk)
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                while data := client.tls.read(65536):
                    got += data
    return got


@pytest_twisted.ensureDeferred
async def test_what_data_before_close_notify_makes_the_server_write_is_sent(
    certs: CertFiles,
) -> None:
    """Data and the peer's close_notify in one read: the echo goes out
    before TLS shuts down (Twisted's own aggregator drops it)."""

    class Reply(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[union-attr]

    context = server_context(TLSSettings(cert=str(certs.cert), key=str(certs.key)))
    factory = _twisted.SecureTLSFactory(context, False, Factory.forProtocol(Reply))
    port = await TCP4ServerEndpoint(global_reactor, 0,
                                    interface="127.0.0.1").listen(factory)
    result = await client_in_thread(port, lambda: close_notify_after(
        port.getHost().port, str(certs.ca_cert), b"hello"))
    assert result == [b"hello"]


def test_bytes_queued_before_the_first_do_write_are_counted() -> None:
    """
    A TCP transport whose every write so far went straight to the socket
    has never run Twisted's doWrite: what it queues next waits in its
    second buffer only, and is counted all the same (a peer that never
    reads must still meet ``max_write_buffer``).
    """
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.testing import MemoryReactor

    descriptor = FileDescriptor(reactor=MemoryReactor())
    descriptor.connected = True
    descriptor.write(b"x" * 1000)
    descriptor.write(b"y" * 24)
    assert "dataBuffer" not in vars(descriptor)
    assert _twisted.queued_bytes(descriptor) == 1024


class LastWords(Protocol):
    """On its first delivery, writes ``writes`` and loses the connection."""

    def __init__(self, writes: list[bytes], sends: list[int]) -> None:
        self.writes = writes
        self.sends = sends

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.sends.clear()  # count the sends from here on
        for chunk in self.writes:
            self.transport.write(chunk)
        self.transport.loseConnection()


def until_close_notify(port: int, cafile: str) -> bytes:
    """Send a byte; everything the server sends back, which must end with
    its close_notify (a bare TCP close raises)."""
    context = ssl.create_default_context(cafile=cafile)
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost",
                                suppress_ragged_eofs=False) as sock:
        sock.sendall(b"!")
        while chunk := sock.recv(65536):
            got += chunk
    return got


@pytest.mark.parametrize(("writes", "sends"), [
    ([b"bye"], 1),
    ([bytes([65 + i]) * 20_000 for i in range(3)], 1),
    ([b"x" * 70_000], None),  # over the aggregator's 64,000: sent as written
], ids=["small", "60000", "70000"])
@pytest_twisted.ensureDeferred
async def test_the_last_writes_and_close_notify_go_in_one_send(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch, writes: list[bytes],
    sends: int | None,
) -> None:
    """
    What a connection writes before it loses the connection (a close
    frame, an HTTP answer) leaves with TLS's close_notify in one send:
    Twisted's transport sends them apart.  Every byte arrives, then the
    close_notify.
    """
    calls: list[int] = []
    send_now = _twisted.send_now

    def spy(transport: Any, data: bytes) -> None:
        calls.append(len(data))
        send_now(transport, data)

    monkeypatch.setattr(_twisted, "send_now", spy)
    context = server_context(TLSSettings(cert=str(certs.cert), key=str(certs.key)))
    factory = _twisted.SecureTLSFactory(
        context, False, Factory.forProtocol(lambda: LastWords(writes, calls)))
    port = await TCP4ServerEndpoint(global_reactor, 0,
                                    interface="127.0.0.1").listen(factory)
    result = await client_in_thread(port, lambda: until_close_notify(
        port.getHost().port, str(certs.ca_cert)))
    assert result == [b"".join(writes)]
    if sends is not None:
        assert len(calls) == sends, calls


class MemoryPair:
    """
    A :class:`~securews._twisted.SecureTLSTransport` over a
    ``StringTransport`` and an ``ssl`` client over memory BIOs: the test
    decides exactly which bytes each ``dataReceived`` brings.
    """

    def __init__(self, certs: CertFiles, version: ssl.TLSVersion) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        self.deliveries: list[bytes] = []
        context = server_context(TLSSettings(cert=str(certs.cert), key=str(certs.key)))
        pair = self

        class Collect(Protocol):
            def dataReceived(self, data: bytes) -> None:
                pair.deliveries.append(data)

        factory = _twisted.SecureTLSFactory(context, False,
                                            Factory.forProtocol(Collect))
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.server = factory.buildProtocol(address)
        self.wire = StringTransport(peerAddress=address)
        self.server.makeConnection(self.wire)
        client_context = ssl.create_default_context(cafile=str(certs.ca_cert))
        client_context.minimum_version = client_context.maximum_version = version
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_context.wrap_bio(self.incoming, self.outgoing,
                                              server_hostname="localhost")
        for _ in range(10):
            try:
                self.client.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.exchange()
        else:
            pytest.fail("the TLS handshake did not complete")
        self.exchange()  # the client's last flight, the server's tickets

    def exchange(self) -> None:
        """What the client wrote to the server; what it answered back."""
        if written := self.outgoing.read():
            self.server.dataReceived(written)
        self.incoming.write(self.wire.value())
        self.wire.clear()

    def records(self, *payloads: bytes) -> bytes:
        """The client's records for ``payloads``, one each."""
        for payload in payloads:
            self.client.write(payload)
        return self.outgoing.read()


class Asked:
    """Counts pyOpenSSL calls and the ``WantReadError`` each raised."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        from OpenSSL import SSL

        self.calls = self.empty = 0
        original = getattr(SSL.Connection, name)

        def spy(connection: SSL.Connection, size: int) -> bytes:
            self.calls += 1
            try:
                result: bytes = original(connection, size)
            except SSL.WantReadError:
                self.empty += 1
                raise
            return result

        monkeypatch.setattr(SSL.Connection, name, spy)


@EACH_VERSION
def test_a_read_of_whole_records_asks_openssl_nothing_more(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch, version: ssl.TLSVersion
) -> None:
    """
    Three whole records in one read: three ``recv`` calls, one delivery,
    and no ``WantReadError`` from either BIO (pyOpenSSL's only way of
    saying a BIO is empty, about 1.7 µs each, twice per small message
    with Twisted's transport).  A record cut by the read is delivered
    when its end comes, nothing held back meanwhile.
    """
    pair = MemoryPair(certs, version)
    received, sent = Asked(monkeypatch, "recv"), Asked(monkeypatch, "bio_read")
    pair.server.dataReceived(pair.records(b"one", b"two", b"three"))
    assert pair.deliveries == [b"onetwothree"]
    assert (received.calls, received.empty, sent.calls) == (3, 0, 0)

    split = pair.records(b"four", b"five")
    cut = len(split) - 5
    pair.server.dataReceived(split[:cut])
    assert pair.deliveries[1:] == [b"four"]
    assert (received.calls, received.empty) == (5, 1)  # the cut record: 1 more
    pair.server.dataReceived(split[cut:])
    assert pair.deliveries[1:] == [b"four", b"five"]
    assert (received.calls, received.empty, sent.calls) == (6, 1, 0)
    assert pair.wire.value() == b""


@EACH_VERSION
def test_a_handshake_flight_over_32_kib_goes_out_whole(
    certs: CertFiles, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """
    A certificate of 46 KB (700 names): the server's whole first flight
    leaves at once.  Twisted's transport sends 32 KiB per flush and the
    rest only when the client next sends something, which it never does
    before the flight is whole (twisted/twisted#5095).
    """
    names = [f"host-{i:03d}.an-example-long-domain-name.example" for i in range(700)]
    big = write_cert(certs.ca, tmp_path, "localhost", *names)
    assert big.cert.stat().st_size > 40_000
    pair = MemoryPair(big, version)
    pair.server.dataReceived(pair.records(b"hello"))
    assert pair.deliveries == [b"hello"]


@EACH_VERSION
def test_what_tls_writes_while_reading_is_sent(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch, version: ssl.TLSVersion
) -> None:
    """
    The outgoing BIO is read when it holds something: the server's
    close_notify, written as it reads the client's, goes out at once.
    """
    pair = MemoryPair(certs, version)
    sent = Asked(monkeypatch, "bio_read")
    with contextlib.suppress(ssl.SSLWantReadError):
        pair.client.unwrap()
    pair.server.dataReceived(pair.outgoing.read())
    assert (sent.calls, sent.empty) == (1, 0)
    pair.incoming.write(pair.wire.value())
    pair.client.unwrap()  # raises unless the server's close_notify came


def test_twisteds_make_connection_is_the_one_copied() -> None:
    """
    :meth:`SecureTLSTransport.makeConnection` does Twisted's steps itself
    only while the installed Twisted's method is the one it copied; this
    fails when an upgrade changes it, so that the copy is reviewed (the
    server meanwhile runs Twisted's own method, below).
    """
    assert _twisted.COPIED_MAKE_CONNECTION


_COPY = _twisted._TWISTEDS_MAKE_CONNECTION
_LAST = "    self._checkHandshakeStatus()\n"
#: The copy with another name, annotations, a docstring, comments and
#: indentation.
_REWORDED = ('def connect(self: Any, transport: Any) -> None:\n'
             '        """Reworded."""\n'
             + "".join(f"    {line}  # a comment\n"
                       for line in _COPY.strip().splitlines()[1:]))
#: Changes made of the names the method already uses.
_CHANGED = (
    _COPY.replace(_LAST, "    " + _LAST),
    _COPY + "    self.factory.registerProtocol(self)\n",
    _COPY.replace("if self._connectWrapped", "if not self._connectWrapped"),
)


def test_the_comparison_ignores_comments_and_layout_not_statements() -> None:
    """The installed method is compared with the copy as syntax: comments,
    docstring, layout and annotations may differ; a statement moved, added
    or changed, even one made of the same names, may not."""
    assert _twisted._syntax(_REWORDED) == _twisted._syntax(_COPY)
    for changed in _CHANGED:
        assert changed != _COPY
        assert _twisted._syntax(changed) != _twisted._syntax(_COPY)


def _no_source(self: Any, transport: Any) -> None:
    pass


_no_source.__code__ = _no_source.__code__.replace(co_firstlineno=10**6)


@pytest.mark.parametrize("method", [lambda self, transport: None, _no_source, print],
                         ids=["a-lambda", "no-source", "a-builtin"])
def test_a_make_connection_that_cannot_be_compared_is_not_the_copy(
    monkeypatch: pytest.MonkeyPatch, method: Callable[..., Any]
) -> None:
    """A method whose source cannot be read as one function means
    Twisted's method is used, never an error at import."""
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    monkeypatch.setattr(TLSMemoryBIOProtocol, "makeConnection", method)
    assert _twisted._is_copied() is False


@pytest.mark.parametrize("copied", [True, False], ids=["copied", "twisted's"])
def test_the_tls_transport_provides_the_tcp_transports_interfaces(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch, copied: bool
) -> None:
    """
    The TLS transport declares every interface of the transport beneath,
    as Twisted's does, with two ``directlyProvides`` calls instead of one
    per interface and then one for all; with a Twisted whose method
    changed, Twisted's own runs, and the connection works either way.
    """
    from twisted.protocols import policies, tls
    from zope.interface import providedBy

    monkeypatch.setattr(_twisted, "COPIED_MAKE_CONNECTION", copied)
    calls: list[str] = []
    for module in (tls, policies, _twisted):
        original = module.directlyProvides  # type: ignore[attr-defined]

        def spy(obj: object, *interfaces: Any, _name: str = module.__name__,
                _original: Any = original) -> None:
            calls.append(_name)
            _original(obj, *interfaces)

        monkeypatch.setattr(module, "directlyProvides", spy)
    pair = MemoryPair(certs, ssl.TLSVersion.TLSv1_3)
    beneath = list(providedBy(pair.wire))
    assert len(beneath) > 2
    assert set(beneath) <= set(providedBy(pair.server))
    twisteds_loop = calls.count("twisted.protocols.tls")
    assert (twisteds_loop, len(calls)) == ((0, 2) if copied
                                           else (len(beneath), len(beneath) + 1))
    pair.server.dataReceived(pair.records(b"hello"))
    assert pair.deliveries == [b"hello"]


@pytest.mark.parametrize("connect_wrapped", [True, False],
                         ids=["connected", "deferred"])
def test_the_copy_takes_twisteds_steps_in_twisteds_order(
    certs: CertFiles, monkeypatch: pytest.MonkeyPatch, connect_wrapped: bool
) -> None:
    """
    The same steps in the same order as Twisted's method, the handshake
    started last; a transport that does not connect its protocol at once
    gets Twisted's method itself.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.protocols import tls

    context = server_context(TLSSettings(cert=str(certs.cert), key=str(certs.key)))
    steps: list[str] = []

    class Wrapped(Protocol):
        def connectionMade(self) -> None:
            steps.append("wrapped connected")

    def spy(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def step(*args: Any, **kwargs: Any) -> Any:
            steps.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, step)

    spy(_twisted.SecureTLSFactory, "registerProtocol")
    spy(_twisted.SecureTLSTransport, "_checkHandshakeStatus")
    spy(tls, "directlyProvides")
    spy(_twisted, "directlyProvides")
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    runs = []
    for copied in (True, False):
        monkeypatch.setattr(_twisted, "COPIED_MAKE_CONNECTION", copied)
        factory = _twisted.SecureTLSFactory(context, False,
                                            Factory.forProtocol(Wrapped))
        spy(factory, "_creatorCallable")
        del steps[:]
        transport = _twisted.SecureTLSTransport(factory, Wrapped(), connect_wrapped)
        transport.makeConnection(StringTransport(peerAddress=address))
        runs.append([s for s in steps if s != "directlyProvides"])
        provides = steps.count("directlyProvides")
        if copied and connect_wrapped:
            assert provides == 1  # ProtocolWrapper's own call is not spied on
        else:
            assert provides == len(list(providedBy(StringTransport())))
    assert runs[0] == runs[1]
    assert runs[0] == ["_creatorCallable", "registerProtocol",
                       *(["registerProtocol", "wrapped connected"] if connect_wrapped
                         else []),
                       "_checkHandshakeStatus"]
