"""
What hostile or mistaken input to the ``securews`` command and to
development mode must never do (an independent review of the first-hour
work found each of these): print a password written into a Redis URL,
leave a private key readable by others, keep secrets in a directory
others may write to, end in a traceback, or let a server's text drive
the user's terminal.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.processes import TWISTD, Server, clean_env, free_port

SECUREWS = str(Path(sys.executable).parent / "securews")
SECRET = "hunter2-Sup3rSecret"


def run(*args: str, cwd: Path,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SECUREWS, *args], cwd=cwd, env=clean_env(), text=True,
                          input=stdin, capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("command", ["check", "twistd"])
def test_a_password_in_the_redis_url_is_never_printed(tmp_path: Path,
                                                      command: str) -> None:
    """The URL also has a bad port, so it is refused before its password
    is noticed; neither error may repeat it (stderr is the journal)."""
    path = tmp_path / "securews.toml"
    path.write_text(
        '[server]\nlisten = "tcp:0:interface=127.0.0.1"\n'
        f'[tls]\ncert = "{tmp_path}/c.pem"\nkey = "{tmp_path}/k.pem"\n'
        f'[cluster]\nredis_url = "redis://:{SECRET}@redis.internal:99999/0"\n')
    argv = ([SECUREWS, "check", "--config", str(path)] if command == "check"
            else [TWISTD, "-n", "--pidfile=", "securews", "--config", str(path)])
    result = subprocess.run(argv, cwd=tmp_path, env=clean_env(), text=True,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "cluster.redis_url" in result.stderr
    assert SECRET not in result.stderr + result.stdout, result.stderr


def test_a_remade_dev_key_is_mode_0600(tmp_path: Path) -> None:
    """A stale key file of mode 0644 (restored from a backup) is replaced,
    not written into: the new key is 0600."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "dev-cert.pem").write_text("stale\n")
    key = state / "dev-key.pem"
    key.write_text("stale\n")
    key.chmod(0o644)
    server = Server(["--dev", "--state-dir", str(state), "--listen",
                     f"tcp:{free_port()}:interface=127.0.0.1"], tmp_path)
    try:
        server.wait_for("securews listening on")
    finally:
        server.stop()
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_dev_mode_refuses_a_state_directory_others_may_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "securews", "--dev", "--state-dir", str(state),
         "--listen", f"tcp:{free_port()}:interface=127.0.0.1"],
        cwd=tmp_path, env=clean_env(), text=True, capture_output=True, timeout=60,
        check=False)
    assert result.returncode == 2
    assert "may be written by others" in result.stderr
    assert not (state / "dev-key.pem").exists()


def test_init_refuses_a_directory_others_may_write(tmp_path: Path) -> None:
    """Whoever may write to it could replace jwt-public.pem (and mint
    accepted tokens) or admin-token."""
    directory = tmp_path / "etc-securews"
    directory.mkdir()
    directory.chmod(0o777)
    result = run("init", str(directory), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "may be written by others" in result.stderr
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("ttl", ["inf", "1e400", "nan", "0.5", "1e9"])
def test_a_ttl_out_of_range_is_one_line_and_exit_2(tmp_path: Path, ttl: str) -> None:
    assert run("init", str(tmp_path / "etc"), cwd=tmp_path).returncode == 0
    result = run("token", "--config", str(tmp_path / "etc" / "securews.toml"),
                 "--sub", "alice", "--ttl", ttl, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("securews: error: ")
    assert "--ttl" in line
    assert result.stdout == ""


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EVIL = "\x1b]52;c;cHduZWQ=\x07\x1b[2J\x1b[1Aclosed: 1000"


def _hostile_server(listener: socket.socket) -> None:
    """A WebSocket server (raw socket) whose message and close reason hold
    terminal escapes: a clipboard write, a clear screen, a colour."""
    conn, _ = listener.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                     + b"\r\n\r\n")
        payload = EVIL.encode()
        conn.sendall(bytes([0x81, len(payload)]) + payload)
        reason = b"\x03\xe8" + b"\x1b[31mbye"
        conn.sendall(bytes([0x88, len(reason)]) + reason)
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            conn.recv(4096)


def test_the_client_never_prints_control_characters(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    thread = threading.Thread(target=_hostile_server, args=(listener,), daemon=True)
    thread.start()
    result = run("client", f"ws://127.0.0.1:{port}/ws", cwd=tmp_path, stdin="")
    listener.close()
    assert "connected to" in result.stderr, result.stderr
    output = result.stdout + result.stderr
    assert "\x1b" not in output, repr(output)
    assert "\\x1b]52;c;cHduZWQ=\\x07" in result.stdout  # shown, escaped
    assert "closed: 1000 \\x1b[31mbye" in result.stderr
