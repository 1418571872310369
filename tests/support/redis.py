"""
A real ``redis-server`` for the tests: started on a free loopback port
(and a UNIX socket), without persistence, stopped at the end.  Missing
Redis skips the test on a developer machine and fails it under CI.

:class:`RedisServer.command` is a tiny blocking client for the tests'
own inspection (``INFO``, ``SCAN``, ``CLIENT KILL``, ``DEBUG``); securews
itself talks to Redis through :mod:`securews.cluster.engine`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs

from tests.support.common import CertFiles, unavailable
from tests.support.processes import free_port

__all__ = ["RedisServer", "redis_binary", "restart", "running_redis"]


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        unavailable("redis-server is not installed (Debian package redis-server)")
    return path


def _encode(*args: object) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n + 2:]
        return data

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exactly(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


@attrs.define
class RedisServer:
    """A running ``redis-server``."""

    port: int
    unix_socket: Path
    process: subprocess.Popen[bytes]
    directory: Path
    tls_port: int | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def tls_url(self, db: int = 0) -> str:
        assert self.tls_port is not None
        return f"rediss://localhost:{self.tls_port}/{db}"

    def command(self, *args: object, timeout: float = 5) -> Any:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.unix_socket))
            sock.sendall(_encode(*args))
            return _Reader(sock).reply()

    def scan(self, pattern: str = "*") -> list[bytes]:
        cursor, found = b"0", []
        while True:
            cursor, batch = self.command("SCAN", cursor, "MATCH", pattern,
                                         "COUNT", 1000)
            found += batch
            if cursor == b"0":
                return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the engine hangs with its connections open."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def _start(directory: Path, *, port: int | None = None,
           tls: CertFiles | None = None,
           policy: str = "noeviction") -> RedisServer:
    binary = redis_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    sock = directory / "redis.sock"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1",
            "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", str(directory),
            "--maxmemory-policy", policy, "--enable-debug-command", "local",
            "--daemonize", "no", "--loglevel", "warning"]
    tls_port = None
    if tls is not None:
        tls_port = free_port()
        args += ["--tls-port", str(tls_port), "--tls-cert-file", str(tls.cert),
                 "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca_cert),
                 "--tls-auth-clients", "no"]
    log = open(directory / "redis.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = RedisServer(port, sock, process, directory, tls_port)
    deadline = time.monotonic() + 10
    while True:
        try:
            if server.command("PING", timeout=1) == "PONG":
                return server
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("redis-server did not start: "
                               + (directory / "redis.log").read_text()[-2000:])
        time.sleep(0.02)


@contextmanager
def running_redis(directory: Path, **kwargs: Any) -> Iterator[RedisServer]:
    """A ``redis-server`` for the block (see :func:`_start`)."""
    server = _start(directory, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def restart(server: RedisServer) -> None:
    """``SHUTDOWN NOSAVE`` then start again on the same port (``server``
    then runs the new process): the data is gone, the engine's epoch too."""
    with suppress(OSError, ConnectionError, RuntimeError):
        server.command("SHUTDOWN", "NOSAVE")
    server.process.wait(10)
    fresh = _start(server.directory, port=server.port)
    server.process = fresh.process
