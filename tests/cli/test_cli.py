"""
The installed ``securews`` command, run as a user runs it: a subprocess,
its output and its exit status.  (Reinstall securews after changing it:
``pip install --no-deps .``.)
"""

from __future__ import annotations

import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from securews.auth.jwt import load_jwt_key, verify_token
from securews.rules.config import load
from tests.support.common import CertFiles
from tests.support.processes import Server, clean_env, free_port

SECUREWS = str(Path(sys.executable).parent / "securews")


def securews(*args: str, cwd: Path, stdin: str = "",
             env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SECUREWS, *args], cwd=cwd, env=env or clean_env(),
                          input=stdin, text=True, capture_output=True,
                          timeout=timeout, check=False)


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``twistd -n securews --dev`` on a free port: (port, its certificate)."""
    port = free_port()
    state = tmp_path / "state"
    server = Server(["--dev", "--state-dir", str(state), "--listen",
                     f"tcp:{port}:interface=127.0.0.1"], tmp_path)
    try:
        server.wait_for("securews listening on")
        yield port, state / "dev-cert.pem"
    finally:
        server.stop()


# -- version and usage ---------------------------------------------------------


@pytest.mark.parametrize("args", [["version"], ["--version"]])
def test_version_names_securews_twisted_autobahn_and_openssl(
    tmp_path: Path, args: list[str]
) -> None:
    """One line each: securews first, then what it runs on."""
    from securews import __version__

    result = securews(*args, cwd=tmp_path)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"securews {__version__}"
    assert {line.split(" ", 1)[0] for line in lines} >= {
        "Twisted", "Autobahn", "OpenSSL", "Python"}


@pytest.mark.parametrize(("args", "line"), [
    ([], "securews: error: a COMMAND is required (see: securews --help)"),
    (["check"], "securews: error: the following arguments are required: "
                "--config/-c (see: securews check --help)"),
    (["frobnicate"], "securews: error: argument COMMAND: invalid choice: "),
    (["token", "--config", "x", "--sub", "a", "--ttl", "soon"],
     "securews: error: argument --ttl: invalid float value: 'soon' "),
])
def test_a_bad_command_line_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], line: str
) -> None:
    """No usage dump, no traceback: what is wrong and where help is."""
    result = securews(*args, cwd=tmp_path)
    assert result.returncode == 2
    (only,) = result.stderr.splitlines()
    assert only.startswith(line)
    assert result.stdout == ""


# -- check -----------------------------------------------------------------------


def test_check_names_every_problem_and_exits_2(tmp_path: Path) -> None:
    """Missing certificate and key, an unknown key, a short secret: all of them."""
    secret = tmp_path / "secret"
    secret.write_text("short\n")
    path = tmp_path / "securews.toml"
    path.write_text(
        f'[tls]\ncert = "{tmp_path}/cert.pem"\nkey = "{tmp_path}/key.pem"\n'
        '[auth]\nmethods = ["cookie"]\n'
        f'[auth.cookie]\nsecret_file = "{secret}"\n')
    result = securews("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " error: " in line]
    assert [line.split(": ")[3] for line in errors] == [
        "tls.cert", "tls.key", "auth.cookie.secret_file"]
    assert all(line.startswith(f"securews: error: {path}: ") for line in errors)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_binds_the_address_unless_told_not_to(
    tmp_path: Path, dev_server: tuple[int, Path], certs: CertFiles
) -> None:
    """A port in use is a problem; --no-bind checks a running server's file."""
    port, _ = dev_server
    path = tmp_path / "securews.toml"
    path.write_text(
        f'[server]\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
        f'[tls]\ncert = "{certs.cert}"\nkey = "{certs.key}"\n'
        '[origin]\nallow_missing = true\n[auth]\nmethods = []\n')
    result = securews("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "server.listen" in result.stderr
    assert "address already in use" in result.stderr
    result = securews("check", "--config", str(path), "--no-bind", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"securews: {path}: OK\n"


# -- init ------------------------------------------------------------------------


def test_init_writes_settings_and_fresh_secrets_mode_0600(tmp_path: Path) -> None:
    """Each file new, 0600, in a 0700 directory; every secret its own."""
    target = tmp_path / "etc"
    result = securews("init", str(target), "--origin", "https://app.example.com",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*")
                   if p.is_file())
    assert files == ["admin-token", "cookie-secret", "jwt-private.pem",
                     "jwt-public.pem", "securews.toml"]
    for path in [target, target / "tls"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for name in files:
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
    secret = (target / "cookie-secret").read_bytes()
    assert secret.endswith(b"\n")
    assert len(secret.rstrip(b"\n")) >= 32
    settings = tomllib.loads((target / "securews.toml").read_text())
    assert settings["origin"]["allowed"] == ["https://app.example.com"]
    assert settings["auth"]["jwt"]["key_file"] == str(target / "jwt-public.pem")
    assert settings["tls"]["cert"] == str(target / "tls" / "fullchain.pem")
    assert settings["admin"] == {"listen": "tcp:9100:interface=127.0.0.1",
                                 "token_file": str(target / "admin-token")}
    admin_token = (target / "admin-token").read_text()
    assert admin_token.endswith("\n")
    assert len(admin_token.strip()) >= 32
    for secret_text in (secret.decode().strip(), admin_token.strip(),
                        (target / "jwt-private.pem").read_text()):
        assert secret_text not in result.stdout + result.stderr
    assert f"put the certificate (full chain) at {target}/tls/fullchain.pem" in \
        result.stdout
    assert f"securews check --config {target}/securews.toml" in result.stdout
    other = tmp_path / "other"
    securews("init", str(other), cwd=tmp_path)
    assert (other / "cookie-secret").read_bytes() != secret


def test_init_never_overwrites(tmp_path: Path) -> None:
    """A second init into the same directory: one line, exit 2, files intact."""
    assert securews("init", str(tmp_path / "etc"), cwd=tmp_path).returncode == 0
    before = (tmp_path / "etc" / "cookie-secret").read_bytes()
    result = securews("init", str(tmp_path / "etc"), cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "exists; securews init never overwrites" in line
    assert (tmp_path / "etc" / "cookie-secret").read_bytes() == before


def test_init_then_check_needs_only_the_certificate(tmp_path: Path,
                                                    certs: CertFiles) -> None:
    """Without a certificate the check names exactly its two files; with
    them in place it passes."""
    target = tmp_path / "etc"
    port = free_port()
    securews("init", str(target), "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--admin-listen", f"tcp:{free_port()}:interface=127.0.0.1",
             "--origin", "https://app.example.com", cwd=tmp_path)
    config = str(target / "securews.toml")
    result = securews("check", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert [line.split(": ")[3] for line in result.stderr.splitlines()] == [
        "tls.cert", "tls.key"]
    (target / "tls" / "fullchain.pem").write_bytes(certs.chain.read_bytes())
    (target / "tls" / "privkey.pem").write_bytes(certs.key.read_bytes())
    result = securews("check", "--config", config, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


def test_init_refuses_a_bad_origin(tmp_path: Path) -> None:
    """What the server would refuse, init refuses before writing anything."""
    result = securews("init", str(tmp_path / "etc"), "--origin", "null",
                      cwd=tmp_path)
    assert result.returncode == 2
    assert "--origin" in result.stderr
    assert not (tmp_path / "etc").exists()


# -- token -----------------------------------------------------------------------


def _initialised(tmp_path: Path) -> Path:
    securews("init", str(tmp_path / "etc"), "--self-signed", "--listen",
             "tcp:0:interface=127.0.0.1", cwd=tmp_path)
    return tmp_path / "etc" / "securews.toml"


def test_token_is_one_the_server_verifies(tmp_path: Path) -> None:
    """Signed with the key pair init made; verified by the server's own code."""
    path = _initialised(tmp_path)
    result = securews("token", "--config", str(path), "--sub", "alice", "--ttl",
                      "120", "--claims", '{"role": "tester"}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    settings = load(str(path)).auth.jwt
    claims = verify_token(token, load_jwt_key(settings),
                          now=jwt.decode(token, options={"verify_signature": False})
                          ["iat"], leeway=0, audience=settings.audience)
    assert (claims["sub"], claims["role"], claims["aud"]) == ("alice", "tester",
                                                             "securews")
    assert claims["exp"] - claims["iat"] == 120


def test_token_with_a_shared_secret(tmp_path: Path) -> None:
    """HS256 with a secret key file: the file itself signs."""
    secret = tmp_path / "jwt-secret"
    secret.write_text("x" * 40 + "\n")
    path = tmp_path / "securews.toml"
    path.write_text(f'[tls]\ncert = "c"\nkey = "k"\n[auth]\nmethods = ["jwt"]\n'
                    f'[auth.jwt]\nalgorithms = ["HS256"]\nkey_file = "{secret}"\n')
    result = securews("token", "--config", str(path), "--sub", "svc", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), b"x" * 40, algorithms=["HS256"])
    assert claims["sub"] == "svc"


@pytest.mark.parametrize(("args", "words"), [
    (["--claims", '{"exp": 1}'], "--claims must not set exp"),
    (["--claims", "[1]"], "--claims must be a JSON object"),
    (["--ttl", "0"], "--ttl must be from 1 to 31622400 seconds"),
])
def test_token_arguments_that_cannot_work_are_one_line(
    tmp_path: Path, args: list[str], words: str
) -> None:
    path = _initialised(tmp_path)
    result = securews("token", "--config", str(path), "--sub", "a", *args,
                      cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"securews: error: {words}" + (
        " (use --sub and --ttl)" if "must not set" in words else "") + "\n"


def test_token_without_the_private_key_says_where_it_looked(tmp_path: Path) -> None:
    path = _initialised(tmp_path)
    (tmp_path / "etc" / "jwt-private.pem").unlink()
    result = securews("token", "--config", str(path), "--sub", "a", cwd=tmp_path)
    assert result.returncode == 2
    assert "jwt-private.pem does not exist: pass --key" in result.stderr


def test_token_signed_with_another_key_is_refused(tmp_path: Path) -> None:
    """A key that does not match the server's is caught before printing."""
    path = _initialised(tmp_path)
    securews("init", str(tmp_path / "other"), cwd=tmp_path)
    result = securews("token", "--config", str(path), "--sub", "a", "--key",
                      str(tmp_path / "other" / "jwt-private.pem"), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert "the server would refuse this token: bad_signature" in result.stderr


# -- client ----------------------------------------------------------------------


def test_client_sends_lines_and_prints_messages(
    tmp_path: Path, dev_server: tuple[int, Path]
) -> None:
    """Lines in, echoes out; end of input closes cleanly (exit 0)."""
    port, cert = dev_server
    result = securews("client", f"wss://127.0.0.1:{port}/ws", "--cafile", str(cert),
                      cwd=tmp_path, stdin="hello\nsecurews\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\nsecurews\n"
    assert result.stderr.splitlines() == [f"connected to wss://127.0.0.1:{port}/ws",
                                          "closed: 1000"]


@pytest.mark.parametrize(("extra", "words"), [
    ([], "TLS failed: certificate verify failed (trust the server's certificate "
         "or its CA with --cafile)"),
    (["--origin", "https://evil.example"], "the server refused the handshake: "
                                           "403 Forbidden"),
])
def test_client_failures_are_one_line_and_exit_1(
    tmp_path: Path, dev_server: tuple[int, Path], extra: list[str], words: str
) -> None:
    port, cert = dev_server
    args = ["--cafile", str(cert), *extra] if extra else []
    result = securews("client", f"wss://127.0.0.1:{port}/ws", *args, cwd=tmp_path,
                      stdin="x\n")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"securews: error: wss://127.0.0.1:{port}/ws: {words}"]
    assert result.stdout == ""


def test_client_refuses_a_url_that_is_not_websocket(tmp_path: Path) -> None:
    result = securews("client", "https://127.0.0.1/ws", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == ("securews: error: 'https://127.0.0.1/ws' is not a "
                             "ws:// or wss:// URL\n")


def test_python_m_securews_cli_is_the_same_command(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "securews.cli", "version"],
                            cwd=tmp_path, env=clean_env(), text=True,
                            capture_output=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("securews ")
