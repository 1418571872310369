"""
What an idle connection costs each server, and where it goes.

Run (about a minute)::

    python bench/idle_audit.py [--count 1000] [--kinds securews,autobahn-twisted]

Starts each Twisted server kind of ``bench/_servers.py`` (pinned to the
first CPU, this process to the second) with ``tracemalloc`` on
(``bench/_audit.py``), opens ``--count`` idle ``wss://`` connections to
it (the same requests as ``peers.py``: Origin, JWT, one source address
each), takes a report, opens ``--count`` more and takes another.  The
difference divided by ``--count`` is the cost of one idle connection:

* RSS (everything: Python, OpenSSL's own allocations, the allocators'
  slack), Python's traced allocations (``tracemalloc``), and the rest
  (mostly OpenSSL's per-connection state);
* the traced bytes by allocating source line, and the garbage-collected
  objects by type, per connection;
* for one connection, the Python objects that are its own (reachable
  from its transport and from nothing global or shared with another
  connection), in ``sys.getsizeof`` bytes, by the attribute that holds
  them: what each attribute costs, and so what dropping it would save.

tracemalloc's own bookkeeping inflates RSS; the RSS figures here are for
comparing kinds, ``peers.py`` measures RSS without it.
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
from pathlib import Path
from typing import Any

import _harness
from _harness import Addresses, Server
from _peerloads import IdleConnections

KINDS = ("securews", "autobahn-twisted", "autobahn-defaults")
TOP = 25


async def settle(pid: int) -> None:
    """Until the RSS has moved by < 64 KiB over a second (20 s at most)."""
    readings = [_harness.rss_bytes(pid)]
    for _ in range(80):
        await asyncio.sleep(0.25)
        readings.append(_harness.rss_bytes(pid))
        if len(readings) >= 5 and max(readings[-5:]) - min(readings[-5:]) < 65536:
            return


async def audit(server: Server, path: Path) -> dict[str, Any]:
    await settle(server.pid)
    server.proc.send_signal(signal.SIGUSR2)
    await asyncio.to_thread(server.read_line, 300, "audited")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def per(before: dict[str, list[int]], after: dict[str, list[int]], n: int,
        index: int) -> list[tuple[str, float]]:
    keys = set(before) | set(after)
    diffs = [(k, (after.get(k, [0, 0])[index] - before.get(k, [0, 0])[index]) / n)
             for k in keys]
    return sorted(diffs, key=lambda kv: -abs(kv[1]))


def short(where: str) -> str:
    for marker in ("site-packages/", "/wt-bench/", "/lib/python3"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


async def measure(kind: str, server: Server, path: Path, url: str,
                  ctx: ssl.SSLContext, headers: dict[str, str],
                  addresses: Addresses, count: int) -> dict[str, Any]:
    conns = IdleConnections(url, ctx, headers, addresses)
    await conns.open(20, 500, 50)
    await conns.close()
    await conns.open(count, 500, 50)
    first = await audit(server, path)
    await conns.open(count, 500, 50)
    second = await audit(server, path)
    if conns.errors or conns.open_count() != 2 * count:
        raise RuntimeError(f"{kind}: {conns.errors[:1]}")
    await conns.close()
    result = {
        "rss": (second["rss"] - first["rss"]) / count,
        "traced": (second["traced"] - first["traced"]) / count,
        "lines": dict(per(first["lines"], second["lines"], count, 0)),
        "types": dict(per(first["types"], second["types"], count, 1)),
        "owned": second["connections"][0] if second["connections"] else {},
    }
    rss = (second["rss"] - first["rss"]) / count
    traced = (second["traced"] - first["traced"]) / count
    print(f"\n== {kind}: per idle connection, between {count} and {2 * count} open")
    print(f"RSS {rss / 1024:.1f} KiB; Python (traced) {traced / 1024:.1f} KiB; "
          f"the rest (OpenSSL, allocator slack) {(rss - traced) / 1024:.1f} KiB")
    print(f"traced bytes per connection by allocating line (top {TOP}):")
    for where, size in per(first["lines"], second["lines"], count, 0)[:TOP]:
        if abs(size) >= 8:
            print(f"  {size:8.0f}  {short(where)}")
    print("gc-tracked objects per connection by type (count, getsizeof bytes):")
    counts = dict(per(first["types"], second["types"], count, 0))
    for name, size in per(first["types"], second["types"], count, 1)[:TOP]:
        if abs(size) >= 8:
            print(f"  {counts.get(name, 0):6.2f} {size:8.0f}  {name}")
    for i, own in enumerate(second["connections"]):
        print(f"one connection's own objects (#{i + 1}): {own['objects']} objects, "
              f"{own['total']} bytes (sys.getsizeof), by holder:")
        for holder, size in list(own["by_path"].items())[:40 if i == 0 else 8]:
            print(f"  {size:7d}  {holder}")
        if i == 0:
            print("  by type:")
            for name, (n, size) in list(own["by_type"].items())[:TOP]:
                print(f"  {n:5d} {size:7d}  {name}")
    return result


async def run(args: argparse.Namespace, cert: str, key: str, ca: str,
              token: str) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    headers = {"Origin": _harness.ORIGIN}
    addresses = Addresses()
    results = {}
    for kind in args.kinds:
        path = Path(cert).parent / f"{kind}.audit.json"
        server = Server(kind, cert, key, 60.0,
                        env={"SECUREWS_BENCH_AUDIT": str(path)})
        try:
            _harness.pin_client()
            print(_harness.placement({kind: server.pid}, {"client": os.getpid()})[0])
            results[kind] = await measure(kind, server, path,
                                          server.url(f"token={token}"), ctx,
                                          headers, addresses, args.count)
        finally:
            server.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS))
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="also write the per-connection figures to FILE")
    args = p.parse_args(argv)
    _harness.plan_cpus()
    _harness.raise_nofile()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="securews-audit-") as tmp:
        cert, key, ca = _harness.make_certificate(Path(tmp))
        token = _harness.make_jwt(Path(tmp))
        asyncio.run(run(args, cert, key, ca, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
