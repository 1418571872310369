"""
Running the installed ``twistd securews`` as an operator does: a child
process from a scratch directory, with an environment that cannot load
securews from the source tree.  Shared by test_twistd.py and the attack
suite (tests/attacks/).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["TWISTD", "Server", "clean_env", "free_port", "twistd"]

TWISTD = str(Path(sys.executable).parent / "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    """The environment minus anything that would load securews from source."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    return env


def twistd(*args: str, cwd: Path,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TWISTD, *args], cwd=cwd, env=clean_env(), text=True,
                          capture_output=True, timeout=timeout, check=False)


class Server:
    """
    A ``twistd -n securews`` child process and its output file.

    :param program: what runs twistd; another program must behave as
        twistd's own script does (``twisted.scripts.twistd.run``).
    """

    def __init__(self, args: list[str], cwd: Path,
                 program: Sequence[str] = (TWISTD,)) -> None:
        self.output = cwd / "twistd.out"
        with open(self.output, "w") as out:
            self.process = subprocess.Popen(
                [*program, "--nodaemon", "--pidfile=", "securews", *args], cwd=cwd,
                env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never logged:\n{self.text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
