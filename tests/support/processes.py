"""
Running the installed ``twistd securews`` as an operator does: a child
process from a scratch directory, with an environment that cannot load
securews from the source tree, its TOML configuration, and its memory.
Shared by test_twistd.py, test_session_e2e.py and the attack suite
(tests/attacks/).

Memory: :func:`peak_rss` resets the process's peak-RSS counter (``echo 5
> /proc/<pid>/clear_refs``, Linux >= 4.0) and reads ``VmRSS`` before the
block, ``VmHWM`` after it: the growth is the highest the resident memory
went during the block above where it started.  Kernel socket buffers are
not part of RSS.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs

__all__ = ["TWISTD", "Peak", "Server", "clean_env", "free_port", "memory",
           "peak_rss", "toml", "twistd"]

TWISTD = str(Path(sys.executable).parent / "twistd")
KiB, MiB = 2**10, 2**20


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


def toml(sections: dict[str, dict[str, object]]) -> str:
    """A securews TOML file: one table per section, each value a TOML scalar
    or array."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else (
                json.dumps(value) if isinstance(value, str | list) else repr(value))
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


# -- memory ------------------------------------------------------------------------


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of process ``pid``, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0]) * KiB
    return values


@attrs.define
class Peak:
    before: int = 0
    peak: int = 0

    @property
    def growth(self) -> int:
        return self.peak - self.before


@contextmanager
def peak_rss(pid: int, what: str, bound: int | None = None) -> Iterator[Peak]:
    """Process ``pid``'s peak resident memory while the block runs (filled
    in when it ends), printed with the ``bound`` the caller will apply."""
    peak = Peak()
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    peak.before = memory(pid)["VmRSS"]
    yield peak
    peak.peak = memory(pid)["VmHWM"]
    limit = "" if bound is None else f" (bound {bound / MiB:.1f} MiB)"
    print(f"\nRSS {what}: before {peak.before / MiB:.1f} MiB, peak "
          f"{peak.peak / MiB:.1f} MiB, growth {peak.growth / MiB:.2f} MiB{limit}")
