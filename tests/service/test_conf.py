"""
The deployment files in ``conf/``: the example settings, the systemd
service and socket units, and socket activation end to end.

The end-to-end tests run the installed ``twistd securews`` as a blocking
subprocess (reinstall securews after changing it:
``pip install --no-deps .``); every wait in them is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.testing import MemoryReactor
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

import securews.rules.config
from securews.rules.config import load
from securews.service import build_service
from tests.support.common import CertFiles, unavailable, websocket_client_tls
from tests.support.paths import CONF

EXAMPLE = CONF / "securews.toml"
SERVICE = CONF / "securews.service"
SOCKET = CONF / "securews.socket"
TWISTD = Path(sys.executable).parent / "twistd"
ORIGIN = Origin("https://app.example.com")
STARTUP_DEADLINE = 15.0
_T = TypeVar("_T")

#: Settings the example deliberately sets to something other than the
#: default, because the default cannot serve production.
PRODUCTION_CHOICES = {
    ("server", "listen"),
    ("tls", "cert"),
    ("tls", "key"),
    ("origin", "allowed"),
    ("auth.jwt", "key_file"),
    ("auth.jwt", "issuer"),
    ("auth.jwt", "audience"),
    ("auth.cookie", "secret_file"),
}


# -- conf/securews.toml ----------------------------------------------------


def _sections() -> dict[str, type[Any]]:
    """
    Every table the loader accepts, nested ones (``auth.jwt``) included,
    and its attrs class.
    """
    # The loader's own tables: what load() accepts is what must be shown.
    nested = securews.rules.config._NESTED
    found: dict[str, type[Any]] = {}

    def walk(name: str, cls: type[Any]) -> None:
        found[name] = cls
        for field in attrs.fields(cls):
            if str(field.type) in nested:
                walk(f"{name}.{field.name}", nested[str(field.type)])

    for name, cls in securews.rules.config._SECTIONS.items():
        walk(name, cls)
    assert found, "securews.rules.config._SECTIONS moved; update this test"
    return found


def _table(document: dict[str, Any], dotted: str) -> dict[str, Any]:
    for part in dotted.split("."):
        document = document[part]
    return document


def _nested_names(cls: type[Any]) -> set[str]:
    return {f.name for f in attrs.fields(cls)
            if str(f.type) in securews.rules.config._NESTED}


def _example_with_certs(certs: CertFiles, directory: Path) -> Path:
    """The example settings, with its TLS files replaced by ``certs``'s."""
    text = EXAMPLE.read_text(encoding="utf-8")
    tls = tomllib.loads(text)["tls"]
    replacements = {"cert": certs.chain, "key": certs.key,
                    "chain": certs.ca_cert, "client_ca": certs.ca_cert}
    for key, replacement in replacements.items():
        if tls[key]:
            quoted = f'"{tls[key]}"'
            assert text.count(quoted) == 1, f"tls.{key} path is not unique"
            text = text.replace(quoted, f'"{replacement}"')
    document = tomllib.loads(text)
    key_file = directory / "jwt-public.pem"
    key_file.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key().public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    secret_file = directory / "cookie-secret"
    secret_file.write_bytes(b"s" * 48)
    for original, replacement in (
        (document["auth"]["jwt"]["key_file"], key_file),
        (document["auth"]["cookie"]["secret_file"], secret_file),
    ):
        quoted = f'"{original}"'
        assert text.count(quoted) == 1, f"{original} is not unique"
        text = text.replace(quoted, f'"{replacement}"')
    copy = directory / "securews.toml"
    copy.write_text(text, encoding="utf-8")
    return copy


def test_example_settings_build_a_service(certs: CertFiles, tmp_path: Path) -> None:
    """conf/securews.toml, with real certificate files, loads and builds a service."""
    config = load(str(_example_with_certs(certs, tmp_path)))
    assert config.tls.cert == str(certs.chain)
    assert config.tls.key == str(certs.key)
    assert not config.dev
    # Checks the app, the endpoint string and the TLS settings for real.
    build_service(config, MemoryReactor())


