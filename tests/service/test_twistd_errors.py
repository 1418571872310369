"""
What ``twistd securews`` says when it cannot serve, and what it says when
it can: one line per problem and exit status 2 (which the systemd unit
does not restart on), never a traceback or twistd's whole usage; a
``--check`` that agrees with the start; a startup banner; a daemon that
does not log into a closed standard output; ``--version``.

These run the installed ``twistd`` in a subprocess (reinstall securews
after changing it: ``pip install --no-deps .``).
"""

from __future__ import annotations

import configparser
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.test_twistd import EXPECTED, bad_configs
from tests.support.common import CertFiles
from tests.support.paths import CONF
from tests.support.processes import TWISTD, Server, clean_env, free_port, twistd
from tests.support.unprivileged import unprivileged

__all__ = ["bad_configs"]

EXIT = 2
SECUREWS = str(Path(sys.executable).parent / "securews")


def run(*args: str, cwd: Path) -> tuple[int, list[str], str]:
    """``twistd -n --pidfile= securews ARGS``: status, stderr lines, stdout."""
    result = twistd("--nodaemon", "--pidfile=", "securews", *args, cwd=cwd)
    return result.returncode, result.stderr.strip().splitlines(), result.stdout


def key(line: str) -> str:
    """The setting an error line names: ``securews: error: FILE: KEY: ...``."""
    return line.split(": ")[3]


def dev(tmp_path: Path, port: int, *extra: str) -> list[str]:
    return ["--dev", "--state-dir", str(tmp_path / "state"),
            "--listen", f"tcp:{port}:interface=127.0.0.1", *extra]


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.parametrize(("args", "words"), [
    ([], "--config FILE is required (or --dev to try securews locally)"),
    (["--dev", "--config", "x.toml"], "--dev and --config cannot be combined"),
    (["--confg", "x.toml"], "option --confg not recognized"),
    (["--config", "x.toml", "--state-dir", "s"], "--state-dir only applies to --dev"),
])
def test_usage_errors_are_one_line_and_a_hint(tmp_path: Path, args: list[str],
                                              words: str) -> None:
    """A bad command line: one line naming it and where help is, exit 2."""
    status, lines, stdout = run(*args, cwd=tmp_path)
    assert status == EXIT
    assert lines == [f"securews: error: {words} (see: twistd securews --help)"]
    assert stdout == ""


def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    """Address in use: the setting, the endpoint, the cause; exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, lines, _ = run(*dev(tmp_path, port), cwd=tmp_path)
    assert status == EXIT
    assert lines == [
        f"securews: error: --dev: server.listen: 'tcp:{port}:interface=127.0.0.1': "
        f"cannot listen on 127.0.0.1:{port}: address already in use (is another "
        "server, or securews, running?)"]
    assert not (tmp_path / "twistd.pid").exists()


@pytest.mark.parametrize(("interface", "cause"), [
    ("192.0.2.1", "no such address on this machine (check interface=)"),
    ("no-such-host.invalid", "no such interface"),
])
def test_a_bad_interface_is_one_line(tmp_path: Path, interface: str,
                                     cause: str) -> None:
    """An interface this machine does not have: one line, exit 2."""
    status, lines, _ = run("--dev", "--state-dir", str(tmp_path / "s"), "--listen",
                           f"tcp:{free_port()}:interface={interface}", cwd=tmp_path)
    assert status == EXIT
    assert len(lines) == 1
    assert f"cannot listen on {interface}:" in lines[0]
    assert cause in lines[0]


def test_a_unix_socket_in_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    """A failure only the real bind finds (after twistd started): still one
    line on the process's standard error, exit 2."""
    where = tmp_path / "missing" / "securews.sock"
    status, lines, stdout = run("--dev", "--state-dir", str(tmp_path / "s"),
                                "--listen", f"unix:{where}", cwd=tmp_path)
    assert status == EXIT
    assert lines == [f"securews: error: --dev: server.listen: 'unix:{where}': "
                     "cannot listen: no such file or directory"]
    assert "Traceback" not in stdout


def test_a_privileged_port_as_a_user_names_the_capability() -> None:
    """Port 443 without privilege (as ``nobody`` when the tests run as root)."""
    with unprivileged() as user:
        result = user.run(TWISTD, "-n", "--pidfile=", "securews", "--dev",
                          "--listen", "tcp:443:interface=127.0.0.1")
    assert result.returncode == EXIT, result.stderr
    assert result.stderr.strip().splitlines() == [
        "securews: error: --dev: server.listen: 'tcp:443:interface=127.0.0.1': "
        "cannot listen on 127.0.0.1:443: permission denied: ports below 1024 need "
        "root or CAP_NET_BIND_SERVICE (conf/securews.service grants it)"]


