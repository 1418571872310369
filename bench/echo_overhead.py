"""
What securews's per-message controls cost: echo throughput side by side.

Run (about 80 seconds at the defaults; loopback only)::

    python bench/echo_overhead.py [--seconds 5] [--clients 1,20] [--size 32,16384]

It makes a throwaway certificate, starts each server kind in its own
process (this script in ``--serve`` mode, pinned to the first CPU), and
drives them from this process (pinned to the second CPU): every client
connection sends one message, waits for the echo, sends the next, as fast
as it can.  After ``--warmup`` seconds, round trips are counted for
``--seconds``; the servers' and the client's CPU time over the same window
come from ``/proc/<pid>/stat``.  Kinds are measured one after another for
each load, so they share the machine's state of the moment; ``--rounds``
repeats everything and reports the median.

Server kinds (all serve ``/ws`` over the same securews TLS context, with
the same wire options: 64 KiB frame and message limits, UTF-8 validation,
masked client frames, no compression, no Autobahn auto-ping):

``securews-on``
    :class:`securews.SecureServerFactory` with the built-in echo app and
    every in-session control working: the anonymous authenticator (given
    as ``authenticator=``), the message and byte token buckets (rates
    raised to their maxima so this load is legal; they are still charged
    for every message), ``[messages]`` validation (format ``"any"``:
    UTF-8 checked again for text), the session timer with heartbeats
    every second (``ping_interval = 1``, so pings really happen during
    the run) and the idle and lifetime deadlines, the fragment count and
    the write-buffer check after every send.
``securews-min``
    The same server with the cheapest legal settings: heartbeat, idle and
    ping timeouts at their maxima, no lifetime limit, everything else as
    above.  securews has no switch that turns a control off (limits are
    bounded so that a typo cannot disable a defence) and its protocol
    class is sealed against overriding them, so this is as far "off" as
    the real server goes; the per-message work is the same as
    ``securews-on``, only the timer fires less often.
``autobahn``
    The baseline ("controls off"): Autobahn's own
    ``WebSocketServerFactory`` and a plain echo ``WebSocketServerProtocol``
    behind securews's TLS context in ``TLSMemoryBIOFactory``, with the
    wire options listed above.  What separates it from ``securews-on`` on
    the per-message path is exactly securews's session layer.
``autobahn-defaults`` (only with ``--kinds``)
    The same with Autobahn's defaults (no size limits), for reference.

Columns: ``msg/s`` round trips per second over all connections;
``srv CPU%`` and ``cli CPU%`` the server's and the load generator's
CPU use (100 = one core); ``srv us/msg`` server CPU microseconds per
round trip; ``bound`` which side is saturated (``server`` at >= 90 %
server CPU, ``client`` at >= 90 % client CPU, ``latency`` when neither:
one connection ping-ponging leaves both sides waiting in turn);
``thr/ab`` throughput as a fraction of ``autobahn`` under the same load;
``cost/ab`` the baseline's CPU per message divided by this kind's (1.00:
the same cost; 0.90: 11 % more CPU per message).  Throughput ratios of
``latency`` rows understate the server's overhead, since the client's
share of each round trip is the same for every kind; ``cost/ab`` does not.

The goal (issue: "echo throughput with all controls on is at least 90 %
of the same server with them off") is checked on ``thr/ab`` of the
``securews-on`` rows and printed last.

The client is picows (C, asyncio) when installed
(``pip install picows``), else the ``websockets`` asyncio client;
``--client`` chooses.  Whether Autobahn's native NVX accelerators (UTF-8
validation and masking in C) are in use is printed first: the ratios
depend on it, since the native parts are the same for every kind.

``--serve KIND PORT CERT KEY`` is the server mode used internally (port 0
picks a free port; the chosen one is printed as ``READY <port>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
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
SATURATED = 90.0
#: Other processes' CPU use (in % of one CPU) that makes a row suspect.
BUSY = 10.0
PATH = "/ws"
#: Messages of this size and larger are binary, smaller ones ASCII text.
BINARY_FROM = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- CPU placement and accounting ----------------------------------------------


def cpu_pair() -> tuple[int, int] | None:
    """The CPUs for the server and the client, or ``None`` on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time of a process, from ``/proc``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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
            f"Utf8Validator from {validator}, xor masker from {masker}")


# -- the servers (run in their own processes) -----------------------------------


