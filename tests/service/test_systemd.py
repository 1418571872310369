"""
systemd notifications: ``NOTIFY_SOCKET`` datagrams, the watchdog, and a
server that reports READY, WATCHDOG and STOPPING to a socket the test
reads.

The end-to-end tests run the installed securews (reinstall after a
change: ``pip install --no-deps .``) under ``twistd -y`` with a small
application file, :data:`WIRED_TAC`, that wires the notifier and the
SIGHUP reload into :class:`~securews.service._service.SecureWebSocketService` the
way ``build_service`` is meant to.  Every wait is bounded; every child
process group is killed at teardown.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs
import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from securews.ops.systemd import (
    Notifier,
    WatchdogService,
    notify_address,
    watchdog_interval,
    watchdog_service,
)
from tests.support.common import CertFiles

TWISTD = str(Path(sys.executable).parent / "twistd")
DEADLINE = 20.0
#: ``struct timeval``, as SCM_TIMESTAMP carries it.
TIMEVAL = struct.Struct("@ll")
#: Linux's SO_TIMESTAMP (= SCM_TIMESTAMP; asm-generic/socket.h), which the
#: socket module does not export.
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)

#: What ``build_service`` is to do, as a twistd application file: READY=1
#: once the port listens, STOPPING=1 as the stop begins, the watchdog and
#: the SIGHUP reload as child services.
WIRED_TAC = '''
import os

from twisted.application.service import Application
from twisted.internet import reactor

from securews.auth.anonymous import AnonymousAuthenticator
from securews.rules.config import load
from securews.service.listener import ListeningService
from securews.wire.factory import SecureServerFactory
from securews.wire.listening import listening_factory, server_endpoint
from securews.service.reload import CertificateReloadService
from securews.service._service import SecureWebSocketService
from securews.ops.systemd import Notifier, watchdog_service
from securews.wire.tls import server_context

notifier = Notifier()


class NotifyingService(SecureWebSocketService):
    def _listening(self, port):
        port = super()._listening(port)
        notifier.ready()
        return port

    def stopService(self):
        notifier.stopping()
        return super().stopService()


config = load(os.environ["SECUREWS_SETTINGS"])
factory = SecureServerFactory(config, authenticator=AnonymousAuthenticator(),
                              reactor=reactor)
context = server_context(config.tls)
listener = ListeningService(
    server_endpoint(reactor, config.server.listen),
    listening_factory(factory, context))
top = NotifyingService(config, factory, listener)
CertificateReloadService(reactor, context).setServiceParent(top)
watchdog = watchdog_service(notifier, reactor)
if watchdog is not None:
    watchdog.setServiceParent(top)
application = Application("securews")
top.setServiceParent(application)
'''


# -- helpers -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def receiver_at(address: str) -> socket.socket:
    """A bound AF_UNIX datagram socket, non-blocking, that stamps arrivals."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    return sock


def arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's arrival time of a datagram (SO_TIMESTAMP), in seconds."""
    for level, kind, data in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMP):
            seconds, microseconds = TIMEVAL.unpack(data[:TIMEVAL.size])
            return float(seconds + microseconds / 1_000_000)
    raise AssertionError("datagram without SCM_TIMESTAMP")


def pending(sock: socket.socket) -> list[str]:
    """Every datagram already queued on ``sock``."""
    received = []
    while True:
        try:
            received.append(sock.recv(4096).decode())
        except BlockingIOError:
            return received


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket bound at ``tmp_path/notify``, playing systemd."""
    sock = receiver_at(str(tmp_path / "notify"))
    yield sock
    sock.close()


def warnings_in(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events
            if e.get("log_level") == LogLevel.warn
            and e.get("log_namespace") == "securews.systemd"]


# -- NOTIFY_SOCKET -------------------------------------------------------------


def test_notify_socket_path_and_abstract_name_are_unix_addresses() -> None:
    """An absolute path is used as is; ``@name`` is the abstract ``\\0name``."""
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@securews/notify") == "\0securews/notify"


@pytest.mark.parametrize("value", ["run/notify", "@", "vsock:2:1234", " /x"])
def test_other_notify_socket_forms_are_refused(value: str) -> None:
    """Relative paths, an empty abstract name and vsock addresses are refused."""
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        notify_address(value)


def test_without_notify_socket_notifications_send_nothing() -> None:
    """No NOTIFY_SOCKET: each notification is a no-op that opens no socket."""

    def no_socket(family: int, kind: int) -> socket.socket:
        raise AssertionError("a socket was opened")

    notifier = Notifier({}, socket_factory=no_socket)
    assert not notifier.enabled
    assert (notifier.ready(), notifier.watchdog(), notifier.stopping()) == (
        False, False, False)


def test_notifications_arrive_as_one_datagram_each(
    receiver: socket.socket, tmp_path: Path
) -> None:
    """READY=1, WATCHDOG=1 and STOPPING=1 each arrive as their own datagram."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert notifier.ready()
    assert notifier.watchdog()
    assert notifier.stopping()
    assert pending(receiver) == ["READY=1", "WATCHDOG=1", "STOPPING=1"]