def test_example_documents_every_setting() -> None:
    """conf/securews.toml lists every section and key that config.py accepts."""
    with EXAMPLE.open("rb") as f:
        example = tomllib.load(f)
    sections = _sections()
    assert sorted(example) == sorted(n for n in sections if "." not in n)
    for name, cls in sections.items():
        keys = {field.name for field in attrs.fields(cls)}
        table = _table(example, name)
        missing = keys - set(table)
        assert not missing, f"[{name}] does not document {sorted(missing)}"
        assert set(table) == keys


def test_example_shows_defaults_except_production_choices() -> None:
    """Each example value is the default unless it is a listed production choice."""
    config = load(str(EXAMPLE))
    drifted = []
    for name, cls in _sections().items():
        default, shown = cls(), config
        for part in name.split("."):
            shown = getattr(shown, part)
        for field in attrs.fields(cls):
            if field.name in _nested_names(cls):
                continue
            differs = getattr(shown, field.name) != getattr(default, field.name)
            if differs != ((name, field.name) in PRODUCTION_CHOICES):
                drifted.append(f"{name}.{field.name}")
    assert not drifted, f"example and defaults disagree on {drifted}"


# -- conf/securews.service and conf/securews.socket --------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """
    Parse a systemd unit file: ``{section: {key: [values...]}}``.

    configparser is not used: it keeps only the last of repeated keys,
    and systemd accumulates them (SystemCallFilter=...).
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: continuation"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{number}: key outside a section"
        key, eq, value = line.partition("=")
        assert eq, f"{path.name}:{number}: not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


SERVICE_DIRECTIVES = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "30s",
    "ExecStart": "/opt/securews/bin/twistd --nodaemon --pidfile= securews "
                 "--config /etc/securews/securews.toml",
    "User": "securews",
    "Group": "securews",
    "Restart": "on-failure",
    "KillSignal": "SIGTERM",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallArchitectures": "native",
    "LimitNOFILE": "65536",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "UMask": "0077",
    "ReadOnlyPaths": "/etc/securews",
}


def test_service_unit_sets_the_hardening_directives() -> None:
    """securews.service runs twistd unprivileged with each listed hardening setting."""
    unit = _unit(SERVICE)
    assert set(unit) == {"Unit", "Service", "Install"}
    assert unit["Unit"]["Description"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    service = unit["Service"]
    wrong = {
        key: service.get(key)
        for key, expected in SERVICE_DIRECTIVES.items()
        if service.get(key) != [expected]
    }
    assert not wrong, f"unexpected values: {wrong}"
    assert service["SystemCallFilter"] == ["@system-service",
                                           "~@privileged @resources"]
    memory_max = service["MemoryMax"]
    assert memory_max
    assert memory_max[-1] not in ("", "infinity")
    # It makes pyOpenSSL's cffi callbacks fail at start (see the unit).
    assert "MemoryDenyWriteExecute" not in service


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec)?", value)
    assert match, f"write TimeoutStopSec in seconds, not {value!r}"
    return float(match.group(1))


def test_service_unit_agrees_with_the_example_settings() -> None:
    """The unit's stop timeout and file limit leave room for the example's settings."""
    service = _unit(SERVICE)["Service"]
    config = load(str(EXAMPLE))
    assert _seconds(service["TimeoutStopSec"][-1]) > config.server.shutdown_grace
    assert int(service["LimitNOFILE"][-1]) > config.server.max_connections
    # A settings error exits 2 (see test_systemd_listen_without_activation_...):
    # restarting cannot fix it.
    assert service["RestartPreventExitStatus"] == ["2"]


def test_socket_unit_listens_on_443_dual_stack() -> None:
    """securews.socket binds port 443 for IPv6 and IPv4 and hands it to one process."""
    unit = _unit(SOCKET)
    assert set(unit) == {"Unit", "Socket", "Install"}
    sock = unit["Socket"]
    assert sock["ListenStream"] == ["443"]
    assert sock["BindIPv6Only"] == ["both"]
    assert sock.get("Accept", ["no"]) == ["no"]
    assert unit["Install"]["WantedBy"] == ["sockets.target"]


