"""
Sampling a server with py-spy and summarising where its time goes.

``py-spy record --format raw`` writes one line per distinct stack,
``frame;frame;...;frame COUNT``, each frame ``name (file:line)``.
:func:`summarise` turns that into shares of the samples: per library (by
the file of the innermost frame, system calls apart), and the
securews-owned functions with their inclusive and own ("self") shares of
the samples spent in Python.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*):(?P<line>\d+)\)$")

#: Library of a frame, by the first directory of its file (py-spy shortens
#: paths to start at the package) or the first of these anywhere in it.
LIBRARIES = {
    "securews": "securews",
    "autobahn": "autobahn",
    "txaio": "autobahn",
    "twisted": "twisted",
    "OpenSSL": "pyOpenSSL",
    "cryptography": "pyOpenSSL",
    "zope": "zope",
    "attr": "attrs",
    "websockets": "websockets",
    "asyncio": "asyncio",
}


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> None:
    """Sample ``pid`` for ``seconds`` (without stopping it) into ``out``."""
    beside = Path(sys.executable).parent / "py-spy"
    exe = str(beside) if beside.exists() else shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    subprocess.run(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
         "--rate", str(rate), "--nonblocking", "--format", "raw",
         "-o", str(out)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def library(frame: str) -> str:
    """The library a frame's code belongs to (``"python"`` for the rest)."""
    match = _FRAME.match(frame)
    parts = (match["file"] if match else frame).split("/")
    for part in parts[:-1]:
        if part in LIBRARIES:
            return LIBRARIES[part]
    if parts[-1] in ("_servers.py", "_harness.py"):
        return "bench"
    return "python"


#: Innermost frames that mean "in a system call": socket writes, socket
#: reads, waiting in epoll.  On a loaded machine a process is mostly
#: preempted on its way out of a system call, so these also soak up the
#: time it spent waiting for a CPU.
SYSCALLS = {
    ("untilConcludes", "twisted/python/util.py"),
    ("Connection.doRead", "twisted/internet/tcp.py"),
    ("EPollReactor.doPoll", "twisted/internet/epollreactor.py"),
}


def function(frame: str) -> tuple[str, str]:
    """``(name, shortened file)`` of a frame, without the line."""
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    parts = match["file"].split("/")
    at = next((i for i, p in enumerate(parts[:-1]) if p in LIBRARIES), 0)
    return match["name"], "/".join(parts[at:])


def summarise(raw: str, out: Callable[[str], None], top: int = 15) -> None:
    """Print the shares described in the module docstring."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    total = sum(n for _, n in stacks)
    by_library: Counter[str] = Counter()
    own: Counter[tuple[str, str]] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    for frames, n in stacks:
        innermost = function(frames[-1])
        if innermost in SYSCALLS:
            by_library["system calls"] += n
            continue
        by_library[library(frames[-1])] += n
        if library(frames[-1]) == "securews":
            own[innermost] += n
        for key in {function(f) for f in frames if library(f) == "securews"}:
            inclusive[key] += n
    python = total - by_library["system calls"]
    if not python:
        out("profile: no samples outside system calls")
        return
    out(f"profile: {total} samples; innermost frame: " + ", ".join(
        f"{name} {100 * n / total:.1f}%" for name, n in by_library.most_common()))
    out(f"securews functions, % of the {python} samples outside system calls: "
        f"inclusive (self), top {top}:")
    for key, n in inclusive.most_common(top):
        out(f"  {100 * n / python:5.1f}% ({100 * own[key] / python:4.1f}%)  "
            f"{key[0]} ({key[1]})")
