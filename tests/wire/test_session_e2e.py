"""
In-session defences end to end: the installed securews serving real TLS on
loopback in its own process, attacked by ``websockets`` clients and by raw
clients that write frames (and TLS records) by hand.

The server is ``SecureServerFactory(load_config(toml), authenticator=
AnonymousAuthenticator())`` run by a small launcher script: ``twistd
securews`` cannot combine ``--config`` (needed for the limits) with
anonymous access (``--dev`` only), and a separate process is what lets
``/proc/<pid>/status`` measure the server alone.  The launcher runs from a
scratch directory with ``PYTHONPATH`` removed, so it imports the installed
copy of securews (checked at start).

Memory: before an attack the peak-RSS counter is reset (``echo 5 >
/proc/<pid>/clear_refs``, Linux >= 4.0) and ``VmRSS`` read; after it the
growth is ``VmHWM - VmRSS_before``: the highest the server's resident
memory went during the attack above where it started
(:func:`processes.peak_rss`).  Kernel socket buffers are not part of RSS.

Timers: the heartbeat, idle and lifetime checks run on the reactor's
``callLater`` and are exact; the opening-handshake and close-handshake
timeouts are Autobahn's, on txaio's batched timer, which truncates the
deadline to a whole second, so they fire up to 1 s *early* (see
``test_handshake_timeout_is_not_cut_short``, an expected failure).

Every attack runs while a well-behaved client (:class:`Bystander`) echoes
a message every 0.25 s on its own session, and must still be served after.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import trustme
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.bystander import Bystander
from tests.support.common import CertFiles, websocket_client_tls, write_cert
from tests.support.processes import clean_env, peak_rss, toml
from tests.support.rawclient import (
    CONTINUATION,
    PING,
    TEXT,
    RawClient,
    frame,
    upgrade_request,
)

KiB, MiB = 2**10, 2**20

# -- the settings under test ------------------------------------------------------

MAX_MESSAGE = 1 * MiB
MAX_FRAME = 256 * KiB
MAX_FRAGMENTS = 16
HANDSHAKE_TIMEOUT = 2.0
CLOSE_TIMEOUT = 1.0
IDLE_TIMEOUT = 3.0
PING_INTERVAL = 1.0
PING_TIMEOUT = 1.0
MAX_WRITE_BUFFER = 1 * MiB
MESSAGES_PER_SECOND, MESSAGE_BURST = 20.0, 40
BYTES_PER_SECOND, BYTES_BURST = 64.0 * KiB, MAX_MESSAGE
MAX_JSON_DEPTH = 8

#: The issue's bound on what one attacking connection may add to the server.
RSS_BOUND = 2 * MAX_MESSAGE + 10 * MiB
#: A non-reading client: the server queues at most max_write_buffer plus the
#: one message whose send crossed it, and holds the message being echoed; the
#: TLS layer and Twisted's write path each keep a transient copy of what they
#: pass on (TLS records, the joined send buffer).  Hence twice both, plus the
#: same 10 MiB of slack.
SLOW_READER_RSS_BOUND = 2 * (MAX_WRITE_BUFFER + MAX_MESSAGE) + 10 * MiB

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "pad": {}},
    "required": ["n"],
    "additionalProperties": False,
}

BASE: dict[str, dict[str, object]] = {
    "server": {"listen": "tcp:0:interface=127.0.0.1"},
    "log": {"format": "text", "file": "-"},
    "limits": {
        "max_message_size": MAX_MESSAGE, "max_frame_size": MAX_FRAME,
        "max_fragments": MAX_FRAGMENTS, "compression": True,
        "handshake_timeout": HANDSHAKE_TIMEOUT, "close_timeout": CLOSE_TIMEOUT,
        "idle_timeout": IDLE_TIMEOUT, "ping_interval": PING_INTERVAL,
        "ping_timeout": PING_TIMEOUT, "max_write_buffer": MAX_WRITE_BUFFER,
    },
    "origin": {"allow_missing": True},
    # Ignored: the launcher passes its own (anonymous) authenticator.
    "auth": {"methods": []},
    "ratelimit": {
        "connections_per_ip": 100, "connect_rate": 1000.0, "connect_burst": 1000,
        "messages_per_second": MESSAGES_PER_SECOND, "message_burst": MESSAGE_BURST,
        "bytes_per_second": BYTES_PER_SECOND, "bytes_burst": BYTES_BURST,
    },
    "messages": {"allow_binary": False, "format": "json",
                 "max_json_depth": MAX_JSON_DEPTH},
}

#: For the non-reading client: throttling and validation out of the way, so
#: only max_write_buffer can stop it.
FLOOD = {
    "ratelimit": {"messages_per_second": 1e6, "message_burst": 10_000_000,
                  "bytes_per_second": float(2**34), "bytes_burst": 2**34},
    "messages": {"allow_binary": True, "format": "any"},
}

LAUNCHER = '''\
import sys

from twisted.internet import reactor
from twisted.logger import globalLogBeginner

import securews
from securews.auth.anonymous import AnonymousAuthenticator
from securews.wire.listening import server_endpoint
from securews.ops.logs import make_observer

config = securews.load_config(sys.argv[1])
factory = securews.SecureServerFactory(
    config, authenticator=AnonymousAuthenticator(), reactor=reactor)
globalLogBeginner.beginLoggingTo([make_observer(config.log)])
d = server_endpoint(reactor, config.server.listen).listen(
    securews.listening_factory(factory))
d.addCallback(lambda port: print(
    f"e2e listening on port {port.getHost().port} with {securews.__file__}",
    flush=True))
d.addErrback(lambda failure: (print(failure, flush=True), reactor.stop()))
reactor.run()
'''


def merged(*layers: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    result: dict[str, dict[str, object]] = {}
    for layer in layers:
        for name, values in layer.items():
            result[name] = {**result.get(name, {}), **values}
    return result


# -- the server process -----------------------------------------------------------


class Server:
    """The launcher running securews in a child process (own process group)."""

    def __init__(self, directory: Path, sections: dict[str, dict[str, object]],
                 ca_cert: Path) -> None:
        self.ca_cert = ca_cert
        (directory / "launch.py").write_text(LAUNCHER)
        config = directory / "securews.toml"
        config.write_text(toml(sections))
        self.output = directory / "server.out"
        with open(self.output, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(directory / "launch.py"), str(config)],
                cwd=directory, env=clean_env(), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while not (found := re.search(r"e2e listening on port (\d+) with (\S+)",
                                      self.log())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start:\n{self.log()}")
            time.sleep(0.05)
        self.port = int(found.group(1))
        self.pid = self.process.pid
        assert "site-packages" in found.group(2), "not the installed securews"
        self.url = f"wss://127.0.0.1:{self.port}/ws"

    def log(self) -> str:
        return self.output.read_text()

    def wait_for_log(self, needle: str, since: int, timeout: float = 5) -> None:
        """``needle`` appears in the log after offset ``since``."""
        deadline = time.monotonic() + timeout
        while needle not in self.log()[since:]:
            assert time.monotonic() < deadline, \
                f"{needle!r} not logged:\n{self.log()[since:]}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return write_cert(ca, tmp_path_factory.mktemp("tls"))


def launch(tmp_path_factory: pytest.TempPathFactory, certs: CertFiles,
           *layers: dict[str, dict[str, object]]) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("server")
    schema = directory / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    sections = merged(
        BASE, {"tls": {"cert": str(certs.cert), "key": str(certs.key)}},
        {"messages": {"schema": str(schema)}}, *layers)
    if sections["messages"]["format"] != "json":
        sections["messages"]["schema"] = ""
    server = Server(directory, sections, certs.ca_cert)
    try:
        yield server
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           tls_files: CertFiles) -> Iterator[Server]:
    """The settings above, JSON with a schema, compression on, binary refused."""
    yield from launch(tmp_path_factory, tls_files)


@pytest.fixture(scope="module")
def flood_server(tmp_path_factory: pytest.TempPathFactory,
                 tls_files: CertFiles) -> Iterator[Server]:
    """The same limits, without throttling or message validation."""
    yield from launch(tmp_path_factory, tls_files, FLOOD)


# -- measuring ----------------------------------------------------------------------


def context(server: Server) -> ssl.SSLContext:
    return websocket_client_tls(server.ca_cert)


def open_client(server: Server, **kw: object) -> ClientConnection:
    return connect(server.url, ssl=context(server), max_size=None,  # type: ignore[arg-type]
                   open_timeout=5, ping_interval=None, **kw)


@contextmanager
def bystander(server: Server, compression: str | None = None) -> Iterator[Bystander]:
    """A well-behaved session that must be served all through the block and after."""
    with open_client(server, compression=compression) as ws:
        if compression:
            assert [e.name for e in ws.protocol.extensions] == [
                "permessage-deflate"]
        client = Bystander(ws, period=0.25, message=lambda n: json.dumps({"n": n}))
        try:
            yield client
            client.finish()
        finally:
            client.stop()


# -- a hand-driven client -----------------------------------------------------------


class Raw(RawClient):
    """A hand-driven TLS client of ``server``."""

    def __init__(self, server: Server, rcvbuf: int | None = None) -> None:
        super().__init__(server.port, context(server), rcvbuf=rcvbuf)

    def upgrade(self, extensions: str | None = None) -> bytes:
        """TLS and the WebSocket opening handshake; the 101 response head."""
        headers = {"Sec-WebSocket-Extensions": extensions} if extensions else {}
        response = self.request(upgrade_request(headers=headers))
        assert response.status == 101, response.head
        return response.head


@pytest.fixture
def raw_clients() -> Iterator[list[Raw]]:
    clients: list[Raw] = []
    yield clients
    for client in clients:
        client.close()


def raw(clients: list[Raw], server: Server, **kw: int) -> Raw:
    client = Raw(server, **kw)
    clients.append(client)
    return client


def closed_by(server: Server, since: int, category: str, code: int | None) -> None:
    """The server logged closing a session for ``category`` with ``code``."""
    server.wait_for_log(f"session closed by server ({category}, code {code})", since)


# -- sizes ----------------------------------------------------------------------------

JUNK = os.urandom(64 * KiB)


@pytest.mark.parametrize("announced", [MAX_FRAME + 1, 2**40],
                         ids=["just-over-frame-limit", "one-TiB"])
def test_oversize_frame_header_closes_1009(
    server: Server, raw_clients: list[Raw], announced: int
) -> None:
    """A frame header announcing more than max_frame_size: 1009, nothing buffered."""
    # MAX_FRAME + 1 fits max_message_size: only the frame limit can apply.
    with bystander(server), \
            peak_rss(server.pid, f"frame announcing {announced}") as peak:
        client = raw(raw_clients, server)
        client.upgrade()
        client.send(frame(length=announced))
        deadline = time.monotonic() + 5
        while client.close_frame() is None and time.monotonic() < deadline:
            client.pump(0.1)
        assert client.close_frame() is not None, "no verdict on the header alone"
        # The verdict came from the header alone; now push payload anyway,
        # up to 64 MiB, for as long as the server keeps the connection.
        client.stream(itertools.repeat(JUNK, 1024))
        client.wait_closed(CLOSE_TIMEOUT + 2)
    code, _ = client.close_frame() or (None, "")
    assert code == 1009
    assert peak.growth < RSS_BOUND


def test_oversize_fragmented_message_closes_1009(
    server: Server, raw_clients: list[Raw]
) -> None:
    """Fragments each within max_frame_size, together over max_message_size: 1009."""
    size = 250_000  # 5 x 250 kB > 1 MiB, in 5 of at most 16 fragments
    assert size <= MAX_FRAME
    assert 5 * size > MAX_MESSAGE
    fragments = [frame(b"a" * size, TEXT if i == 0 else CONTINUATION, fin=i == 4)
                 for i in range(5)]
    with bystander(server), peak_rss(server.pid, "fragmented 1.25 MB message") as peak:
        client = raw(raw_clients, server)
        client.upgrade()
        client.stream(fragments)
        client.wait_closed(CLOSE_TIMEOUT + 2)
    code, _ = client.close_frame() or (None, "")
    assert code == 1009
    assert peak.growth < RSS_BOUND


def test_many_tiny_fragments_close_1009(server: Server, raw_clients: list[Raw]) -> None:
    """One message in more than max_fragments frames: 1009 "too many fragments"."""
    count = 20_000
    fragments = [frame(b"[", TEXT, fin=False)] + [
        frame(b" ", CONTINUATION, fin=False) for _ in range(count)]
    since = len(server.log())
    with bystander(server), peak_rss(server.pid, f"{count} tiny fragments") as peak:
        client = raw(raw_clients, server)
        client.upgrade()
        client.stream(fragments)
        client.wait_closed(CLOSE_TIMEOUT + 2)
    assert client.close_frame() == (1009, "too many fragments")
    closed_by(server, since, "fragments", 1009)
    assert peak.growth < RSS_BOUND


# A raw-deflate stream (window 2**12, as the server asks) of 200 MiB of zeros:
# one flushed segment of 1 MiB of zeros, repeated.  About 200 kB.
_deflate = zlib.compressobj(9, zlib.DEFLATED, -12)
BOMB_SEGMENT = _deflate.compress(bytes(MiB)) + _deflate.flush(zlib.Z_FULL_FLUSH)
BOMB = BOMB_SEGMENT * 200


def test_decompression_bomb_closes_1009(
    server: Server, raw_clients: list[Raw]
) -> None:
    """200 MiB deflated into a 200 kB frame: 1009, inflating at most the limit."""
    assert zlib.decompressobj(-12).decompress(BOMB_SEGMENT) == bytes(MiB)
    assert len(BOMB) < MAX_FRAME  # so only the inflated size can be too big
    with bystander(server, compression="deflate"), \
            peak_rss(server.pid, "200 MiB deflate bomb") as peak:
        client = raw(raw_clients, server)
        head = client.upgrade("permessage-deflate; client_max_window_bits")
        assert b"permessage-deflate" in head
        assert b"client_max_window_bits=12" in head
        client.stream([frame(BOMB, TEXT, fin=False, rsv1=True),
                       frame(BOMB, CONTINUATION)])
        client.wait_closed(CLOSE_TIMEOUT + 2)
    # A corrupt deflate stream would be 1007: 1009 is the inflated size.
    code, _ = client.close_frame() or (None, "")
    assert code == 1009
    assert peak.growth < RSS_BOUND


# -- rates ----------------------------------------------------------------------------


def flood(server: Server, message: str, count: int) -> tuple[int, int, float]:
    """
    Send ``count`` copies of ``message`` as fast as possible, then read
    until the server closes: the echoes received, the close code, and the
    seconds the session lasted.
    """
    echoes = 0
    with open_client(server) as ws:
        began = time.monotonic()
        with suppress(ConnectionClosed):
            for _ in range(count):
                ws.send(message)
        while True:
            try:
                got = ws.recv(timeout=10)
            except ConnectionClosed as e:
                closed = e
                break
            assert got == message
            echoes += 1
    lasted = time.monotonic() - began
    assert closed.rcvd is not None
    return echoes, closed.rcvd.code, lasted


def test_message_rate_flood_closes_1008(server: Server) -> None:
    """Tiny messages faster than messages_per_second past the burst: 1008."""
    since = len(server.log())
    with bystander(server):
        echoes, code, lasted = flood(server, '{"n": 1}', 10 * MESSAGE_BURST)
    assert code == 1008
    # Exactly the burst plus what the bucket refilled was admitted.
    assert MESSAGE_BURST <= echoes <= MESSAGE_BURST + MESSAGES_PER_SECOND * lasted + 1
    closed_by(server, since, "rate_limited", 1008)


def test_byte_rate_flood_closes_1008(server: Server) -> None:
    """Few large messages faster than bytes_per_second past the burst: 1008."""
    message = json.dumps({"n": 1, "pad": "x" * 199_981})
    assert len(message) == 200_000
    count = 10  # well under message_burst: only the byte bucket can run dry
    since = len(server.log())
    with bystander(server):
        echoes, code, lasted = flood(server, message, count)
    assert code == 1008
    admitted = (BYTES_BURST + BYTES_PER_SECOND * lasted) // len(message)
    assert BYTES_BURST // len(message) <= echoes <= admitted < count
    closed_by(server, since, "rate_limited", 1008)


# -- time -----------------------------------------------------------------------------


def test_peer_that_never_answers_is_dropped(
    server: Server, raw_clients: list[Raw]
) -> None:
    """Silent after a ping: TCP dropped at ping_interval + ping_timeout, no close."""
    since = len(server.log())
    with bystander(server):
        client = raw(raw_clients, server)
        client.upgrade()
        # Only reads from now on: the server sees no WebSocket traffic at all.
        lasted = client.wait_closed(PING_INTERVAL + PING_TIMEOUT + 3) - client.opened_at
    print(f"\nsilent peer dropped {lasted:.2f} s after the upgrade")
    assert PING in [opcode for opcode, _ in client.frames()]
    assert client.close_frame() is None
    assert PING_INTERVAL + PING_TIMEOUT - 0.25 <= lasted <= (
        PING_INTERVAL + PING_TIMEOUT + 1)
    closed_by(server, since, "dead_peer", None)


def test_idle_session_closes_1000_at_idle_timeout(server: Server) -> None:
    """A client that answers pings but sends no message: 1000 at idle_timeout."""
    with bystander(server), open_client(server) as ws:
        began = time.monotonic()
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=IDLE_TIMEOUT + 3)
        lasted = time.monotonic() - began
    print(f"\nidle session closed after {lasted:.2f} s")
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1000, "idle timeout")
    assert IDLE_TIMEOUT - 0.25 <= lasted <= IDLE_TIMEOUT + 1


REQUEST = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def test_byte_a_second_request_is_dropped_at_handshake_timeout(
    server: Server, raw_clients: list[Raw]
) -> None:
    """A request head sent one byte a second is dropped, unanswered, in time."""
    with bystander(server):
        client = raw(raw_clients, server)
        client.start_tls()
        sent = 0
        while not client.closed and sent < len(REQUEST):
            try:
                client.send(REQUEST[sent:sent + 1])
            except OSError:
                break
            sent += 1
            second = time.monotonic() + 1
            while not client.closed and time.monotonic() < second:
                client.pump(second - time.monotonic())
        lasted = client.wait_closed(HANDSHAKE_TIMEOUT + 2) - client.started
    print(f"\nbyte-a-second client dropped after {lasted:.2f} s, {sent} bytes")
    assert 1 <= sent < len(REQUEST)
    assert client.received == b""
    # Autobahn's timer fires up to 1 s early (txaio truncates to a second).
    assert HANDSHAKE_TIMEOUT - 1 <= lasted <= HANDSHAKE_TIMEOUT + 1


@pytest.mark.parametrize("hello", ["none", "half"])
def test_stalled_tls_handshake_is_dropped_at_handshake_timeout(
    server: Server, raw_clients: list[Raw], hello: str
) -> None:
    """TCP without TLS, or half a ClientHello: dropped at handshake_timeout."""
    with bystander(server):
        client = raw(raw_clients, server)
        if hello == "half":
            record = client.client_hello()
            client.sock.sendall(record[:len(record) // 2])
        lasted = client.wait_closed(HANDSHAKE_TIMEOUT + 2) - client.started
    print(f"\nstalled TLS ({hello}) dropped after {lasted:.2f} s")
    assert HANDSHAKE_TIMEOUT - 1 <= lasted <= HANDSHAKE_TIMEOUT + 1


def test_handshake_timeout_is_not_cut_short(
    server: Server, raw_clients: list[Raw]
) -> None:
    """A client connecting late in a second still gets the whole handshake_timeout."""
    time.sleep((0.6 - time.time() % 1) % 1)
    client = raw(raw_clients, server)
    lasted = client.wait_closed(HANDSHAKE_TIMEOUT + 2) - client.started
    print(f"\nconnected at .6 s, dropped after {lasted:.2f} s")
    assert lasted >= HANDSHAKE_TIMEOUT - 0.1


# -- slow consumers -------------------------------------------------------------------


def test_non_reading_client_is_dropped_past_max_write_buffer(
    flood_server: Server, raw_clients: list[Raw]
) -> None:
    """Echo requests from a client that never reads: dropped, server memory bounded."""
    server = flood_server
    message = frame(b"a" * (64 * KiB))
    since = len(server.log())
    with bystander(server), peak_rss(server.pid, "non-reading client") as peak:
        client = raw(raw_clients, server, rcvbuf=64 * KiB)
        client.upgrade()
        began = time.monotonic()
        sent = client.stream(itertools.repeat(message, 1024), read=False)
        lasted = time.monotonic() - began
        client.wait_closed(5)
    print(f"non-reading client: sent {sent / MiB:.1f} MiB in {lasted:.2f} s")
    assert sent < 1024 * len(message), "64 MiB echoed to a client not reading"
    closed_by(server, since, "slow_consumer", 1008)
    assert peak.growth < SLOW_READER_RSS_BOUND


# -- validation -----------------------------------------------------------------------

#: Accepted, and as deep as allowed.
DEEPEST = '{"n": 0, "pad": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (
    MAX_JSON_DEPTH - 1) + "}"

INVALID: dict[str, tuple[str | bytes, bool, int, str | None]] = {
    # message, sent as text, close code, log category
    "bad UTF-8": (b'{"n": 1, "pad": "\xc3\x28"}', True, 1007, None),
    "bad JSON": ('{"n": 1,', True, 1007, "bad_json"),
    "too deep": ('{"n": 1, "pad": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
                 + "}", True, 1007, "too_deep"),
    "schema": ('{"n": "one"}', True, 1007, "schema"),
    "binary": (b'{"n": 1}', False, 1003, "binary"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_message_closes_session(server: Server, case: str) -> None:
    """A message that fails validation closes with 1007 (1003 for binary)."""
    payload, text, expected, category = INVALID[case]
    since = len(server.log())
    with bystander(server), open_client(server) as ws:
        ws.send(DEEPEST)
        assert ws.recv(timeout=5) == DEEPEST
        ws.send(payload, text=text)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == expected
    if category is not None:
        closed_by(server, since, category, expected)