def _systemd_analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_PAGER": "cat"}
    return subprocess.run(
        ["systemd-analyze", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """
    Copies of both units in a directory, ExecStart pointing at this
    environment's twistd (verify insists the binary exists); skips when
    systemd-analyze is missing or cannot verify even a trivial unit here.
    """
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze not installed (Debian package 'systemd')")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "probe.service").write_text(
        "[Service]\nType=oneshot\nExecStart=/bin/true\n", encoding="utf-8")
    result = _systemd_analyze("verify", "--man=no", "--recursive-errors=no",
                              "./probe.service", cwd=probe)
    if result.returncode != 0:
        unavailable(f"systemd-analyze verify does not work here: {result.stderr}")
    directory = tmp_path / "units"
    directory.mkdir()
    text = SERVICE.read_text(encoding="utf-8")
    text = text.replace("ExecStart=/opt/securews/bin/twistd ",
                        f"ExecStart={TWISTD} ", 1)
    assert str(TWISTD) in text
    (directory / "securews.service").write_text(text, encoding="utf-8")
    shutil.copy(SOCKET, directory / "securews.socket")
    return directory


def test_units_pass_systemd_analyze_verify(units: Path) -> None:
    """systemd-analyze verify accepts both units without a single warning."""
    result = _systemd_analyze("verify", "--man=no", "--recursive-errors=no",
                              "./securews.service", "./securews.socket", cwd=units)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_service_unit_exposure_is_low(units: Path) -> None:
    """systemd-analyze security rates the service's sandbox at most 2.0 of 10."""
    result = _systemd_analyze("security", "--offline=true", "--threshold=20",
                              "--no-pager", "./securews.service", cwd=units)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


# -- socket activation, end to end -------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env() -> dict[str, str]:
    """This environment minus any socket-activation variables of our own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}


def _write_settings(directory: Path, certs: CertFiles, listen: str) -> Path:
    path = directory / "securews.toml"
    path.write_text(
        f'[server]\nlisten = "{listen}"\n\n'
        f'[tls]\ncert = "{certs.cert}"\nkey = "{certs.key}"\n\n'
        f'[origin]\nallowed = ["{ORIGIN}"]\n\n'
        '[auth]\nmethods = []\n',
        encoding="utf-8",
    )
    return path


def _stop(proc: subprocess.Popen[Any]) -> int:
    """SIGTERM the whole process group; SIGKILL it after 10 seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=10)


@attrs.define
class Activated:
    """securews under systemd-socket-activate, listening on ``port``."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def retry_while_starting(self, attempt: Callable[[], _T]) -> _T:
        """
        Run ``attempt()`` until systemd-socket-activate listens (connection
        refused before that), within the startup deadline.
        """
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            try:
                return attempt()
            except ConnectionRefusedError:
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, self.output()
                time.sleep(0.05)


@pytest.fixture
def activated(certs: CertFiles, tmp_path: Path) -> Iterator[Activated]:
    """
    ``twistd securews`` with ``listen = "systemd:domain=INET:index=0"``
    under systemd-socket-activate on a free loopback port.

    The activator binds the port and execs twistd at the first connection,
    which waits in the backlog meanwhile.  --fdname is needed: Twisted
    ignores inherited sockets unless LISTEN_FDNAMES is set, as systemd
    itself always does.
    """
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        unavailable("systemd-socket-activate not installed (Debian package "
                    "'systemd'; CI installs it)")
    settings = _write_settings(tmp_path, certs, "systemd:domain=INET:index=0")
    log = tmp_path / "server.log"
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [activate, "-l", f"127.0.0.1:{port}", "--fdname=securews",
             str(TWISTD), "--nodaemon", "--pidfile=", "securews",
             "--config", str(settings)],
            cwd=tmp_path, env=_server_env(), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield Activated(proc, port, log)
    finally:
        _stop(proc)


def _client_context(certs: CertFiles) -> ssl.SSLContext:
    return websocket_client_tls(certs.ca_cert)


def test_socket_activated_server_runs_the_securews_handshake(
    activated: Activated, certs: CertFiles,
) -> None:
    """A WebSocket handshake on the inherited socket gets securews's TLS and 401."""

    def handshake() -> InvalidStatus:
        with pytest.raises(InvalidStatus) as refused:
            connect(f"wss://127.0.0.1:{activated.port}/ws",
                    ssl=_client_context(certs), origin=ORIGIN,
                    open_timeout=STARTUP_DEADLINE, close_timeout=1)
        return refused.value

    refused = activated.retry_while_starting(handshake)
    assert refused.response.status_code == 401, activated.output()


