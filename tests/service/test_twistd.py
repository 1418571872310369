"""
``twistd securews`` as an operator runs it: the installed plugin, dev
mode, bad configurations, and SIGTERM.

These run the ``twistd`` of the test environment in a subprocess from a
scratch directory, so they exercise the installed copy of securews (its
plugin file in ``twisted/plugins``), not the source tree.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.common import CertFiles, websocket_client_tls, write_cert
from tests.support.processes import Server, clean_env, free_port, twistd

EXIT_CONFIG = 2


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[Server], args: list[str], cwd: Path) -> Server:
    server = Server(args, cwd)
    servers.append(server)
    server.wait_for("securews listening on")
    return server


def client_context(cafile: Path) -> ssl.SSLContext:
    return websocket_client_tls(cafile)


def test_installed_plugin_is_listed_by_twistd(tmp_path: Path) -> None:
    """twistd --help lists securews from the installed plugin file."""
    result = twistd("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "securews" in result.stdout
    plugin = subprocess.run(
        [sys.executable, "-c", "import twisted.plugins.securews_plugin as p; "
         "print(p.__file__)"], cwd=tmp_path, env=clean_env(), text=True,
        capture_output=True, check=True,
    ).stdout.strip()
    assert "site-packages" in plugin


def test_securews_help_documents_every_flag(tmp_path: Path) -> None:
    """twistd securews --help names each command-line option."""
    result = twistd("securews", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--config", "--dev", "--listen", "--path", "--app",
                 "--log-format", "--log-file", "--state-dir", "--allow-origin"):
        assert flag in result.stdout


def test_dev_mode_echoes_text_and_binary(tmp_path: Path,
                                         servers: list[Server]) -> None:
    """--dev serves wss:// with a self-signed certificate; echo works both ways."""
    port = free_port()
    state = tmp_path / "state"
    server = start(servers, ["--dev", "--state-dir", str(state),
                             "--listen", f"tcp:{port}:interface=127.0.0.1"], tmp_path)
    # The development-mode warning comes last, after the banner.
    server.wait_for("DEVELOPMENT MODE, NOT FOR PRODUCTION")
    log = server.text()
    assert f"wss://127.0.0.1:{port}/ws" in log
    assert str(state / "dev-cert.pem") in log
    with connect(f"wss://127.0.0.1:{port}/ws",
                 ssl=client_context(state / "dev-cert.pem")) as ws:
        ws.send("hello, securews")
        assert ws.recv(timeout=5) == "hello, securews"
        ws.send(b"\x00\xffbinary")
        assert ws.recv(timeout=5) == b"\x00\xffbinary"
    assert oct((state / "dev-key.pem").stat().st_mode & 0o777) == "0o600"


def test_dev_certificate_is_made_once_and_reused(tmp_path: Path,
                                                 servers: list[Server]) -> None:
    """A second --dev start keeps the certificate clients already trust."""
    state = tmp_path / "state"
    args = ["--dev", "--state-dir", str(state),
            "--listen", f"tcp:{free_port()}:interface=127.0.0.1"]
    start(servers, args, tmp_path).stop()
    first = (state / "dev-cert.pem").read_bytes()
    args[-1] = f"tcp:{free_port()}:interface=127.0.0.1"
    start(servers, args, tmp_path)
    assert (state / "dev-cert.pem").read_bytes() == first


def test_production_config_refuses_anonymous_clients(
    tmp_path: Path, certs: CertFiles, servers: list[Server]
) -> None:
    """Without --dev and without authentication configured, handshakes get 401."""
    port = free_port()
    config = tmp_path / "securews.toml"
    config.write_text(
        f'[server]\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
        f'[tls]\ncert = "{certs.cert}"\nkey = "{certs.key}"\n'
        '[origin]\nallow_missing = true\n[auth]\nmethods = []\n'
    )
    start(servers, ["--config", str(config)], tmp_path)
    with pytest.raises(InvalidStatus) as info:
        connect(f"wss://127.0.0.1:{port}/ws", ssl=client_context(certs.ca_cert))
    assert info.value.response.status_code == 401