def test_abstract_notify_socket_receives_notifications() -> None:
    """NOTIFY_SOCKET=@name reaches a socket bound in the abstract namespace."""
    name = f"securews-test-{os.getpid()}-{time.monotonic_ns()}"
    with receiver_at("\0" + name) as sock:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert pending(sock) == ["READY=1"]


def test_unsupported_notify_socket_is_a_warning_not_an_error(
    events: list[LogEvent]
) -> None:
    """A vsock NOTIFY_SOCKET logs one warning and disables notifications."""
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:9999"})
    assert not notifier.enabled
    assert not notifier.ready()
    (warning,) = warnings_in(events)
    assert "vsock:2:9999" in warning


def test_unreachable_notify_socket_is_logged_once_not_raised(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    """Sending to a missing socket returns False and warns once per outage."""
    path = tmp_path / "notify"
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert not notifier.watchdog()
    assert not notifier.watchdog()
    assert len(warnings_in(events)) == 1
    assert "WATCHDOG=1" in warnings_in(events)[0]
    with receiver_at(str(path)) as sock:
        assert notifier.watchdog()
        assert pending(sock) == ["WATCHDOG=1"]
    assert not notifier.watchdog()
    assert len(warnings_in(events)) == 2


def test_a_receiver_that_never_reads_cannot_block_the_sender(
    receiver: socket.socket, tmp_path: Path, events: list[LogEvent]
) -> None:
    """Once systemd's queue is full, notifying fails at once instead of blocking."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    outcome: list[int] = []

    def flood() -> None:
        for sent in range(100_000):
            if not notifier.watchdog():
                outcome.append(sent)
                return

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    sender.join(timeout=10)  # a blocked sendto ends when the fixture closes
    assert not sender.is_alive()
    assert outcome
    assert outcome[0] > 0
    (warning,) = warnings_in(events)
    assert "BlockingIOError" in warning


# -- the watchdog ---------------------------------------------------------------


@pytest.mark.parametrize(("environ", "interval"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid(
    environ: dict[str, str], interval: float | None
) -> None:
    """WATCHDOG_USEC/2 in seconds, unless WATCHDOG_PID names another process."""
    assert watchdog_interval(environ, 4242) == interval


@pytest.mark.parametrize("environ", [
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "-5"},
    {"WATCHDOG_USEC": "soon"},
    {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "me"},
])
def test_malformed_watchdog_variables_are_refused(environ: dict[str, str]) -> None:
    """A zero, negative or non-numeric WATCHDOG_USEC or WATCHDOG_PID is an error."""
    with pytest.raises(ValueError, match="WATCHDOG_"):
        watchdog_interval(environ, 4242)


def test_watchdog_service_pings_every_interval_until_stopped(
    receiver: socket.socket, tmp_path: Path
) -> None:
    """WATCHDOG=1 at start, then exactly at each interval, none after stop."""
    clock = Clock()
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    service = WatchdogService(notifier, 15.0, clock)
    service.startService()
    assert pending(receiver) == ["WATCHDOG=1"]
    clock.advance(14.9)
    assert pending(receiver) == []
    clock.advance(0.1)
    assert pending(receiver) == ["WATCHDOG=1"]
    clock.advance(15.0)
    assert pending(receiver) == ["WATCHDOG=1"]
    service.stopService()
    clock.advance(60)
    assert pending(receiver) == []
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "4000000"}, 2.0),
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),
    ({}, None),
])
def test_watchdog_service_follows_the_environment(
    tmp_path: Path, environ: dict[str, str], expected: float | None
) -> None:
    """A service pinging at WATCHDOG_USEC/2 is made only when asked of this pid."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    service = watchdog_service(notifier, Clock(), environ=environ, pid=4242)
    assert (service and service.interval) == expected


def test_watchdog_needs_a_notify_socket() -> None:
    """WATCHDOG_USEC without NOTIFY_SOCKET makes no watchdog service."""
    assert watchdog_service(Notifier({}), Clock(),
                            environ={"WATCHDOG_USEC": "4000000"}, pid=1) is None


def test_malformed_watchdog_usec_disables_the_watchdog_with_a_warning(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    """A bad WATCHDOG_USEC is logged and ignored rather than stopping the start."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    assert watchdog_service(notifier, Clock(), environ={"WATCHDOG_USEC": "x"},
                            pid=1) is None
    (warning,) = warnings_in(events)
    assert "WATCHDOG_USEC='x'" in warning


# -- a server under a fake systemd ---------------------------------------------


def server_env(**extra: str) -> dict[str, str]:
    """This environment minus source-tree paths and any systemd variables."""
    dropped = ("PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    env = {k: v for k, v in os.environ.items()
           if k not in dropped and not k.startswith("LISTEN_")}
    return {**env, **extra}


@attrs.define
class Launched:
    """securews under ``twistd -y`` with :data:`WIRED_TAC`, notifying ``notify``."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    notify: socket.socket
    received: list[str] = attrs.field(factory=list)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for_datagram(self, wanted: str, timeout: float = DEADLINE) -> float:
        """
        Read notifications until ``wanted`` arrives (all are kept in
        ``received``).

        :returns: when the kernel queued it (wall clock), however late it
            was read.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {wanted}: {self.received}\n{self.output()}"
            self.notify.settimeout(min(remaining, 0.2))
            try:
                data, ancillary, _, _ = self.notify.recvmsg(
                    4096, socket.CMSG_SPACE(TIMEVAL.size))
            except TimeoutError:
                continue
            finally:
                self.notify.setblocking(False)
            self.received.append(data.decode())
            if data.decode() == wanted:
                return arrival(ancillary)

    def wait_for_log(self, needle: str, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            if self.proc.poll() is not None:
                output = self.output()  # read again: it may just have exited
                assert needle in output, f"exited without {needle!r}:\n{output}"
                return
            assert time.monotonic() < deadline, (
                f"{needle!r} never logged:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM the process group; SIGKILL it after 10 seconds."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=10)


@contextlib.contextmanager
def launched(directory: Path, certs: CertFiles, *, port: int | None = None,
             env: Mapping[str, str] | None = None) -> Iterator[Launched]:
    """
    Start the wired server on ``127.0.0.1:port`` with ``NOTIFY_SOCKET``
    set to a socket in ``directory``; kill its process group on exit.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    settings = directory / "securews.toml"
    settings.write_text(
        f'[server]\nlisten = "tcp:{port}:interface=127.0.0.1"\n\n'
        f'[tls]\ncert = "{certs.cert}"\nkey = "{certs.key}"\n\n'
        '[origin]\nallow_missing = true\n\n[auth]\nmethods = []\n',
        encoding="utf-8",
    )
    tac = directory / "wired.tac"
    tac.write_text(WIRED_TAC, encoding="utf-8")
    notify_path = directory / "notify"
    log = directory / "server.log"
    with receiver_at(str(notify_path)) as notify:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [TWISTD, "--nodaemon", "--pidfile=", "--no_save", "-y", str(tac)],
                cwd=directory, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                env=server_env(NOTIFY_SOCKET=str(notify_path),
                               SECUREWS_SETTINGS=str(settings), **(env or {})),
            )
        server = Launched(proc, port, log, notify)
        try:
            yield server
        finally:
            server.stop()


class Client:
    """
    A WebSocket client on 127.0.0.1 that does all its I/O in the calling
    thread: websockets' sans-I/O protocol over a blocking ``ssl`` socket.

    The ``websockets.sync`` client, which starts reading in a background
    thread as soon as TLS is up, was seen here to leave about one
    connection in a few hundred hanging without ever sending its upgrade
    request (the server had received only the TLS handshake), reload or
    no reload; this client has no second thread.
    """

    def __init__(self, port: int, cafile: Path, timeout: float = 5.0) -> None:
        context = ssl.create_default_context(cafile=str(cafile))
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.protocol = ClientProtocol(parse_uri(f"wss://127.0.0.1:{port}/ws"))
        self._events: collections.deque[object] = collections.deque()
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        response = self._next()
        assert isinstance(response, Response), response
        assert response.status_code == 101, response

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:  # b"" only means "half-close now"
                self.sock.sendall(data)

    def _next(self) -> object:
        while not self._events:
            data = self.sock.recv(65536)
            if data:
                self.protocol.receive_data(data)
            else:
                self.protocol.receive_eof()
            self._events.extend(self.protocol.events_received())
            self._flush()  # pongs, the answer to a close frame
            if not data and not self._events:
                raise ConnectionError("the server closed the connection")
        return self._events.popleft()

    def _next_frame(self) -> Frame:
        while True:
            event = self._next()
            if isinstance(event, Frame) and event.opcode not in (Opcode.PING,
                                                                 Opcode.PONG):
                return event

    @property
    def peer_der(self) -> bytes:
        """The certificate the server presented, in DER."""
        peer = self.sock.getpeercert(binary_form=True)
        assert peer is not None
        return peer

    def echo(self, text: str) -> str:
        """Send ``text``; return the text message that comes back."""
        self.protocol.send_text(text.encode())
        self._flush()
        frame = self._next_frame()
        assert frame.opcode == Opcode.TEXT, frame
        return frame.data.decode()

    def close_code(self) -> int:
        """Wait for the server's close frame; its code."""
        frame = self._next_frame()
        assert frame.opcode == Opcode.CLOSE, frame
        assert self.protocol.close_rcvd is not None
        return self.protocol.close_rcvd.code


def test_ready_is_sent_once_the_port_accepts_connections(
    tmp_path: Path, certs: CertFiles
) -> None:
    """When READY=1 arrives, a WebSocket session works at the first attempt."""
    with launched(tmp_path, certs) as server:
        server.wait_for_datagram("READY=1")
        with Client(server.port, certs.ca_cert) as client:
            assert client.echo("ready?") == "ready?"
        assert server.received == ["READY=1"]
        assert "securews listening on" in server.output()


def test_a_server_that_cannot_listen_never_reports_ready(
    tmp_path: Path, certs: CertFiles
) -> None:
    """With its port taken, the server exits without ever sending READY=1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with launched(tmp_path, certs, port=taken.getsockname()[1]) as server:
            status = server.proc.wait(timeout=DEADLINE)
            assert status != 0, server.output()
            assert "address already in use" in server.output().lower()
            assert pending(server.notify) == []


def test_watchdog_pings_repeat_at_half_of_watchdog_usec(
    tmp_path: Path, certs: CertFiles
) -> None:
    """With WATCHDOG_USEC=400000, WATCHDOG=1 keeps arriving, 0.2 s apart."""
    with launched(tmp_path, certs, env={"WATCHDOG_USEC": "400000"}) as server:
        server.wait_for_datagram("READY=1")
        times = [server.wait_for_datagram("WATCHDOG=1") for _ in range(4)]
        assert set(server.received) == {"READY=1", "WATCHDOG=1"}
        # 0.2 s apart when they reached the socket; a LoopingCall may run
        # late, never early (some slack for the reactor's timer resolution).
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) >= 0.15, gaps


def test_sigterm_sends_stopping_then_drains_sessions(
    tmp_path: Path, certs: CertFiles
) -> None:
    """SIGTERM: STOPPING=1 arrives, open sessions get 1001, the process exits."""
    with launched(tmp_path, certs) as server:
        server.wait_for_datagram("READY=1")
        with Client(server.port, certs.ca_cert) as client:
            assert client.echo("hello") == "hello"
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for_datagram("STOPPING=1")
            assert client.close_code() == 1001
        assert server.proc.wait(timeout=DEADLINE) in (0, -signal.SIGTERM)
        assert server.received == ["READY=1", "STOPPING=1"]
        assert pending(server.notify) == []



def test_twistd_securews_itself_notifies_ready_watchdog_and_stopping(
    tmp_path: Path,
) -> None:
    """The shipped command (twistd securews) speaks NOTIFY_SOCKET on its own."""
    port = free_port()
    notify_path = tmp_path / "notify"
    sock = receiver_at(str(notify_path))
    log = tmp_path / "server.log"
    with sock, log.open("wb") as out:
        proc = subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", "securews", "--dev",
             "--state-dir", str(tmp_path / "state"),
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
            env=server_env(NOTIFY_SOCKET=str(notify_path),
                           WATCHDOG_USEC="400000"),
        )
        try:
            seen: list[str] = []
            deadline = time.monotonic() + DEADLINE
            while "READY=1" not in seen or seen.count("WATCHDOG=1") < 2:
                assert time.monotonic() < deadline, (seen, log.read_text())
                time.sleep(0.05)
                seen += pending(sock)
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=DEADLINE)
            seen += pending(sock)
            assert "STOPPING=1" in seen
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
