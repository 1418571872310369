"""
securews against its peers: bare Autobahn (two ways) and ``websockets``.

Run (about 10 minutes, a third of it callgrind; ``--quick`` is a smoke
check of everything but the instruction counts in about 30 seconds;
``--help`` for the knobs)::

    python bench/peers.py [--quick] [--phases ...] [--profile FILE]

One run, one machine, four servers (``bench/_servers.py`` describes each
exactly), each in its own process, all serving ``wss://127.0.0.1`` with
the same throwaway certificate (a trustme CA and an ECDSA P-256 leaf):

``securews``
    Every defence on, as ``twistd securews`` builds it: JWT (RS256,
    ``iss``/``aud`` checked) in the ``?token=`` query, Origin allow-list,
    heartbeat, idle and lifetime timers, size limits, UTF-8 validation,
    write-buffer limit, per-client connection limits at their defaults,
    one log line per handshake; only the per-session message and byte
    rates raised (to 100,000 msg/s and 1 GiB/s) so that this load is
    legal.
``ab+twTLS`` (``autobahn-twisted``)
    What an Autobahn user runs: Autobahn's ``WebSocketServerFactory`` on
    Twisted with its own defaults and a plain echo protocol, served by an
    ``ssl:`` endpoint (Twisted's default ``CertificateOptions``).  The
    baseline the targets are judged against.
``ab+swTLS`` (``autobahn-defaults``)
    The same Autobahn, behind securews's own TLS context: the difference
    to ``securews`` is securews's session and handshake layers alone.
``websockets``
    ``websockets.asyncio.server.serve`` with its defaults, on asyncio's
    default event loop (not uvloop), TLS from the ``ssl`` module.

Placement: the CPUs are chosen once from this process's affinity at
start, the first for the servers and the second for the client.  Each
server pins itself to its CPU by number (never by inheriting a mask),
this process pins itself after they started, and the affinity every
process (every thread) actually has is read back with
``os.sched_getaffinity`` and printed, at the start and again at the end.

Two clients, each on the client's CPU, with their CPU use measured for
every row (``cli%``: below about 90 % of its CPU, the client was not the
limit):

``wsload`` (``bench/wsload.c``, built with the system's C compiler and
OpenSSL headers; ``--client c``, the default when it builds)
    A WebSocket client in C on epoll and OpenSSL, one process per load,
    driven through a page of shared memory (``bench/_cload.py``), for
    echo throughput (one epoll loop) and new connections (a thread per
    connector, blocking).  It verifies every certificate, answers pings,
    masks every frame, and closes as a browser does (close handshake,
    TLS ``close_notify``, the server's TCP close).  The Python client
    below spends about as much CPU per echo as the servers it measures:
    with 50 connections it was the limit (99 % of its CPU).
picows (C framing) on uvloop (a C event loop; ``--loop asyncio`` for
asyncio's default loop) with ``ssl``, in this process
    Idle memory and latency (neither is bound by the client), and
    everything with ``--client picows``.  It verifies each server's
    certificate once, then no more (verifying costs picows a quarter of
    its CPU per new connection, and the servers nothing).

Every connection sends ``Origin: https://app.bench.example`` and the JWT
(all servers get the same requests; only securews checks them) and comes
from its own source address in 127.0.0.0/8, as if every connection were
a different client: securews's per-address limits (20 connections, 5 new
per second) then stay at their defaults.

Measured, in this order:

idle memory
    Per kind: open and close 20 connections (warm-up), wait for the
    server's RSS (``VmRSS``) to settle, open ``--idle`` (5,000)
    connections, at most ``--open-rate`` per second and 50 handshakes at
    once, wait for the RSS to settle again, and divide the growth by the
    count.  The connections send nothing; heartbeats (securews and
    websockets ping every 20 s) may fall in the window and are answered.
throughput and server CPU per message
    32-byte text and 16 KiB binary echo with 1 and 50 connections, each
    connection keeping one message in flight; the kinds take turns in
    ``--slice`` slices (after ``--warmup``) until each has run
    ``--seconds``, so other programs' load falls on all of them alike.
    Messages/s and the server's CPU microseconds per message are the
    medians of the slices.
latency
    ``--rate`` (1,000) 32-byte messages a second over 10 connections on
    a fixed schedule; p50 and p99 of every round trip in the measured
    slices, in milliseconds.
new connections/s and server CPU per connection
    ``--connectors`` (32) concurrent loops of TCP connect, full TLS
    handshake (no resumption), WebSocket upgrade, close handshake and
    TCP close; completed connections per second and the server's CPU
    milliseconds per connection, in slices as above.
reconnections/s and server CPU per reconnection
    The same, except that each loop offers the TLS session of its
    previous connection, as a browser reconnecting within two hours does:
    the server resumes it if it can (securews and ``ab+swTLS`` from
    securews's session cache, ``websockets`` from the ``ssl`` module's
    tickets; Twisted's default ``CertificateOptions`` caches no
    session, so ``ab+twTLS`` makes full handshakes), and the share of
    handshakes resumed is shown beside.  Needs wsload.

Besides CPU per message or connection, the table shows the part of it
the server spent in the kernel (``stime``, whole clock ticks summed over
the slices): sockets, the loopback TCP path and waking the client.
instructions
    Every kind again, under valgrind's callgrind (``bench/_instructions.py``):
    instructions the server process executes per 32-byte and per 16 KiB
    echo and per connection (handshake to close), the same whatever else
    the machine does.  Needs valgrind; not part of ``--quick`` unless
    named in ``--phases``.

Then one table: a row per figure, a column per server, and

``sw/ab+t``, ``sw/ab+s``
    securews's figure divided by each Autobahn baseline's (for memory,
    latency, CPU and instructions, lower is better);
``target``
    throughput >= 0.90 x ab+twTLS, memory per idle connection <= 1.15 x;
``cli%``
    the client's CPU use, % of its CPU (the highest of the kinds' runs);
``srv% (columns)``
    each server's CPU use, in the order of the columns;
``wait%``
    the most any server was runnable but waiting for a CPU (other
    programs, or a virtual machine's scheduling);
``other%``
    every other program's CPU use (the highest of the kinds' runs).

Nothing is asserted; the exit status is 0 when everything ran.  Any
refused handshake, unexpected close or lost echo stops the run.

``--profile FILE`` finally samples one server (``--profile-kind``,
default securews) with py-spy (``--nonblocking``, 250 Hz) during a
32-byte echo load on ``--profile-clients`` (1) connections, or
connection churn with ``--profile-load connect``, for
``--profile-seconds``, and prints the
shares of the samples by library and securews's own functions; FILE
keeps the raw stacks (py-spy's ``raw`` format, for flamegraph.pl or
speedscope).  On a loaded machine, most samples land on system calls
(a preempted process is mostly caught on its way out of one); the
securews shares are therefore given of the samples outside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import _cload
import _harness
import _instructions
from _cload import CLoad
from _harness import Addresses, Server, label
from _loads import SETTLE, Load, PicowsLoad, Tally, alternate
from _peerloads import ChurnLoad, IdleConnections, RateLoad, connect_and_close
from _table import SECUREWS, report

KINDS = ("securews", "autobahn-twisted", "autobahn-defaults", "websockets")
#: securews without its credential check (``--unchecked``), and the phases
#: it takes part in: the credential check is paid once per connection.
UNCHECKED = "securews-unchecked"
UNCHECKED_PHASES = ("connect", "reconnect", "instructions")
#: Column headings.
NAMES = {"securews": "securews", UNCHECKED: "sw-nocred", "autobahn-twisted": "ab+twTLS",
         "autobahn-defaults": "ab+swTLS", "websockets": "websockets"}
WARMUP_CONNECTIONS = 20
OPEN_CONCURRENCY = 50
LATENCY_CONNECTIONS = 10
PHASES = ("memory", "throughput", "latency", "connect", "reconnect", "instructions")

Out = Callable[[str], None]


class Context:
    """What every phase needs: the servers, TLS, the request, addresses."""

    def __init__(self, running: dict[str, Server], ctx: ssl.SSLContext,
                 token: str, args: argparse.Namespace) -> None:
        self.running, self.ctx, self.args = running, ctx, args
        self.query = f"token={token}"
        self.headers = {"Origin": _harness.ORIGIN}
        self.addresses = Addresses()
        self.tls: dict[str, str] = {}
        #: wsload, when the throughput and connection loads use it.
        self.wsload: Path | None = None
        self.cafile = ""

    def url(self, kind: str) -> str:
        return self.running[kind].url(self.query)

    def kinds(self, phase: str) -> list[str]:
        """The kinds ``phase`` measures."""
        return [kind for kind in self.running
                if kind != UNCHECKED or phase in UNCHECKED_PHASES]

    async def alternate(self, loads: Mapping[str, Load], seconds: float,
                        what: str) -> dict[str, Tally]:
        a = self.args
        tallies = await alternate(loads, self.running, seconds=seconds,
                                  slice_=a.slice, warmup=a.warmup, what=what)
        for kind, load in loads.items():
            self.tls.setdefault(kind, load.tls)
        return tallies


# -- the phases -------------------------------------------------------------------


async def settled_rss(pid: int, limit: float = 20.0) -> int:
    """The RSS once it has changed by < 64 KiB over one second (or ``limit`` s)."""
    readings = [_harness.rss_bytes(pid)]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        readings.append(_harness.rss_bytes(pid))
        last = readings[-5:]
        if len(last) == 5 and max(last) - min(last) < 65536:
            break
    return readings[-1]


async def idle_memory(c: Context, kind: str, count: int) -> dict[str, float]:
    server = c.running[kind]
    conns = IdleConnections(c.url(kind), c.ctx, c.headers, c.addresses)
    await conns.open(WARMUP_CONNECTIONS, c.args.open_rate, OPEN_CONCURRENCY)
    await conns.close()
    before = await settled_rss(server.pid)
    try:
        took = await conns.open(count, c.args.open_rate, OPEN_CONCURRENCY)
        after = await settled_rss(server.pid)
        still = conns.open_count()
        if conns.errors or still != count or not server.alive():
            raise RuntimeError(
                f"{kind}, {count} idle connections: {still} still open; "
                f"{conns.errors[:1] or 'server exited'}{server.stderr_tail()}")
    finally:
        await conns.close()
    return {"per_conn": (after - before) / count, "before": before,
            "after": after, "open_rate": count / took}


async def memory_phase(c: Context, out: Out) -> dict[str, dict[str, float]]:
    results = {}
    for kind in c.kinds("memory"):
        results[kind] = row = await idle_memory(c, kind, c.args.idle)
        out(f"  memory {NAMES[kind]}: {row['before'] / 2**20:.1f} -> "
            f"{row['after'] / 2**20:.1f} MiB with {c.args.idle} connections "
            f"(opened {row['open_rate']:.0f}/s)")
    return results


def text_payload(size: int) -> bytes:
    """``size`` bytes of ASCII; from 9 bytes on a JSON document."""
    if size < 9:
        return b"x" * size
    return json.dumps({"n": "x" * (size - 9)}).encode()


async def throughput_phase(c: Context, size: int, clients: int) -> dict[str, Tally]:
    binary = size >= _harness.BINARY_FROM
    payload = os.urandom(size) if binary else text_payload(size)
    loads: dict[str, Load]
    if c.wsload is not None:
        loads = {kind: CLoad(c.wsload, "echo", c.url(kind), c.cafile, clients,
                             payload, binary, headers=c.headers,
                             addresses=c.addresses)
                 for kind in c.kinds("throughput")}
    else:
        loads = {kind: PicowsLoad(c.url(kind), c.ctx, clients, payload, binary,
                                  headers=c.headers, addresses=c.addresses)
                 for kind in c.kinds("throughput")}
    return await c.alternate(loads, c.args.seconds, f"{label(size)} x{clients}")


async def latency_phase(c: Context) -> dict[str, Tally]:
    payload = text_payload(32)
    loads = {kind: RateLoad(c.url(kind), c.ctx, LATENCY_CONNECTIONS, payload,
                            c.args.rate, headers=c.headers, addresses=c.addresses)
             for kind in c.kinds("latency")}
    return await c.alternate(loads, c.args.latency_seconds, "latency")


async def connect_phase(c: Context) -> dict[str, Tally]:
    loads: dict[str, Load]
    if c.wsload is not None:
        loads = {kind: CLoad(c.wsload, "churn", c.url(kind), c.cafile,
                             c.args.connectors, b"", False, headers=c.headers,
                             addresses=c.addresses)
                 for kind in c.kinds("connect")}
    else:
        loads = {kind: ChurnLoad(c.url(kind), c.ctx, c.args.connectors,
                                 headers=c.headers, addresses=c.addresses)
                 for kind in c.kinds("connect")}
    return await c.alternate(loads, c.args.connect_seconds, "new connections")


async def reconnect_phase(c: Context) -> tuple[dict[str, Tally], dict[str, float]]:
    """The connection churn, each connection offering the TLS session of
    its loop's previous one; also the % of handshakes each server resumed."""
    assert c.wsload is not None
    loads = {kind: CLoad(c.wsload, "rejoin", c.url(kind), c.cafile,
                         c.args.connectors, b"", False, headers=c.headers,
                         addresses=c.addresses)
             for kind in c.kinds("reconnect")}
    tallies = await c.alternate(loads, c.args.connect_seconds, "reconnections")
    resumed = {kind: 100 * load.final.get("resumed", 0)
               / max(load.final.get("count", 0), 1) for kind, load in loads.items()}
    return tallies, resumed