def test_socket_activated_server_refuses_other_paths(
    activated: Activated, certs: CertFiles,
) -> None:
    """A plain GET for another path on the inherited socket is answered 404 over TLS."""

    def get() -> bytes:
        with socket.create_connection(("127.0.0.1", activated.port),
                                      timeout=STARTUP_DEADLINE) as raw, \
                _client_context(certs).wrap_socket(
                    raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while b"\r\n" not in response:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                response += chunk
            return response

    response = activated.retry_while_starting(get)
    assert response.split(b"\r\n", 1)[0] == b"HTTP/1.1 404 Not Found", (
        activated.output())


def test_socket_activated_server_stops_cleanly_on_sigterm(
    activated: Activated, certs: CertFiles,
) -> None:
    """After serving, SIGTERM (the unit's KillSignal) stops securews in order."""

    def handshake() -> None:
        with pytest.raises(InvalidStatus):
            connect(f"wss://127.0.0.1:{activated.port}/ws",
                    ssl=_client_context(certs), origin=ORIGIN,
                    open_timeout=STARTUP_DEADLINE, close_timeout=1)

    activated.retry_while_starting(handshake)
    status = _stop(activated.proc)
    output = activated.output()
    # twistd re-raises the signal that stopped it; systemd counts exit 0
    # and death by SIGTERM alike as a clean stop (no Restart=on-failure).
    assert status in (0, -signal.SIGTERM), output
    assert "securews stopping" in output
    assert output.rstrip().endswith("Server Shut Down.")
    assert "Traceback" not in output


def _run_twistd(settings: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TWISTD), "--nodaemon", "--pidfile=", "securews",
         "--config", str(settings)],
        cwd=cwd, env=_server_env(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_systemd_listen_without_activation_is_a_one_line_error(
    certs: CertFiles, tmp_path: Path,
) -> None:
    """A systemd: listen without an inherited socket exits 2 with one stderr line."""
    settings = _write_settings(tmp_path, certs, "systemd:domain=INET:index=0")
    result = _run_twistd(settings, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "server.listen" in lines[0]
    assert "socket-activated" in lines[0]


def test_unknown_systemd_domain_is_a_one_line_error(
    certs: CertFiles, tmp_path: Path,
) -> None:
    """Socket-activated, a systemd: listen with a bad domain exits 2 with one line."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        unavailable("systemd-socket-activate not installed")
    settings = _write_settings(tmp_path, certs, "systemd:domain=BOGUS:index=0")
    port = _free_port()
    proc = subprocess.Popen(
        [activate, "-l", f"127.0.0.1:{port}", "--fdname=securews",
         str(TWISTD), "--nodaemon", "--pidfile=", "securews",
         "--config", str(settings)],
        cwd=tmp_path, env=_server_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:  # the first connection makes the activator exec twistd
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                assert proc.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.05)
        _, stderr = proc.communicate(timeout=STARTUP_DEADLINE)
    finally:
        _stop(proc)
    activator = ("Listening on ", "Communication attempt ", "Execing ")
    lines = [line for line in stderr.strip().splitlines()
             if not line.startswith(activator)]
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert "server.listen" in lines[0]