WIRE_OPTIONS: dict[str, Any] = {
    # What SecureServerFactory sets, minus what needs securews objects.
    "webStatus": False,
    "failByDrop": False,
    "maxFramePayloadSize": 65536,
    "maxMessagePayloadSize": 65536,
    "openHandshakeTimeout": 5.0,
    "closeHandshakeTimeout": 2.0,
    "allowedOrigins": ["*"],
    "allowNullOrigin": False,
    "maxConnections": 0,
    "trustXForwardedFor": 0,
    "autoPingInterval": 0,
    "autoPingTimeout": 0,
    "serveFlashSocketPolicy": False,
    "perMessageCompressionAccept": lambda offers: None,
    "echoCloseCodeReason": False,
    "requireMaskedClientFrames": True,
    "utf8validateIncoming": True,
    "versions": [13],
}

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

LIMITS = {
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
        server={"path": PATH, "max_connections": 10_000},
        tls={"cert": cert, "key": key},
        log={"file": log_file},
        origin={"allow_missing": True},
        auth={"methods": []},
        ratelimit=RATES,
        limits=LIMITS[kind],
        messages={"format": "any", "allow_binary": True},
    )
    factory = SecureServerFactory(config, authenticator=AnonymousAuthenticator(),
                                  reactor=reactor)
    return factory


def autobahn_factory(kind: str, cert: str, key: str, reactor: Any) -> Any:
    from autobahn.twisted.websocket import (
        WebSocketServerFactory,
        WebSocketServerProtocol,
    )
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from securews.testing import make_config
    from securews.tls import server_context

    class Echo(WebSocketServerProtocol):  # type: ignore[misc]
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = Echo
    if kind == "autobahn":
        factory.setProtocolOptions(**WIRE_OPTIONS)
    tls = make_config(tls={"cert": cert, "key": key}).tls
    return TLSMemoryBIOFactory(server_context(tls), False, factory)


def serve(kind: str, port: int, cert: str, key: str) -> None:
    """Server mode: listen on 127.0.0.1, print ``READY <port>``, run."""
    with contextlib.suppress(OSError, AttributeError):
        # Linux: die with the parent, whatever happens to it.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PDEATHSIG
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
        wrapped = autobahn_factory(kind, cert, key, reactor)
    endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")

    def ready(listening: Any) -> None:
        print(f"READY {listening.getHost().port}", flush=True)

    def failed(failure: Any) -> None:
        print(f"FAILED {failure.getErrorMessage()}", flush=True)
        reactor.stop()

    endpoint.listen(wrapped).addCallbacks(ready, failed)
    reactor.run()


class Server:
    """A ``--serve`` child process."""

    def __init__(self, kind: str, cert: str, key: str, timeout: float = 30.0) -> None:
        self.kind = kind
        self.stderr = open(Path(cert).parent / f"{kind}.stderr", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", kind, "0",
             cert, key],
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL,
        )
        self.port = self._wait_ready(timeout)

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
                                       f"{self._stderr_tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    raise RuntimeError(f"{self.kind}: exited before listening"
                                       f"{self._stderr_tail()}")
                line += chunk
        word, _, rest = line.decode().strip().partition(" ")
        if word != "READY":
            raise RuntimeError(f"{self.kind}: {line.decode().strip()}")
        return int(rest)

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        tail = self.stderr.read()[-2000:].decode(errors="replace")
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


# -- the load ---------------------------------------------------------------------


class Load:
    """``clients`` connections echoing ``payload``; ``count`` round trips."""

    def __init__(self, url: str, ctx: ssl.SSLContext, clients: int,
                 payload: bytes, binary: bool) -> None:
        self.url, self.ctx, self.clients = url, ctx, clients
        self.payload, self.binary = payload, binary
        self.count = 0
        self.errors: list[str] = []

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class PicowsLoad(Load):
    name = "picows"

    async def start(self) -> None:
        from picows import WSListener, WSMsgType, ws_connect

        load = self
        msg_type = WSMsgType.BINARY if self.binary else WSMsgType.TEXT
        size = len(self.payload)

        class Echoer(WSListener):  # type: ignore[misc]
            received = 0

            def on_ws_connected(self, transport: Any) -> None:
                transport.send(msg_type, load.payload)

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type == msg_type:
                    self.received += frame.payload_size
                    if frame.fin:
                        if self.received != size:
                            load.errors.append(f"echo of {self.received} bytes")
                        self.received = 0
                        load.count += 1
                        transport.send(msg_type, load.payload)
                elif frame.msg_type == WSMsgType.CLOSE:
                    load.errors.append(f"closed by server: {frame.get_close_code()}")
                    transport.disconnect()
                elif frame.msg_type == WSMsgType.CONTINUATION:
                    self.received += frame.payload_size

        self.transports = []
        for _ in range(self.clients):
            transport, _listener = await ws_connect(
                Echoer, self.url, ssl_context=self.ctx, max_frame_size=1 << 20)
            self.transports.append(transport)

    async def stop(self) -> None:
        for transport in self.transports:
            transport.send_close()
            transport.disconnect()
        for transport in self.transports:
            await asyncio.wait_for(transport.wait_disconnected(), 10)