async def instructions_phase(c: Context, cert: str, key: str,
                             out: Out) -> dict[str, dict[str, float]]:
    """Every kind under callgrind at once (not pinned), counted in turn."""
    a = c.args
    results = {}
    with tempfile.TemporaryDirectory(prefix="securews-callgrind-") as tmp:
        directory = Path(tmp)
        started = {kind: _instructions.start(kind, cert, key, directory)
                   for kind in c.kinds("instructions")}
        try:
            for server in started.values():
                await asyncio.to_thread(server.wait_ready)
            for kind, server in started.items():
                results[kind] = await _instructions.count(
                    kind, server, directory, server.url(c.query), c.ctx, c.headers,
                    c.addresses, a.count_messages, a.count_connections,
                    [32, 16384], _harness.BINARY_FROM, c.wsload, c.cafile)
        finally:
            for server in started.values():
                await asyncio.to_thread(server.stop)
    m, n = a.count_connections, a.count_messages
    out(f"  instructions: callgrind, server process only, slope between "
        f"{m[0]} and {m[1]} connections, {n[0]} and {n[1]} messages")
    return results


async def profile_phase(c: Context, kind: str, path: Path, out: Out) -> None:
    """Sample ``kind`` with py-spy under ``--profile-load``; summarise."""
    import _profile

    load: Load
    n = c.args.profile_clients
    if c.args.profile_load == "echo" and c.wsload is not None:
        load = CLoad(c.wsload, "echo", c.url(kind), c.cafile, n, text_payload(32),
                     False, headers=c.headers, addresses=c.addresses)
        what, unit = f"32B txt x{n}", "msg/s"
    elif c.args.profile_load == "echo":
        load = PicowsLoad(c.url(kind), c.ctx, n, text_payload(32), False,
                          headers=c.headers, addresses=c.addresses)
        what, unit = f"32B txt x{n}", "msg/s"
    elif c.wsload is not None:
        load = CLoad(c.wsload, "churn", c.url(kind), c.cafile, c.args.connectors,
                     b"", False, headers=c.headers, addresses=c.addresses)
        what, unit = f"connection churn x{c.args.connectors}", "conn/s"
    else:
        load = ChurnLoad(c.url(kind), c.ctx, c.args.connectors,
                         headers=c.headers, addresses=c.addresses)
        what, unit = f"connection churn x{c.args.connectors}", "conn/s"
    await load.connect()
    try:
        load.resume()
        await asyncio.sleep(c.args.warmup)
        before = load.count
        started = time.monotonic()
        await asyncio.to_thread(_profile.record, c.running[kind].pid,
                                c.args.profile_seconds, path)
        rate = (load.count - before) / (time.monotonic() - started)
        await load.pause()
        if load.errors:
            raise RuntimeError(f"profile load: {load.errors[0]}")
    finally:
        await load.close()
    out(f"profile of {NAMES[kind]} under {what} ({rate:.0f} {unit} while "
        f"sampled), raw stacks in {path}:")
    _profile.summarise(path.read_text(), out)


