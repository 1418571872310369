"""
What securews's per-message controls cost: echo throughput side by side.

Run (about 90 seconds at the defaults; loopback only, 127.0.0.1)::

    python bench/echo_overhead.py [--seconds 5] [--clients 1,20] [--size 32,16384]

It makes a throwaway certificate (``trustme`` if installed, else the
``--dev`` self-signed one, in a temporary directory), starts every server
kind in its own process (this script in ``--serve`` mode, pinned to the
first CPU) and drives them from this process (pinned to the second CPU).
Each client connection sends one message, waits for the echo and sends
the next.  Sizes below 1024 bytes are ASCII text, larger ones random
binary.

For each load (size x clients) every kind gets its connections and
``--warmup`` seconds, then the kinds take turns in ``--slice``-second
slices (the first kind rotating) until each has run ``--seconds``: load
that other programs put on the machine then falls on all kinds alike.
Between slices a kind's connections stop sending and drain.  Round trips,
and the CPU time of the server, of this process and of the whole machine,
are summed over a kind's slices (CPU and run-queue time from
``/proc/<pid>/task/*/schedstat``, the machine's from ``/proc/stat``).

Server kinds (all serve ``/ws`` over the same securews TLS context; all
but ``autobahn-defaults`` with the Autobahn options a
``SecureServerFactory`` sets: 64 KiB frame and message limits, UTF-8
validation, masked client frames, no compression, no Autobahn
auto-ping):

``securews-on``
    :class:`securews.SecureServerFactory` with the built-in echo app and
    every in-session control working: the anonymous authenticator (given
    as ``authenticator=``), the message and byte token buckets (rates
    raised to their maxima so that this load is legal; both are still
    charged for every message), ``[messages]`` validation (format
    ``"any"``: text is checked for UTF-8 again), the session timer with a
    heartbeat every second (``ping_interval = 1``, so pings really happen
    during the run) and the idle and lifetime deadlines, the fragment
    count, and the write-buffer check after every send (with whatever
    else securews does per message, such as counting it for metrics).
``securews-min``
    The same server with the cheapest legal settings: heartbeat, ping and
    idle timeouts at their maxima, no lifetime limit.  securews has no
    switch that turns a control off (limits are bounded so that a typo
    cannot disable a defence) and its protocol class is sealed against
    overriding them, so this is as far "off" as the real server goes.
    Its per-message work is that of ``securews-on``; only the timer fires
    less often.
``autobahn``
    The baseline, "controls off": Autobahn's ``WebSocketServerFactory``
    and a plain echo ``WebSocketServerProtocol`` behind securews's TLS
    context (``securews.tls.server_context`` in ``TLSMemoryBIOFactory``),
    its Autobahn options copied from a ``SecureServerFactory`` built with
    the same settings.  On the per-message path, what separates
    it from ``securews-on`` is securews's session layer and nothing else.
``autobahn-defaults`` (only with ``--kinds``)
    The same with Autobahn's default options (no size limits).

Columns: ``msg/s`` round trips per second over all connections (median
of the slices); ``srv CPU%`` the server's CPU use (100 = one core);
``wait%`` the time it was runnable but not running (waiting for a CPU
that other programs held, or, in a virtual machine, for its idle CPU to
be woken); ``us/msg`` server CPU microseconds per round trip (median of
the slices); ``cli%`` this process's CPU use; ``other%`` every other
program's; ``bound``: ``server`` or ``client`` when that side used
>= 90 % of a CPU, ``srv+wait`` when the server was running or runnable
>= 90 % of the time, else ``latency`` (one connection ping-ponging
leaves each side waiting for the other); ``thr/ab`` throughput as a
fraction of ``autobahn``'s under the same load; ``cost/ab`` the
baseline's CPU per message divided by this kind's (1.00: the same; 0.90:
11 % more CPU per message).  ``thr/ab`` understates the server's
overhead when the server is not saturated (the client's and the
kernel's share of a round trip is the same for every kind) and is the
first figure to suffer when other programs load the machine; ``cost/ab``
is steadier on both counts.

The issue's goal ("echo throughput with all controls on is at least 90 %
of the same server with them off") is judged on ``thr/ab`` of the
``securews-on`` rows, and again on ``cost/ab`` (what throughput comes
to once the server is saturated), and printed last.  Performance is measured here,
not asserted: the exit status is 0 either way.

The client is picows (C, asyncio; ``pip install picows``) when installed,
else the ``websockets`` asyncio client; ``--client`` chooses.  Whether
Autobahn's native NVX code (UTF-8 validation, masking) is in use is
printed first; ``AUTOBAHN_USE_NVX=0`` turns it off for every kind.

``--serve KIND PORT CERT KEY`` is the server mode used internally (port 0
picks a free port, reported as ``READY <port>``); with ``--keep`` the
servers' pids are printed and the run waits for Enter before measuring,
so that a profiler (``py-spy record --pid PID``) can attach.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import glob
import os
import selectors
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: Measure this checkout's securews, not a copy installed elsewhere.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("securews-on", "securews-min", "autobahn", "autobahn-defaults")
DEFAULT_KINDS = ("securews-on", "securews-min", "autobahn")
BASELINE = "autobahn"
GOAL = 0.90
#: CPU% (or server CPU% + wait%) at which a side counts as saturated.
SATURATED = 90.0
#: Other programs' CPU use (% of one CPU) that makes a row suspect.
BUSY = 10.0
PATH = "/ws"
#: Messages of this size and larger are binary, smaller ones ASCII text.
BINARY_FROM = 1024
#: Seconds a kind runs after it resumes before its slice is counted.
SETTLE = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- CPU placement and accounting ----------------------------------------------


def cpu_pair() -> tuple[int, int] | None:
    """The CPUs for the servers and the client, or ``None`` on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def schedstat(pid: int | str = "self") -> tuple[float, float]:
    """``(on-CPU, waiting for a CPU)`` seconds of all of a process's threads."""
    run = wait = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError), open(path) as f:
            fields = f.read().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