class WebsocketsLoad(Load):
    name = "websockets"

    async def start(self) -> None:
        from websockets.asyncio.client import connect

        self.running = True
        self.conns = [await connect(self.url, ssl=self.ctx, compression=None,
                                    max_size=1 << 20, ping_interval=None)
                      for _ in range(self.clients)]
        message: bytes | str = (self.payload if self.binary
                                else self.payload.decode())
        self.tasks = [asyncio.create_task(self._echo(c, message))
                      for c in self.conns]

    async def _echo(self, conn: Any, message: bytes | str) -> None:
        try:
            while self.running:
                await conn.send(message)
                if len(await conn.recv()) != len(message):
                    self.errors.append("short echo")
                self.count += 1
        except Exception as e:  # report, don't hide, a broken connection
            if self.running:
                self.errors.append(f"{type(e).__name__}: {e}")

    async def stop(self) -> None:
        self.running = False
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


async def measure(server: Server, load_cls: type[Load], ctx: ssl.SSLContext,
                  clients: int, size: int, warmup: float,
                  seconds: float) -> dict[str, float]:
    """One measurement: connect, warm up, count over ``seconds``, close."""
    binary = size >= BINARY_FROM
    payload = (os.urandom(size) if binary else b"x" * size)
    load = load_cls(f"wss://127.0.0.1:{server.port}{PATH}", ctx, clients,
                    payload, binary)
    await asyncio.wait_for(load.start(), 30)
    try:
        await asyncio.sleep(warmup)
        n0, s0, c0, b0, t0 = (load.count, cpu_seconds(server.proc.pid),
                              cpu_seconds(), busy_seconds(), time.monotonic())
        await asyncio.sleep(seconds)
        n1, s1, c1, b1, t1 = (load.count, cpu_seconds(server.proc.pid),
                              cpu_seconds(), busy_seconds(), time.monotonic())
    finally:
        await load.stop()
    if load.errors:
        raise RuntimeError(f"{server.kind}: {load.errors[0]} "
                           f"({len(load.errors)} errors)")
    wall, messages = t1 - t0, n1 - n0
    if not messages:
        raise RuntimeError(f"{server.kind}: no round trip completed")
    return {"rate": messages / wall, "server": 100 * (s1 - s0) / wall,
            "client": 100 * (c1 - c0) / wall,
            "other": max(0.0, 100 * ((b1 - b0) - (s1 - s0) - (c1 - c0)) / wall),
            "us": 1e6 * (s1 - s0) / messages}