def test_sigterm_closes_sessions_with_1001_and_exits(
    tmp_path: Path, servers: list[Server]
) -> None:
    """SIGTERM: stop listening, send 1001 to open sessions, exit in the grace."""
    port = free_port()
    state = tmp_path / "state"
    server = start(servers, ["--dev", "--state-dir", str(state),
                             "--listen", f"tcp:{port}:interface=127.0.0.1"], tmp_path)
    with connect(f"wss://127.0.0.1:{port}/ws",
                 ssl=client_context(state / "dev-cert.pem")) as ws:
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1001
    # twistd re-raises the signal that stopped it once the service has
    # stopped cleanly; systemd counts death by SIGTERM as a clean exit.
    assert server.process.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Server Shut Down." in server.text()
    assert time.monotonic() - began < 10
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.fixture
def bad_configs(tmp_path: Path, certs: CertFiles, ca: object) -> dict[str, str]:
    """Settings fragments that must each be refused at startup."""
    other = write_cert(ca, tmp_path / "other")  # type: ignore[arg-type]
    expired = write_cert(ca, tmp_path / "expired",  # type: ignore[arg-type]
                         not_after=__import__("datetime").datetime(2020, 1, 1))
    tls = f'[tls]\ncert = "{certs.cert}"\nkey = "{certs.key}"\n'
    no_auth = "[auth]\nmethods = []\n"
    cases = {
        "unknown section": tls + "[sever]\nlisten = 'tcp:1'\n",
        "typo in key": tls + "[server]\nmax_conections = 5\n",
        "wrong type": tls + "[server]\nmax_connections = 'many'\n",
        "negative size": tls + "[limits]\nmax_message_size = -1\n",
        "negative timeout": tls + "[server]\nshutdown_grace = -5\n",
        "unreadable cert":
            f'[tls]\ncert = "{tmp_path}/nope.pem"\nkey = "{certs.key}"\n',
        "unreadable key": f'[tls]\ncert = "{certs.cert}"\nkey = "{tmp_path}/nope"\n',
        "key mismatch": f'[tls]\ncert = "{certs.cert}"\nkey = "{other.key}"\n',
        "expired cert": f'[tls]\ncert = "{expired.cert}"\nkey = "{expired.key}"\n',
        "bad endpoint": tls + "[server]\nlisten = 'tcp:notaport'\n",
        "ssl endpoint": tls + "[server]\nlisten = 'ssl:8443'\n",
        "tunnel endpoint": tls + "[server]\nlisten = 'autobahn:tcp\\:9000'\n",
        "unknown app": tls + "[server]\napp = 'no.such.module:App'\n",
        "plaintext without proxy": "[tls]\nenabled = false\n",
        "not toml": "[server\n",
        "jwt without key": tls + "[auth]\nmethods = ['jwt']\n",
        "anonymous outside dev": tls + "[auth]\nmethods = ['anonymous']\n",
    }
    return {name: text if "[auth]" in text or name == "not toml" else no_auth + text
            for name, text in cases.items()}


EXPECTED = {
    "unknown section": ("[sever]", "unknown section"),
    "typo in key": ("server.max_conections", "unknown key"),
    "wrong type": ("server.max_connections", "expected an integer"),
    "negative size": ("limits.max_message_size", "greater than 0"),
    "negative timeout": ("server.shutdown_grace", "must not be negative"),
    "unreadable cert": ("tls.cert", "No such file"),
    "unreadable key": ("tls.key", "No such file"),
    "key mismatch": ("tls.key", "does not match"),
    "expired cert": ("tls.cert", "expired on 2020-01-01"),
    "bad endpoint": ("server.listen", "tcp:notaport"),
    "ssl endpoint": ("server.listen", "[tls] section"),
    "tunnel endpoint": ("server.listen", "not allowed"),
    "unknown app": ("server.app", "cannot import"),
    "plaintext without proxy": ("tls.enabled", "trusted_proxies"),
    "not toml": ("", "not valid TOML"),
    "jwt without key": ("auth.jwt.key_file", "must name a key file"),
    "anonymous outside dev": ("auth.methods", "only allowed with --dev"),
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_config_exits_with_one_line_and_no_traceback(
    tmp_path: Path, bad_configs: dict[str, str], case: str
) -> None:
    """Each bad setting: exit 2, one stderr line naming file, key and problem."""
    path = tmp_path / "securews.toml"
    path.write_text(bad_configs[case])
    result = twistd("--nodaemon", "--pidfile=", "securews", "--config", str(path),
                    cwd=tmp_path)
    key, words = EXPECTED[case]
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"securews: error: {path}: {key}")
    assert words in lines[0]
    assert result.stdout == ""


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    """A config path that does not exist: exit 2 and its name."""
    result = twistd("--nodaemon", "--pidfile=", "securews", "--config",
                    str(tmp_path / "absent.toml"), cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.strip() == (
        f"securews: error: {tmp_path / 'absent.toml'}: cannot read: "
        "No such file or directory"
    )


def test_neither_config_nor_dev_is_a_usage_error(tmp_path: Path) -> None:
    """Running without --config or --dev says what is required."""
    result = twistd("--nodaemon", "--pidfile=", "securews", cwd=tmp_path)
    assert result.returncode != 0
    assert "--config FILE is required" in result.stdout + result.stderr
