"""
The check a node makes of its engine before it starts: one blocking
connection, as ``twistd`` builds the service (no reactor runs yet).

An engine securews must not use stops the node, with one line: one that
may evict keys (an evicted limit or lease key silently lifts a limit),
one older than Redis 7.0 (the scripts need it), one that refuses the
credentials.  An engine that cannot be reached is not a reason to stop:
the node starts not ready, refuses handshakes (503) and connects when it
can.
"""

from __future__ import annotations

import socket
import ssl

from securews.rules.cluster import ClusterSettings, EngineAddress
from securews.rules.config import ConfigError

__all__ = ["EngineFacts", "check_engine"]


class EngineFacts(dict[str, str]):
    """``INFO`` fields of the engine."""


def _command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode("utf-8")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Replies:
    """Just enough RESP to read the answers to the commands below."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self._buffer += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill(len(self._buffer) + 1)
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def read(self) -> bytes | None:
        """A simple or bulk string; an error raises :exc:`RuntimeError`
        (its text is the engine's: never a credential)."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RuntimeError(rest.decode("utf-8", "replace").split(" ", 1)[0])
        if kind in (b"+", b":"):
            return rest
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            self._fill(size + 2)
            data, self._buffer = self._buffer[:size], self._buffer[size + 2:]
            return data
        raise RuntimeError("unexpected reply")


def _connect(address: EngineAddress, ca_file: str, timeout: float) -> socket.socket:
    if address.path:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        sock.connect(address.path)
        return sock
    sock = socket.create_connection((address.host, address.port), timeout=timeout)
    if address.tls:
        context = ssl.create_default_context(cafile=ca_file or None)
        return context.wrap_socket(sock, server_hostname=address.host)
    return sock


def check_engine(settings: ClusterSettings, password: str | None, *,
                 timeout: float = 2.0) -> EngineFacts | None:
    """
    :returns: the engine's ``INFO`` fields, or ``None`` when it cannot be
        reached now (the node starts not ready).
    :raises ConfigError: (key ``cluster.redis_url``) for an engine securews
        must not use.
    """
    address = settings.engine
    try:
        sock = _connect(address, settings.ca_file, timeout)
    except ssl.SSLCertVerificationError:
        raise ConfigError(f"{address}: the engine's certificate does not verify",
                          key="cluster.redis_url") from None
    except OSError:
        return None
    try:
        with sock:
            replies = _Replies(sock)
            commands: list[tuple[str, ...]] = []
            if password is not None:
                commands.append(("AUTH", address.username or "default", password))
            if address.db:
                commands.append(("SELECT", str(address.db)))
            commands.append(("INFO", "server", "memory"))
            sock.sendall(b"".join(_command(*c) for c in commands))
            answers = [replies.read() for _ in commands]
    except RuntimeError as e:
        raise ConfigError(f"{address}: the engine refused securews ({e})",
                          key="cluster.redis_url") from None
    except (OSError, ValueError):
        return None
    facts = EngineFacts()
    for line in (answers[-1] or b"").decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
        if value:
            facts[key] = value.strip()
    _judge(address, facts)
    return facts


def _judge(address: EngineAddress, facts: EngineFacts) -> None:
    policy = facts.get("maxmemory_policy", "unknown")
    if policy != "noeviction":
        raise ConfigError(
            f"{address}: maxmemory-policy is {policy}; securews needs noeviction "
            "(an evicted limit key silently lifts a limit)", key="cluster.redis_url")
    version = facts.get("redis_version", "0")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < 7:
        raise ConfigError(f"{address}: Redis {version}; securews needs 7.0 or "
                          "newer (or Valkey 7.2 or newer)", key="cluster.redis_url")