# -- certificate ------------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[str, str, str]:
    """``(cert, key, ca)`` PEM paths for 127.0.0.1; trustme if installed."""
    cert, key, ca = (str(directory / n) for n in ("cert.pem", "key.pem", "ca.pem"))
    try:
        import trustme
    except ImportError:
        import datetime

        from securews.dev import ensure_certificate

        made, made_key = ensure_certificate(
            directory, now=datetime.datetime.now(datetime.UTC))
        return str(made), str(made_key), str(made)
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
                   help="measured seconds per row (default 5)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="unmeasured seconds before each row (default 1)")
    p.add_argument("--clients", type=ints, default=[1, 20],
                   help="connection counts, comma-separated (default 1,20)")
    p.add_argument("--size", type=ints, default=[32, 16384],
                   help="message sizes in bytes, comma-separated; below "
                        f"{BINARY_FROM} ASCII text, else binary (default "
                        "32,16384)")
    p.add_argument("--kinds", type=lambda s: s.split(","),
                   default=list(DEFAULT_KINDS),
                   help=f"server kinds, comma-separated, from {', '.join(KINDS)}")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every row, report the median (default 1)")
    p.add_argument("--client", choices=("auto", "picows", "websockets"),
                   default="auto", help="load generator (default: picows if "
                                        "installed)")
    p.add_argument("--serve", nargs=4, metavar=("KIND", "PORT", "CERT", "KEY"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve is None:
        unknown = set(args.kinds) - set(KINDS)
        if unknown:
            p.error(f"unknown kinds: {', '.join(sorted(unknown))}")
        if args.seconds <= 0 or args.warmup < 0 or args.rounds < 1:
            p.error("--seconds must be positive, --warmup not negative, "
                    "--rounds at least 1")
    return args


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


def label(size: int) -> str:
    kind = "bin" if size >= BINARY_FROM else "txt"
    return f"{size // 1024}K {kind}" if size >= 1024 else f"{size}B {kind}"


def bound(row: dict[str, float]) -> str:
    if row["server"] >= SATURATED:
        return "server"
    if row["client"] >= SATURATED:
        return "client"
    return "latency"


def report(results: dict[tuple[int, int, str], list[dict[str, float]]],
           kinds: list[str], args: argparse.Namespace,
           out: Callable[[str], None]) -> bool:
    """Print the table; return whether securews-on met the goal everywhere."""
    head = (f"{'kind':<18} {'size':>7} {'clients':>7} {'msg/s':>9} "
            f"{'srv CPU%':>8} {'srv us/msg':>10} {'cli CPU%':>8} {'other%':>6} "
            f"{'bound':>8} "
            f"{'thr/ab':>7} {'cost/ab':>7}")
    out(head)
    out("-" * len(head))
    worst: tuple[float, str] | None = None
    busiest = 0.0
    for size in args.size:
        for clients in args.clients:
            rows = {k: {m: statistics.median(r[m] for r in results[size, clients, k])
                        for m in ("rate", "server", "client", "other", "us")}
                    for k in kinds}
            base = rows.get(BASELINE)
            for kind in kinds:
                row = rows[kind]
                thr = cost = "-"
                if base is not None:
                    ratio = row["rate"] / base["rate"]
                    thr, cost = f"{ratio:.2f}", f"{base['us'] / row['us']:.2f}"
                    if kind == "securews-on" and (worst is None or ratio < worst[0]):
                        worst = (ratio, f"{label(size)}, {clients} clients")
                out(f"{kind:<18} {label(size):>7} {clients:>7} {row['rate']:>9.0f} "
                    f"{row['server']:>8.0f} {row['us']:>10.1f} {row['client']:>8.0f} "
                    f"{row['other']:>6.0f} {bound(row):>8} {thr:>7} {cost:>7}")
                busiest = max(busiest, row["other"])
            out("")
    if busiest >= BUSY:
        out(f"warning: other processes used up to {busiest:.0f}% CPU during a "
            "measurement; the numbers are disturbed (rerun on a quiet machine, "
            "or with --rounds 3)")
    if worst is None:
        out("goal not checked: needs both securews-on and autobahn in --kinds")
        return True
    met = worst[0] >= GOAL
    out(f"goal: securews-on throughput >= {GOAL:.2f} x autobahn in every row: "
        f"{'MET' if met else 'NOT MET'} (lowest {worst[0]:.2f}, {worst[1]})")
    return met


async def run(args: argparse.Namespace, cert: str, key: str, ca: str,
              out: Callable[[str], None]) -> bool:
    ctx = ssl.create_default_context(cafile=ca)
    load_cls = client_class(args.client)
    import securews

    out(f"securews {securews.__version__} from {Path(securews.__file__).parent}")
    out(f"client: {load_cls.name}; NVX: {nvx_status()}")
    results: dict[tuple[int, int, str], list[dict[str, float]]] = {}
    with servers(args.kinds, cert, key) as running:
        for _ in range(args.rounds):
            for size in args.size:
                for clients in args.clients:
                    for kind in args.kinds:
                        server = running[kind]
                        if not server.alive():
                            raise RuntimeError(f"{kind} server died"
                                               f"{server._stderr_tail()}")
                        row = await measure(server, load_cls, ctx, clients, size,
                                            args.warmup, args.seconds)
                        results.setdefault((size, clients, kind), []).append(row)
                        print(f"  {kind} {label(size)} x{clients}: "
                              f"{row['rate']:.0f} msg/s", file=sys.stderr)
    out("")
    return report(results, args.kinds, args, out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        kind, port, cert, key = args.serve
        serve(kind, int(port), cert, key)
        return 0
    # A SIGTERM still runs the ``finally`` blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pair = cpu_pair()
    if pair is None:
        print("one CPU only: server and client share it; client CPU use "
              "is then part of every round trip", file=sys.stderr)
    total = len(args.kinds) * len(args.size) * len(args.clients) * args.rounds
    print(f"{total} rows of {args.warmup + args.seconds:g}s: about "
          f"{total * (args.warmup + args.seconds + 0.5) + 5:.0f}s",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="securews-bench-") as tmp:
        cert, key, ca = make_certificate(Path(tmp))
        if pair is not None:
            # After the certificate (which may use both CPUs), before any load;
            # the servers pin themselves to the other CPU.
            os.sched_setaffinity(0, {pair[1]})
            print(f"servers on CPU {pair[0]}, client on CPU {pair[1]}")
        asyncio.run(run(args, cert, key, ca, print))
    return 0


if __name__ == "__main__":
    sys.exit(main())