def busy_seconds() -> float:
    """CPU time all CPUs spent busy (including time stolen by the host)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def nvx_status() -> str:
    """Whether Autobahn's native (NVX) UTF-8 validator and masker are in use."""
    import autobahn.websocket as ws
    from autobahn.websocket import utf8validator, xormasker

    validator = utf8validator.Utf8Validator.__module__
    masker = xormasker.create_xor_masker.__module__
    return (f"HAS_NVX={ws.HAS_NVX} USES_NVX={ws.USES_NVX} "
            f"(AUTOBAHN_USE_NVX={os.environ.get('AUTOBAHN_USE_NVX', '')!r}); "
            f"UTF-8 validator from {validator}, masker from {masker}")


# -- the servers (each in its own process) -------------------------------------


#: Raised so the load is legal; the buckets are still charged per message.
RATES = {
    "connections_per_ip": 100_000,
    "connect_rate": 100_000,
    "connect_burst": 1_000_000,
    "messages_per_second": 1_000_000,
    "message_burst": 10_000_000,
    "bytes_per_second": 2**34,
    "bytes_burst": 2**34,
}

LIMITS: dict[str, dict[str, object]] = {
    "securews-on": {"ping_interval": 1.0},
    "securews-min": {"ping_interval": 3600, "ping_timeout": 3600,
                     "idle_timeout": 7 * 86400, "max_lifetime": 0},
}


def securews_factory(kind: str, cert: str, key: str, log_file: str,
                     reactor: Any) -> Any:
    from securews import SecureServerFactory
    from securews.auth.anonymous import AnonymousAuthenticator
    from securews.testing import make_config

    config = make_config(
        server={"path": PATH},
        tls={"cert": cert, "key": key},
        log={"file": log_file},
        origin={"allow_missing": True},
        auth={"methods": []},  # replaced by the authenticator below
        ratelimit=RATES,
        limits=LIMITS[kind],
        messages={"format": "any", "allow_binary": True},
    )
    return SecureServerFactory(config, authenticator=AnonymousAuthenticator(),
                               reactor=reactor)


def autobahn_factory(kind: str, cert: str, key: str, log_file: str,
                     reactor: Any) -> Any:
    from autobahn.twisted.websocket import (
        WebSocketServerFactory,
        WebSocketServerProtocol,
    )
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from securews.tls import server_context

    class Echo(WebSocketServerProtocol):  # type: ignore[misc]
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = Echo
    secure = securews_factory("securews-on", cert, key, log_file, reactor)
    if kind == "autobahn":
        # Autobahn's options exactly as securews sets them.
        for name in WebSocketServerProtocol.CONFIG_ATTRS:
            setattr(factory, name, getattr(secure, name))
    return TLSMemoryBIOFactory(server_context(secure.config.tls), False, factory)


