"""
What securews's per-message controls cost: echo throughput side by side.

Run (about 90 seconds at the defaults; loopback only, 127.0.0.1)::

    python bench/echo_overhead.py [--seconds 5] [--clients 1,20] [--size 32,16384]

It makes a throwaway certificate (``trustme`` if installed, else the
``--dev`` self-signed one, in a temporary directory), starts every server
kind in its own process (``bench/_servers.py``, pinned to the first CPU)
and drives them from this process (pinned to the second CPU once the
servers run; the affinity each process really has is read back and
printed).
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
    context (``securews.wire.tls.server_context`` in ``TLSMemoryBIOFactory``),
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

The servers are ``bench/_servers.py`` processes (its docstring describes
the kinds' code); CPU placement, accounting and the slices are shared
with ``peers.py`` through ``_harness.py`` and ``_loads.py``.  With
``--keep`` the servers' pids are printed and the run waits for Enter
before measuring, so that a profiler (``py-spy record --pid PID``) can
attach.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _harness import (
    BINARY_FROM,
    Server,
    label,
    make_certificate,
    nvx_status,
    pin_client,
    placement,
    plan_cpus,
    raise_nofile,
    servers,
    versions,
)
from _loads import SETTLE, Load, alternate, client_class

KINDS = ("securews-on", "securews-min", "autobahn", "autobahn-defaults")
DEFAULT_KINDS = ("securews-on", "securews-min", "autobahn")
BASELINE = "autobahn"
GOAL = 0.90
#: CPU% (or server CPU% + wait%) at which a side counts as saturated.
SATURATED = 90.0
#: Other programs' CPU use (% of one CPU) that makes a row suspect.
BUSY = 10.0


# -- measuring --------------------------------------------------------------------


async def measure(running: dict[str, Server], kinds: list[str],
                  load_cls: type[Load], ctx: ssl.SSLContext, clients: int,
                  size: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Every kind under one load, in turns; a row of figures per kind."""
    binary = size >= BINARY_FROM
    payload = os.urandom(size) if binary else b"x" * size
    loads = {kind: load_cls(running[kind].url(), ctx, clients, payload, binary)
             for kind in kinds}
    tallies = await alternate(loads, running, seconds=args.seconds,
                              slice_=args.slice, warmup=args.warmup,
                              what=f"{label(size)} x{clients}")
    return {kind: tally.row() for kind, tally in tallies.items()}


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
    args = p.parse_args(argv)
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        p.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if (args.seconds <= 0 or args.slice <= 0 or args.warmup < 0
            or not args.clients or not args.size
            or min(args.clients) < 1 or min(args.size) < 1):
        p.error("--seconds, --slice, --clients and --size must be "
                "positive, --warmup not negative")
    return args


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
    ctx = ssl.create_default_context(cafile=ca)
    load_cls = client_class(args.client)
    out(versions())
    out(f"client: {load_cls.name}; NVX: {nvx_status()}")
    results: dict[tuple[int, int], dict[str, dict[str, float]]] = {}
    with servers(args.kinds, cert, key) as running:
        # Pinned only now: the servers get their CPU by number, but the
        # kernel's answer is what counts.
        pin_client()
        out(placement({k: s.pid for k, s in running.items()},
                      {load_cls.name: os.getpid()})[0])
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
    plan_cpus()  # before anything is pinned
    # A SIGTERM still runs the ``finally`` blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loads = len(args.size) * len(args.clients)
    slices = max(1, round(args.seconds / args.slice))
    per_kind = args.warmup + slices * (args.slice + SETTLE + 0.05) + 0.5
    print(f"{loads} loads x {len(args.kinds)} kinds: about "
          f"{loads * len(args.kinds) * per_kind + 5:.0f}s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="securews-bench-") as tmp:
        cert, key, ca = make_certificate(Path(tmp))
        raise_nofile()
        try:
            asyncio.run(run(args, cert, key, ca, print))
        except KeyboardInterrupt:  # the servers are stopped by now
            print("interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
