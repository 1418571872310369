"""
The peer benchmark's compiled client: ``bench/wsload.c`` (C, epoll,
OpenSSL), built here with the system's C compiler and driven as a
:class:`_loads.Load` through a page of shared memory.

Why: the client has one CPU, as the servers have one.  A client in
Python, even picows on uvloop, spends about as much CPU per echoed
message as the server it measures, so with 50 connections it became the
limit (99 % of its CPU) and the server CPU per message described the
client's pace more than the server.  wsload needs a fraction of that.
"""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _harness import Addresses, affinity
from _loads import Load

SOURCE = Path(__file__).with_name("wsload.c")
#: struct shared in wsload.c.
LAYOUT = struct.Struct("=QQIIIIIIII64s192s")
#: Byte offsets of its fields.
OFFSET = {"count": 0, "addresses": 8, "running": 16, "resumes": 20, "acked": 24,
          "in_flight": 28, "stop": 32, "failed": 36, "ready": 40, "resumed": 44,
          "tls": 48, "error": 112}
#: Source addresses set aside for one churn load (a few hundred a second
#: for the seconds it runs).
CHURN_ADDRESSES = 100_000


class Unavailable(Exception):
    """No C compiler or no OpenSSL headers: the reason, one line."""


def build() -> Path:
    """
    Compile wsload once per version of its source (cached in
    ``~/.cache/securews``).

    :raises Unavailable: when it cannot be built here.
    """
    source = SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "securews"
    binary = cache / f"wsload-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.exists():
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise Unavailable("no C compiler (Debian: gcc)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / "wsload"
        done = subprocess.run(
            [compiler, "-O2", "-Wall", "-o", str(out), str(SOURCE),
             "-lssl", "-lcrypto", "-lpthread"],
            capture_output=True, text=True)
        if done.returncode:
            first = (done.stderr.strip().splitlines() or ["?"])[0]
            raise Unavailable("cannot build bench/wsload.c (Debian: gcc, "
                              f"libssl-dev): {first}")
        out.replace(binary)
    return binary


def openssl_version(binary: Path) -> str:
    """The OpenSSL wsload is linked with, as ``ldd`` resolves it."""
    done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if "libssl" in line:
            return line.split("=>")[-1].split("(")[0].strip()
    return "?"


class CLoad(Load):
    """
    One wsload process: ``echo`` (``clients`` connections echoing
    ``payload``), ``churn`` (``clients`` threads of whole connections) or
    ``rejoin`` (the same, each connection offering its thread's previous
    TLS session).

    ``final`` holds the last ``count`` and ``resumed`` (handshakes the
    server resumed) once the load is closed.

    ``count`` and ``errors`` are read from the shared page; ``pid`` is the
    process, whose CPU the measurement adds to the client's.
    """

    name = "wsload"

    def __init__(self, binary: Path, mode: str, url: str, cafile: str, clients: int,
                 payload: bytes, binary_frames: bool, *, headers: dict[str, str],
                 addresses: Addresses) -> None:
        super().__init__(url, None, clients, payload, binary_frames,  # type: ignore[arg-type]
                         headers=headers, addresses=addresses)
        self.program, self.mode, self.cafile = binary, mode, cafile
        self.proc: asyncio.subprocess.Process | None = None
        self.page: mmap.mmap | None = None
        self.pid: int | None = None
        self.final: dict[str, int] = {}

    # count and errors live in the page; Load.__init__ assigns both.
    @property  # type: ignore[override]
    def count(self) -> int:
        return self._get("count") if self.page is not None else 0

    @count.setter
    def count(self, value: int) -> None:
        pass

    @property  # type: ignore[override]
    def errors(self) -> list[str]:
        if self.page is None:
            return self._errors
        if not self._get("failed"):
            code = self.proc.returncode if self.proc is not None else None
            if code is None or self.closing:
                return self._errors
            return [*self._errors, f"wsload exited with status {code}"]
        text = self.page[OFFSET["error"]:OFFSET["error"] + 192].split(b"\0")[0]
        return [*self._errors, text.decode("utf-8", "replace") or "wsload failed"]

    @errors.setter
    def errors(self, value: list[str]) -> None:
        self._errors = value

    def _get(self, name: str) -> int:
        assert self.page is not None
        fmt = "=Q" if name in ("count", "addresses") else "=I"
        return int(struct.unpack_from(fmt, self.page, OFFSET[name])[0])

    def _set(self, name: str, value: int) -> None:
        assert self.page is not None
        struct.pack_into("=I", self.page, OFFSET[name], value)

    async def connect(self) -> None:
        assert self.addresses is not None
        parts = urlsplit(self.url)
        target = parts.path + ("?" + parts.query if parts.query else "")
        first = self.addresses.used
        self.addresses.used += self.clients if self.mode == "echo" else CHURN_ADDRESSES
        self._file = tempfile.TemporaryFile(prefix="wsload-")  # noqa: SIM115 (closed in close())
        self._file.write(b"\0" * mmap.PAGESIZE)
        self._file.flush()
        self.page = mmap.mmap(self._file.fileno(), mmap.PAGESIZE)
        self.proc = await asyncio.create_subprocess_exec(
            str(self.program), self.mode, f"/proc/self/fd/{self._file.fileno()}",
            parts.hostname or "127.0.0.1", str(parts.port), target,
            self.headers.get("Origin", ""), self.cafile, str(self.clients),
            self.payload.hex() or "-", "1" if self.binary else "0", str(first),
            pass_fds=(self._file.fileno(),), stderr=asyncio.subprocess.DEVNULL)
        self.pid = self.proc.pid
        if affinity(self.pid) != os.sched_getaffinity(0):
            raise RuntimeError(f"wsload (pid {self.pid}) may run on CPUs "
                               f"{sorted(affinity(self.pid))}, not the client's")
        while not self._get("ready"):
            if self.errors:
                raise RuntimeError(f"wsload: {(self.errors or ['exited'])[0]}")
            await asyncio.sleep(0.01)
        self.tls = self.page[OFFSET["tls"]:OFFSET["tls"] + 64].split(b"\0")[0].decode()

    def resume(self) -> None:
        self._set("running", 1)
        self._set("resumes", self._get("resumes") + 1)

    async def pause(self) -> None:
        self._set("running", 0)
        for _ in range(30_000):
            if self.errors:
                return
            acked = self.mode != "echo" or self._get("acked") == self._get("resumes")
            if acked and self._get("in_flight") == 0:
                return
            await asyncio.sleep(0.001)
        self._errors.append(f"{self._get('in_flight')} echoes never came back")

    async def close(self) -> None:
        self.closing = True
        if self.page is not None:
            self._set("stop", 1)
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.page is not None:
            self.final = {name: self._get(name) for name in ("count", "resumed")}
            self.page.close()
            self._file.close()


def client_pids(loads: Any) -> list[int]:
    """The wsload processes among ``loads``."""
    return [load.pid for load in loads if getattr(load, "pid", None)]