def serve(kind: str, port: int, cert: str, key: str) -> None:
    """Server mode: listen on 127.0.0.1, print ``READY <port>``, run."""
    with contextlib.suppress(OSError, AttributeError):
        # Linux PR_SET_PDEATHSIG: die with the parent, however it ends.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    pair = cpu_pair()
    if pair is not None:
        os.sched_setaffinity(0, {pair[0]})
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.logger import globalLogBeginner, textFileLogObserver

    log_file = str(Path(cert).parent / f"{kind}.log")
    if kind.startswith("securews"):
        from securews import listening_factory
        from securews.logs import make_observer

        factory = securews_factory(kind, cert, key, log_file, reactor)
        globalLogBeginner.beginLoggingTo([make_observer(factory.config.log)],
                                         redirectStandardIO=False)
        wrapped = listening_factory(factory)
    else:
        log = open(log_file, "a")  # noqa: SIM115 -- open for the process's life
        globalLogBeginner.beginLoggingTo([textFileLogObserver(log)],
                                         redirectStandardIO=False)
        wrapped = autobahn_factory(kind, cert, key, log_file, reactor)
    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")

    def ready(listening: Any) -> None:
        print(f"READY {listening.getHost().port}", flush=True)

    def failed(failure: Any) -> None:
        print(f"FAILED {failure.getErrorMessage()}", flush=True)
        reactor.stop()

    endpoint.listen(wrapped).addCallbacks(ready, failed)
    reactor.run()


class Server:
    """A ``--serve`` child process, listening once constructed."""

    def __init__(self, kind: str, cert: str, key: str, timeout: float = 30.0) -> None:
        self.kind = kind
        self.log = Path(cert).parent / f"{kind}.log"
        self.stderr = open(Path(cert).parent / f"{kind}.stderr", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", kind, "0",
             cert, key],
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid
        try:
            self.port = self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"{self.kind}: not ready after {timeout}s"
                                       f"{self.stderr_tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    raise RuntimeError(f"{self.kind}: exited before listening"
                                       f"{self.stderr_tail()}")
                line += chunk
        word, _, rest = line.decode().strip().partition(" ")
        if word != "READY":
            raise RuntimeError(f"{self.kind}: {line.decode().strip()}")
        return int(rest)

    def stderr_tail(self) -> str:
        """The end of the server's log and stderr (gone with the temp dir)."""
        self.stderr.seek(0)
        tail = self.stderr.read()[-2000:].decode(errors="replace")
        with contextlib.suppress(OSError):
            tail = self.log.read_text(errors="replace")[-2000:] + tail
        return f"\n{tail}" if tail else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@contextlib.contextmanager
def servers(kinds: list[str], cert: str, key: str) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        for kind in kinds:
            started[kind] = Server(kind, cert, key)
        yield started
    finally:
        for server in started.values():
            server.stop()


# -- the load -------------------------------------------------------------------


