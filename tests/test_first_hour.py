"""
A new operator's first hour, end to end, as a user without privileges (as
``nobody`` when the tests run as root): ``securews init`` on a fresh
directory, ``securews check``, ``twistd -n securews --config``, then a
token from ``securews token``, a session with ``securews client``, and
the user revoked with the admin token ``init`` wrote.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.processes import TWISTD, free_port
from tests.support.unprivileged import NOBODY, unprivileged

SECUREWS = str(Path(sys.executable).parent / "securews")
ORIGIN = "https://app.example.com"


def test_init_check_run_token_client_as_a_user() -> None:
    """Every step works on the files the previous one wrote, unprivileged."""
    with unprivileged() as user:
        etc = user.home / "securews"
        user_id = NOBODY if os.getuid() == 0 else os.getuid()
        port, admin = free_port(), free_port()
        init = user.run(SECUREWS, "init", str(etc), "--self-signed", "--listen",
                        f"tcp:{port}:interface=127.0.0.1", "--admin-listen",
                        f"tcp:{admin}:interface=127.0.0.1", "--origin", ORIGIN)
        assert init.returncode == 0, init.stderr
        config = etc / "securews.toml"
        assert f"securews check --config {config}" in init.stdout
        for path in etc.rglob("*"):
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
                assert path.stat().st_uid == user_id

        check = user.run(SECUREWS, "check", "--config", str(config))
        assert (check.returncode, check.stdout) == (0, f"securews: {config}: OK\n"), \
            check.stderr

        log = user.home / "twistd.out"
        with open(log, "w") as out:
            server = subprocess.Popen(
                user.popen_args(TWISTD, "-n", "--pidfile=", "securews", "--config",
                                str(config)),
                cwd=user.home, env=user.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            while "securews listening on" not in log.read_text():
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            status = Path(f"/proc/{server.pid}/status").read_text()
            uids = next(line for line in status.splitlines()
                        if line.startswith("Uid:")).split()[1:]
            assert set(uids) == {str(user_id)}

            token = user.run(SECUREWS, "token", "--config", str(config), "--sub",
                             "alice")
            assert token.returncode == 0, token.stderr
            session = user.run(
                SECUREWS, "client", f"wss://127.0.0.1:{port}/ws", "--cafile",
                str(etc / "tls" / "cert.pem"), "--origin", ORIGIN, "--token",
                token.stdout.strip(), stdin="hello from the first hour\n")
            assert session.returncode == 0, session.stderr
            assert session.stdout == "hello from the first hour\n"
            refused = user.run(
                SECUREWS, "client", f"wss://127.0.0.1:{port}/ws", "--cafile",
                str(etc / "tls" / "cert.pem"), "--origin", ORIGIN, stdin="x\n")
            assert refused.returncode == 1
            assert "401 Unauthorized" in refused.stderr

            revoke = urllib.request.Request(
                f"http://127.0.0.1:{admin}/revoke", method="POST",
                data=json.dumps({"principal": "alice"}).encode(),
                headers={"Authorization": "Bearer "
                         + (etc / "admin-token").read_text().strip()})
            with urllib.request.urlopen(revoke, timeout=10) as answer:
                assert answer.status // 100 == 2
            revoked = user.run(
                SECUREWS, "client", f"wss://127.0.0.1:{port}/ws", "--cafile",
                str(etc / "tls" / "cert.pem"), "--origin", ORIGIN, "--token",
                token.stdout.strip(), stdin="x\n")
            assert revoked.returncode == 1
            assert "401 Unauthorized" in revoked.stderr
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(15)
        text = log.read_text()
        assert "method=jwt reason=None principal=alice" in text
        assert token.stdout.strip() not in text
        assert "Traceback" not in text