def test_the_unit_does_not_restart_on_exit_status_2() -> None:
    """conf/securews.service: a settings, usage or listen error stays stopped."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((CONF / "securews.service").read_text())
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Service"]["RestartPreventExitStatus"].split() == [str(EXIT)]


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_check_says_what_the_start_says(
    tmp_path: Path, bad_configs: dict[str, str], case: str
) -> None:
    """``securews check`` finds each problem the start refuses, in the same
    line."""
    path = tmp_path / "securews.toml"
    path.write_text(bad_configs[case])
    start = twistd("--nodaemon", "--pidfile=", "securews", "--config", str(path),
                   cwd=tmp_path)
    # (twistd --check runs the same function: test_every_problem_is_named_at_once)
    check = subprocess.run([SECUREWS, "check", "--config", str(path)], cwd=tmp_path,
                           env=clean_env(), text=True, capture_output=True,
                           timeout=60, check=False)
    assert (start.returncode, check.returncode) == (EXIT, EXIT)
    errors = [line for line in check.stderr.splitlines()
              if line.startswith("securews: error: ")]
    assert errors == start.stderr.strip().splitlines()
    assert check.stdout == ""


def test_every_problem_is_named_at_once(tmp_path: Path, certs: CertFiles) -> None:
    """Four mistakes in one file: four lines, at start and at --check."""
    path = tmp_path / "securews.toml"
    path.write_text(
        '[server]\nmax_conections = 5\nshutdown_grace = -1\n'
        f'[tls]\ncert = "{tmp_path}/missing.pem"\nkey = "{tmp_path}/missing-key.pem"\n'
        '[auth]\nmethods = ["jwt", "cookie"]\n'
        '[auth.cookie]\nsecret_file = "/nonexistent/secret"\n')
    status, lines, _ = run("--config", str(path), cwd=tmp_path)
    assert status == EXIT
    assert [key(line) for line in lines] == [
        "server.max_conections", "server.shutdown_grace"]
    path.write_text(
        f'[tls]\ncert = "{tmp_path}/missing.pem"\nkey = "{tmp_path}/missing-key.pem"\n'
        '[auth]\nmethods = ["jwt", "cookie"]\n'
        '[auth.cookie]\nsecret_file = "/nonexistent/secret"\n')
    for args in (["--config", str(path)], ["--config", str(path), "--check"]):
        status, lines, _ = run(*args, cwd=tmp_path)
        assert status == EXIT
        keys = [key(line) for line in lines if "error" in line]
        assert keys == ["tls.cert", "tls.key", "auth.jwt.key_file",
                        "auth.cookie.secret_file"], lines


def test_check_passes_a_good_configuration(tmp_path: Path, certs: CertFiles) -> None:
    """--check: OK on standard output, exit 0, nothing started."""
    path = tmp_path / "securews.toml"
    port = free_port()
    path.write_text(
        f'[server]\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
        f'[tls]\ncert = "{certs.cert}"\nkey = "{certs.key}"\n'
        '[origin]\nallowed = ["https://app.example.com"]\n[auth]\nmethods = []\n')
    status, lines, stdout = run("--config", str(path), "--check", cwd=tmp_path)
    assert status == 0
    assert stdout == f"securews: {path}: OK\n"
    assert lines == [f"securews: warning: {path}: auth.methods: is empty: every "
                     "handshake is refused (401)"]


def test_version_names_securews_and_what_it_runs_on(tmp_path: Path) -> None:
    """twistd securews --version: securews's version, not only Twisted's."""
    from securews import __version__

    result = twistd("securews", "--version", cwd=tmp_path)
    assert result.returncode == 0
    names = [line.split(" ", 1)[0] for line in result.stdout.splitlines()]
    assert names[:4] == ["securews", "Twisted", "Autobahn", "pyOpenSSL"]
    assert "OpenSSL" in names
    assert result.stdout.startswith(f"securews {__version__}\n")


def test_the_banner_says_what_is_enforced(tmp_path: Path,
                                          servers: list[Server]) -> None:
    """One INFO block: version, address, TLS floor, auth, Origins, limits, dev."""
    from securews import __version__

    port = free_port()
    server = Server(dev(tmp_path, port), tmp_path)
    servers.append(server)
    # The development-mode warning comes last, after the banner.
    server.wait_for("DEVELOPMENT MODE, NOT FOR PRODUCTION")
    log = server.text()
    block = log[log.index(f"securews {__version__} (Twisted "):]
    for words in (f"listening: wss://127.0.0.1:{port}/ws", "TLS: 1.2 or newer",
                  "auth: anonymous", "Origins: http://localhost:*",
                  "requests without Origin allowed", "limits: 10000 sessions",
                  "messages 65536 B", "dev mode: ON, NOT FOR PRODUCTION"):
        assert words in block
    assert f"Open https://127.0.0.1:{port}/ in a browser" in log
    assert "dev-key.pem" not in log


def test_a_daemon_without_a_log_file_refuses_to_start(tmp_path: Path) -> None:
    """Without -n, log.file "-" (closed standard output) is one line, exit 2."""
    result = twistd("--pidfile=", "securews", *dev(tmp_path, free_port()),
                    cwd=tmp_path)
    assert result.returncode == EXIT
    assert result.stderr.strip() == (
        'securews: error: --dev: log.file: "-" (standard output) is closed when '
        "twistd runs as a daemon: set log.file or --log-file FILE, or run in the "
        "foreground (twistd -n, as systemd does)")


@pytest.mark.parametrize("how", ["--log-file", "twistd --logfile"])
def test_a_daemon_logs_to_its_file(tmp_path: Path, how: str) -> None:
    """securews's --log-file, or twistd's own --logfile, takes the log."""
    log = tmp_path / "securews.log"
    pidfile = tmp_path / "securews.pid"
    port = free_port()
    if how == "--log-file":
        args = [f"--pidfile={pidfile}", "securews", *dev(tmp_path, port),
                "--log-file", str(log)]
    else:
        args = [f"--pidfile={pidfile}", f"--logfile={log}", "securews",
                *dev(tmp_path, port)]
    result = twistd(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    try:
        deadline = time.monotonic() + 20
        while "dev mode: ON" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "the daemon never logged its banner"
            time.sleep(0.05)
        assert f"securews listening on wss://127.0.0.1:{port}/ws" in log.read_text()
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pidfile.exists():
        assert time.monotonic() < deadline, "the daemon did not stop"
        time.sleep(0.05)