class Load:
    """
    ``clients`` connections that echo ``payload`` while resumed; ``count``
    is the round trips so far.
    """

    name = ""

    def __init__(self, url: str, ctx: ssl.SSLContext, clients: int,
                 payload: bytes, binary: bool) -> None:
        self.url, self.ctx, self.clients = url, ctx, clients
        self.payload, self.binary = payload, binary
        self.count = 0
        self.errors: list[str] = []
        self.running = self.closing = False
        self.in_flight = 0
        self.drained = asyncio.Event()

    async def connect(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    async def pause(self) -> None:
        """Stop sending; return once every echo in flight has come back."""
        self.running = False
        if self.in_flight and not self.errors:
            try:
                await asyncio.wait_for(self.drained.wait(), 30)
            except TimeoutError:
                self.errors.append(f"{self.in_flight} echoes never came back")

    def _failed(self, error: str) -> None:
        if not self.closing:
            self.errors.append(error)
            self.drained.set()

    def _landed(self) -> None:
        self.in_flight -= 1
        if not self.running and not self.in_flight:
            self.drained.set()

    async def close(self) -> None:
        raise NotImplementedError


class PicowsLoad(Load):
    name = "picows"

    async def connect(self) -> None:
        from picows import WSListener, WSMsgType, ws_connect

        load = self
        self.msg_type = msg_type = (WSMsgType.BINARY if self.binary
                                    else WSMsgType.TEXT)
        size = len(self.payload)

        class Echoer(WSListener):  # type: ignore[misc]
            received = 0

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                kind = frame.msg_type
                if kind == msg_type or kind == WSMsgType.CONTINUATION:
                    self.received += frame.payload_size
                    if not frame.fin:
                        return
                    if self.received != size:
                        load.errors.append(f"echo of {self.received} bytes")
                    self.received = 0
                    load.count += 1
                    if load.running:
                        transport.send(msg_type, load.payload)
                    else:
                        load._landed()
                elif kind == WSMsgType.CLOSE:
                    load._failed(f"closed by the server: {frame.get_close_code()}")
                    transport.disconnect()

            def on_ws_disconnected(self, transport: Any) -> None:
                load._failed("disconnected by the server")

        self.transports = []
        for _ in range(self.clients):
            transport, _listener = await ws_connect(
                Echoer, self.url, ssl_context=self.ctx, max_frame_size=1 << 20)
            self.transports.append(transport)

    def resume(self) -> None:
        self.running = True
        self.drained.clear()
        self.in_flight = len(self.transports)
        for transport in self.transports:
            transport.send(self.msg_type, self.payload)

    async def close(self) -> None:
        self.closing = True
        for transport in self.transports:
            transport.send_close()
            transport.disconnect()
        for transport in self.transports:
            await asyncio.wait_for(transport.wait_disconnected(), 10)


class WebsocketsLoad(Load):
    name = "websockets"

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        self.go = asyncio.Event()
        self.conns = [await connect(self.url, ssl=self.ctx, compression=None,
                                    max_size=1 << 20, ping_interval=None)
                      for _ in range(self.clients)]
        message = self.payload if self.binary else self.payload.decode()
        self.tasks = [asyncio.create_task(self._echo(c, message)) for c in self.conns]

    async def _echo(self, conn: Any, message: bytes | str) -> None:
        try:
            while True:
                await self.go.wait()
                if self.closing:
                    return
                if not self.running:
                    continue
                self.in_flight += 1
                await conn.send(message)
                if len(await conn.recv()) != len(message):
                    self.errors.append("short echo")
                self.count += 1
                self._landed()
        except Exception as e:  # report, don't hide, a broken connection
            self._failed(f"{type(e).__name__}: {e}")

    def resume(self) -> None:
        self.running = True
        self.drained.clear()
        self.go.set()

    async def pause(self) -> None:
        self.go.clear()
        await super().pause()

    async def close(self) -> None:
        self.closing = True
        self.go.set()
        await asyncio.gather(*self.tasks)
        for conn in self.conns:
            await asyncio.wait_for(conn.close(), 10)


def client_class(name: str) -> type[Load]:
    if name == "auto":
        try:
            import picows  # noqa: F401
        except ImportError:
            return WebsocketsLoad
        return PicowsLoad
    return PicowsLoad if name == "picows" else WebsocketsLoad


# -- measuring --------------------------------------------------------------------


class Tally:
    """One kind's sums over its slices of one load."""

    def __init__(self) -> None:
        self.wall = self.messages = 0.0
        self.server = self.server_wait = self.client = self.client_wait = 0.0
        self.busy = 0.0
        self.rates: list[float] = []
        self.costs: list[float] = []

    def row(self) -> dict[str, float]:
        w = self.wall
        return {
            "rate": statistics.median(self.rates),
            "server": 100 * self.server / w,
            "wait": 100 * self.server_wait / w,
            "client": 100 * self.client / w,
            "client_wait": 100 * self.client_wait / w,
            "other": max(0.0, 100 * (self.busy - self.server - self.client) / w),
            "us": statistics.median(self.costs),
        }


def snapshot(load: Load, server: Server) -> tuple[float, ...]:
    return (time.monotonic(), load.count, *schedstat(server.pid),
            *schedstat(), busy_seconds())


async def measure(running: dict[str, Server], kinds: list[str],
                  load_cls: type[Load], ctx: ssl.SSLContext, clients: int,
                  size: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every kind under one load, in turns; a row of figures per kind."""
    binary = size >= BINARY_FROM
    payload = os.urandom(size) if binary else b"x" * size
    loads = {kind: load_cls(f"wss://127.0.0.1:{running[kind].port}{PATH}", ctx,
                            clients, payload, binary) for kind in kinds}
    tallies = {kind: Tally() for kind in kinds}
    slices = max(1, round(args.seconds / args.slice))
    connected: list[Load] = []
    try:
        for kind in kinds:
            await asyncio.wait_for(loads[kind].connect(), 60)
            connected.append(loads[kind])
        for kind in kinds:
            loads[kind].resume()
            await asyncio.sleep(args.warmup)
            await loads[kind].pause()
        for i in range(slices):
            for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
                load, server, tally = loads[kind], running[kind], tallies[kind]
                load.resume()
                await asyncio.sleep(SETTLE)
                before = snapshot(load, server)
                await asyncio.sleep(args.slice)
                after = snapshot(load, server)
                await load.pause()
                if load.errors or not server.alive():
                    raise RuntimeError(
                        f"{kind}, {label(size)} x{clients}: "
                        f"{load.errors[0] if load.errors else 'server exited'}"
                        f"{server.stderr_tail()}")
                wall, n, srv, srv_wait, cli, cli_wait, busy = (
                    b - a for a, b in zip(before, after, strict=True))
                tally.wall += wall
                tally.messages += n
                tally.server += srv
                tally.server_wait += srv_wait
                tally.client += cli
                tally.client_wait += cli_wait
                tally.busy += busy
                tally.rates.append(n / wall)
                tally.costs.append(1e6 * srv / max(n, 1))
    finally:
        for load in connected:
            with contextlib.suppress(Exception):
                await load.close()
    for kind, tally in tallies.items():
        if not tally.messages:
            raise RuntimeError(f"{kind}: no round trip completed")
    return {kind: tally.row() for kind, tally in tallies.items()}


# -- certificate ------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[str, str, str]:
    """``(cert, key, ca)`` PEM paths for 127.0.0.1; trustme if installed."""
    try:
        import trustme
    except ImportError:
        import datetime

        from securews.dev import ensure_certificate

        made, made_key = ensure_certificate(
            directory, now=datetime.datetime.now(datetime.UTC))
        return str(made), str(made_key), str(made)
    cert, key, ca = (str(directory / n) for n in ("cert.pem", "key.pem", "ca.pem"))
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    authority.cert_pem.write_to_path(ca)
    return cert, key, ca


# -- the run --------------------------------------------------------------------


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Echo throughput of securews with its controls against "
                    "bare Autobahn (see the module docstring).")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="measured seconds per kind and load (default 5)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="unmeasured seconds per kind and load (default 1)")
    p.add_argument("--slice", type=float, default=0.5,
                   help="seconds a kind runs per turn (default 0.5)")
    p.add_argument("--clients", type=ints, default=[1, 20],
                   help="connection counts, comma-separated (default 1,20)")
    p.add_argument("--size", type=ints, default=[32, 16384],
                   help=f"message sizes in bytes, comma-separated; below "
                        f"{BINARY_FROM} ASCII text, else binary (default "
                        "32,16384)")
    p.add_argument("--kinds", type=lambda s: s.split(","),
                   default=list(DEFAULT_KINDS),
                   help=f"server kinds, comma-separated, from {', '.join(KINDS)}")
    p.add_argument("--client", choices=("auto", "picows", "websockets"),
                   default="auto",
                   help="load generator (default: picows if installed)")
    p.add_argument("--keep", action="store_true",
                   help="print the servers' pids and wait for Enter first")
    p.add_argument("--serve", nargs=4, metavar=("KIND", "PORT", "CERT", "KEY"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve is None:
        unknown = set(args.kinds) - set(KINDS)
        if unknown:
            p.error(f"unknown kinds: {', '.join(sorted(unknown))}")
        if (args.seconds <= 0 or args.slice <= 0 or args.warmup < 0
                or not args.clients or not args.size
                or min(args.clients) < 1 or min(args.size) < 1):
            p.error("--seconds, --slice, --clients and --size must be "
                    "positive, --warmup not negative")
    return args


def label(size: int) -> str:
    kind = "bin" if size >= BINARY_FROM else "txt"
    return f"{size // 1024}K {kind}" if size >= 1024 else f"{size}B {kind}"


def bound(row: dict[str, float]) -> str:
    if row["server"] >= SATURATED:
        return "server"
    if row["client"] >= SATURATED:
        return "client"
    if row["server"] + row["wait"] >= SATURATED:
        return "srv+wait"
    return "latency"


def report(results: dict[tuple[int, int], dict[str, dict[str, float]]],
           kinds: list[str], out: Callable[[str], None]) -> None:
    """Print the table, the warnings and the verdict on the goal."""
    head = (f"{'kind':<17} {'size':>7} {'clients':>7} {'msg/s':>7} "
            f"{'srv CPU%':>8} {'wait%':>5} {'us/msg':>7} {'cli%':>4} "
            f"{'other%':>6} {'bound':>8} {'thr/ab':>6} {'cost/ab':>7}")
    out(head)
    out("-" * len(head))
    lowest: dict[str, tuple[float, str]] = {}
    busiest = 0.0
    for (size, clients), rows in results.items():
        base = rows.get(BASELINE)
        for kind in kinds:
            row = rows[kind]
            thr = cost = "-"
            if base is not None:
                ratios = {"throughput": row["rate"] / base["rate"],
                          "CPU per message": base["us"] / row["us"]}
                thr, cost = (f"{r:.2f}" for r in ratios.values())
                for what, ratio in ratios.items():
                    if kind == "securews-on" and ratio < lowest.get(what, (2.0,))[0]:
                        lowest[what] = (ratio, f"{label(size)}, {clients} clients")
            busiest = max(busiest, row["other"])
            out(f"{kind:<17} {label(size):>7} {clients:>7} {row['rate']:>7.0f} "
                f"{row['server']:>8.0f} {row['wait']:>5.0f} {row['us']:>7.1f} "
                f"{row['client']:>4.0f} {row['other']:>6.0f} {bound(row):>8} "
                f"{thr:>6} {cost:>7}")
        out("")
    if busiest >= BUSY:
        out(f"note: other programs used up to {busiest:.0f}% CPU during the "
            "run (see other% and wait%); the kinds took turns, so they share "
            "that disturbance, but throughput ratios swing with it: trust "
            "cost/ab more, or rerun on a quiet machine")
    if not lowest:
        out("goal not judged: needs both securews-on and autobahn in --kinds")
        return
    for what, (ratio, where) in lowest.items():
        met = "MET" if ratio >= GOAL else "NOT MET"
        out(f"goal: securews-on {what} >= {GOAL:.2f} x autobahn in every row: "
            f"{met} (lowest {ratio:.2f}, {where})")


async def run(args: argparse.Namespace, cert: str, key: str, ca: str,
              out: Callable[[str], None]) -> None:
    import securews

    ctx = ssl.create_default_context(cafile=ca)
    load_cls = client_class(args.client)
    out(f"securews {securews.__version__} from {Path(securews.__file__).parent}")
    out(f"client: {load_cls.name}; NVX: {nvx_status()}")
    results: dict[tuple[int, int], dict[str, dict[str, float]]] = {}
    with servers(args.kinds, cert, key) as running:
        if args.keep:
            for kind, server in running.items():
                print(f"{kind}: pid {server.pid}, port {server.port}",
                      file=sys.stderr)
            await asyncio.to_thread(input, "Enter to start measuring: ")
        for size in args.size:
            for clients in args.clients:
                started = time.monotonic()
                results[size, clients] = await measure(
                    running, args.kinds, load_cls, ctx, clients, size, args)
                print(f"  {label(size)} x{clients}: "
                      f"{time.monotonic() - started:.0f}s", file=sys.stderr)
    out("")
    report(results, args.kinds, out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        kind, port, cert, key = args.serve
        serve(kind, int(port), cert, key)
        return 0
    # A SIGTERM still runs the ``finally`` blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loads = len(args.size) * len(args.clients)
    slices = max(1, round(args.seconds / args.slice))
    per_kind = args.warmup + slices * (args.slice + SETTLE + 0.05) + 0.5
    print(f"{loads} loads x {len(args.kinds)} kinds: about "
          f"{loads * len(args.kinds) * per_kind + 5:.0f}s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="securews-bench-") as tmp:
        cert, key, ca = make_certificate(Path(tmp))
        pair = cpu_pair()
        if pair is None:
            print("one CPU only: servers and client share it", file=sys.stderr)
        else:
            # The servers pin themselves to the other CPU.
            os.sched_setaffinity(0, {pair[1]})
            print(f"servers on CPU {pair[0]}, client on CPU {pair[1]}")
        try:
            asyncio.run(run(args, cert, key, ca, print))
        except KeyboardInterrupt:  # the servers are stopped by now
            print("interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