# -- the run ------------------------------------------------------------------------


async def run(args: argparse.Namespace, cert: str, key: str, ca: str,
              token: str, out: Out) -> None:
    verified = ssl.create_default_context(cafile=ca)
    # The loads do not verify the certificate: picows's TLS transport
    # (aiofastnet) decodes a verified peer's certificate through a
    # temporary file on every handshake, about a quarter of the client's
    # CPU per new connection.  The servers' work is the same either way;
    # the first connection to each server below does verify.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    results: dict[str, Any] = {}
    kinds = [*KINDS[:1], *([UNCHECKED] if args.unchecked else []), *KINDS[1:]]
    names = {kind: NAMES[kind] for kind in kinds}
    with _harness.servers(kinds, cert, key) as running:
        # Only now: the servers were pinned by CPU number, not by
        # inheriting this process's mask, but say so from the kernel.
        _harness.pin_client()
        line, apart = _harness.placement(
            {NAMES[k]: s.pid for k, s in running.items()}, {"picows": os.getpid()})
        out(line)
        c = Context(running, ctx, token, args)
        c.cafile = ca
        if args.client == "c":
            c.wsload = _cload.build()
            out(f"client: wsload (bench/wsload.c: C, epoll, "
                f"{_cload.openssl_version(c.wsload)}) for echo throughput and "
                f"new connections, one process per load, pinned like this one "
                f"(checked as each starts); picows on {_harness.loop_name()} "
                f"for the rest")
        else:
            out(f"client: picows on {_harness.loop_name()}, one process")
        for kind in kinds:  # refused or broken handshakes stop the run here
            c.tls[kind] = await connect_and_close(
                c.url(kind), verified, c.headers, c.addresses)

        def step(what: str, started: float) -> None:
            print(f"  {what}: {time.monotonic() - started:.0f}s", file=sys.stderr)

        if "memory" in args.phases:
            started = time.monotonic()
            results["memory"] = await memory_phase(c, out)
            step("idle memory", started)
        if "throughput" in args.phases:
            results["throughput"] = {}
            for size in args.size:
                for clients in args.clients:
                    started = time.monotonic()
                    results["throughput"][size, clients] = await throughput_phase(
                        c, size, clients)
                    step(f"{label(size)} x{clients}", started)
        if "latency" in args.phases:
            started = time.monotonic()
            results["latency"] = await latency_phase(c)
            step("latency", started)
        if "connect" in args.phases:
            started = time.monotonic()
            results["connect"] = await connect_phase(c)
            step("new connections", started)
        if "reconnect" in args.phases:
            if c.wsload is None:
                out("reconnections: skipped (they need wsload)")
            else:
                started = time.monotonic()
                results["reconnect"], results["resumed"] = await reconnect_phase(c)
                step("reconnections", started)
        # Read back again at the end: nothing moved a process meanwhile.
        line, still_apart = _harness.placement(
            {NAMES[k]: s.pid for k, s in running.items()}, {"picows": os.getpid()})
        if "instructions" in args.phases:
            started = time.monotonic()
            results["instructions"] = await instructions_phase(c, cert, key, out)
            step("instructions", started)
        out(line.replace("affinity read back", "affinity read back at the end"))
        out("TLS negotiated: " + "; ".join(f"{NAMES[k]} {v}" for k, v in c.tls.items()))
        out("")
        report(names, args, results, out)
        if not (apart and still_apart):
            out("WARNING: servers and client shared a CPU (see the affinity "
                "lines): the rates above are not comparable to a separated run")
        if args.profile is not None:
            out("")
            await profile_phase(c, args.profile_kind, args.profile, out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="securews against bare Autobahn and websockets "
                    "(see the module docstring).")
    p.add_argument("--quick", action="store_true",
                   help="tiny durations and 100 idle connections: a smoke check")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="measured seconds per kind and throughput load (4)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="unmeasured seconds per kind and load (1)")
    p.add_argument("--slice", type=float, default=0.5,
                   help="seconds a kind runs per turn (0.5)")
    p.add_argument("--clients", type=_ints, default=[1, 50],
                   help="throughput connection counts (1,50)")
    p.add_argument("--size", type=_ints, default=[32, 16384],
                   help="throughput message sizes; below 1024 text (32,16384)")
    p.add_argument("--rate", type=float, default=1000.0,
                   help="latency load, messages per second (1000)")
    p.add_argument("--latency-seconds", type=float, default=5.0,
                   help="measured seconds per kind of the latency load (5)")
    p.add_argument("--connectors", type=int, default=32,
                   help="concurrent connection loops (32)")
    p.add_argument("--connect-seconds", type=float, default=5.0,
                   help="measured seconds per kind of connection churn (5)")
    p.add_argument("--idle", type=int, default=5000,
                   help="idle connections for the memory figure (5000)")
    p.add_argument("--open-rate", type=float, default=1000.0,
                   help="most idle connections opened per second (1000)")
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="the client's event loop: uvloop (C; the default when "
                        "installed) or asyncio's default loop")
    p.add_argument("--client", choices=("auto", "c", "picows"), default="auto",
                   help="load generator for echo throughput and new connections: "
                        "c (bench/wsload.c, built with the system's cc and "
                        "OpenSSL headers), picows, or auto (c if it builds)")
    p.add_argument("--phases", type=lambda s: s.split(","), default=list(PHASES),
                   help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--count-connections", type=_ints, default=[4, 12],
                   help="instructions: connections in the two windows (4,12)")
    p.add_argument("--count-messages", type=_ints, default=[100, 400],
                   help="instructions: echoes in the two windows (100,400)")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="finally profile securews with py-spy; raw stacks to FILE")
    p.add_argument("--profile-seconds", type=float, default=10.0,
                   help="seconds of sampling for --profile (10)")
    p.add_argument("--unchecked", action="store_true",
                   help="also securews without its credential check (sw-nocred), "
                        "in the connect and instructions phases")
    p.add_argument("--profile-kind", choices=(*KINDS, UNCHECKED), default=SECUREWS,
                   help="the server --profile samples (securews)")
    p.add_argument("--profile-load", choices=("echo", "connect"), default="echo",
                   help="--profile under 32-byte echo (echo) or connection "
                        "churn (connect)")
    p.add_argument("--profile-clients", type=int, default=1,
                   help="connections of --profile-load echo (1)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds = args.latency_seconds = args.connect_seconds = 0.25
        args.warmup, args.slice, args.idle = 0.1, 0.25, 100
        args.profile_seconds = min(args.profile_seconds, 2.0)
        args.count_connections, args.count_messages = [1, 2], [5, 10]
        if "--phases" not in " ".join(argv if argv is not None else sys.argv):
            # callgrind alone takes a minute to start the servers
            args.phases.remove("instructions")
            print("--quick: no instruction counts (name them in --phases "
                  "to have them)", file=sys.stderr)
    if "instructions" in args.phases and not _instructions.available():
        p.error("the instructions phase needs valgrind (Debian package "
                "valgrind); leave it out with --phases")
    if args.client == "auto":
        try:
            _cload.build()
            args.client = "c"
        except _cload.Unavailable as e:
            print(f"--client picows: {e}", file=sys.stderr)
            args.client = "picows"
    elif args.client == "c":
        try:
            _cload.build()
        except _cload.Unavailable as e:
            p.error(str(e))
    if args.profile_kind == UNCHECKED and not args.unchecked:
        p.error(f"--profile-kind {UNCHECKED} needs --unchecked")
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if (min(args.seconds, args.latency_seconds, args.connect_seconds, args.slice,
            args.rate, args.open_rate) <= 0 or args.warmup < 0
            or min(args.clients + args.size + [args.connectors, args.idle]) < 1
            or any(len(v) != 2 or not 0 < v[0] < v[1]
                   for v in (args.count_connections, args.count_messages))):
        p.error("durations, rates and counts must be positive")
    return args


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def estimate(args: argparse.Namespace) -> float:
    """Seconds the run should take, roughly (150 handshakes/s assumed)."""
    def phase(seconds: float, kinds: int = len(KINDS)) -> float:
        slices = max(1, round(seconds / args.slice))
        per_kind: float = args.warmup + slices * (args.slice + SETTLE + 0.05) + 0.5
        return kinds * per_kind
    extra = 1 if args.unchecked else 0
    total = 5.0
    if "memory" in args.phases:
        total += len(KINDS) * (args.idle / min(args.open_rate, 150) + 3)
    if "throughput" in args.phases:
        total += len(args.size) * len(args.clients) * phase(args.seconds)
    if "latency" in args.phases:
        total += phase(args.latency_seconds)
    for churn in ("connect", "reconnect"):
        if churn in args.phases:
            total += phase(args.connect_seconds, len(KINDS) + extra)
    if "instructions" in args.phases:
        total += 90 + (len(KINDS) + extra) * (
            2 * sum(args.count_connections) + 0.02 * sum(args.count_messages))
    return total + (args.profile_seconds + args.warmup if args.profile else 0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _harness.plan_cpus()  # before anything is pinned
    # A SIGTERM still runs the ``finally`` blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"about {estimate(args):.0f}s", file=sys.stderr)
    import picows

    with tempfile.TemporaryDirectory(prefix="securews-peers-") as tmp:
        cert, key, ca = _harness.make_certificate(Path(tmp))
        token = _harness.make_jwt(Path(tmp))
        print(_harness.versions())
        print(f"NVX: {_harness.nvx_status()}")
        print(f"client picows {getattr(picows, '__version__', '?')}; "
              f"open-file limit {_harness.raise_nofile()}")
        try:
            with asyncio.Runner(loop_factory=_harness.loop_factory(args.loop)) as r:
                r.run(run(args, cert, key, ca, token, print))
        except KeyboardInterrupt:  # the servers are stopped by now
            print("interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
