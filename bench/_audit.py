"""
Inside a ``_servers.py`` process: what each idle connection holds.

Installed by ``_servers.py`` when ``SECUREWS_BENCH_AUDIT`` names a file
(``idle_audit.py`` does that); :func:`install` starts ``tracemalloc`` at
once, and every SIGUSR2 writes a JSON report to that file, then prints
``AUDITED``:

``rss``, ``traced``
    The process's RSS, and the bytes Python's allocators hold (what
    ``tracemalloc`` traces: every Python object, not OpenSSL's own
    ``malloc`` calls).
``lines``
    Traced bytes and blocks by the source line that allocated them.
``types``
    Objects tracked by the garbage collector, by type: count and
    ``sys.getsizeof`` total.
``connections``
    For two live connections picked at random, everything reachable from
    the connection's TCP transport that no other connection and nothing
    global (modules, the reactor, factories, TLS contexts) can reach:
    the Python state that is this connection's alone, by the attribute
    path it hangs from and by type, in ``sys.getsizeof`` bytes.  A shared
    object (a class-level default, an interned string, the factory's
    settings) is never counted.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
import tracemalloc
import types
from pathlib import Path
from typing import Any

#: Objects the walk never enters: code and namespaces, shared by everyone.
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           types.CodeType, types.FrameType)


def _is_transport(obj: object) -> bool:
    from twisted.internet.tcp import Server

    return isinstance(obj, Server)


def _connection_objects() -> list[Any]:
    """Each TCP transport of an accepted connection (``tcp.Server``)."""
    return [o for o in gc.get_objects() if _is_transport(o)]


def _walk(roots: list[Any], stop: set[int]) -> dict[int, tuple[Any, str]]:
    """Everything reachable from ``roots`` without entering ``stop``, with
    the first path found to each object."""
    seen: dict[int, tuple[Any, str]] = {}
    queue = collections.deque((r, type(r).__name__) for r in roots)
    while queue:
        obj, path = queue.popleft()
        key = id(obj)
        if key in seen or key in stop or isinstance(obj, _OPAQUE):
            continue
        seen[key] = (obj, path)
        names: dict[int, str] = {}
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            names[id(attrs)] = ""
            for name, value in attrs.items():
                names.setdefault(id(value), f".{name}")
        for slot in getattr(type(obj), "__slots__", ()):
            value = getattr(obj, slot, None)
            if value is not None:
                names.setdefault(id(value), f".{slot}")
        if isinstance(obj, dict):
            for name, value in obj.items():
                names.setdefault(id(value), f".{name}" if isinstance(name, str)
                                 else "[]")
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and id(ref) not in stop:
                step = names.get(id(ref), f"<{type(ref).__name__}>")
                queue.append((ref, path + step if step else path))
    return seen


def _shared(connections: list[Any]) -> set[int]:
    """ids of what is reachable from global roots without passing through
    a connection (modules, the reactor minus its connections, factories)."""
    from twisted.internet import reactor

    blocked = {id(c) for c in connections}
    for conn in connections:
        blocked.add(id(conn.protocol))
        inner = getattr(conn.protocol, "wrappedProtocol", None)
        if inner is not None:
            blocked.add(id(inner))
    roots: list[Any] = [sys.modules, reactor]
    for conn in connections[:1]:
        factory = getattr(conn.protocol, "factory", None)
        roots.append(factory)
        roots.append(getattr(factory, "wrappedFactory", None))
        inner = getattr(conn.protocol, "wrappedProtocol", conn.protocol)
        roots.append(getattr(inner, "factory", None))
        roots.append(type(inner))
    seen = _walk([r for r in roots if r is not None], blocked)
    return set(seen) | blocked


def _reach(conn: Any, others: list[Any],
           shared: set[int]) -> dict[int, tuple[Any, str]]:
    stop = set(shared)
    for other in others:
        if other is not conn:
            stop.add(id(other))
            stop.add(id(other.protocol))
    stop.discard(id(conn))
    stop.discard(id(conn.protocol))
    inner = getattr(conn.protocol, "wrappedProtocol", None)
    if inner is not None:
        stop.discard(id(inner))
    return _walk([conn], stop)


def _owned(conn: Any, twin: Any, others: list[Any], shared: set[int]) -> dict[str, Any]:
    """What ``conn`` reaches and ``twin`` (another connection) does not:
    interned attribute names and other objects both hold drop out."""
    mine = _reach(conn, others, shared)
    theirs = _reach(twin, others, shared)
    by_path: collections.Counter[str] = collections.Counter()
    by_type: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    objects = 0
    for key, (obj, path) in mine.items():
        if key in theirs:
            continue
        objects += 1
        size = sys.getsizeof(obj)
        # Grouped by the transport, TLS protocol, WebSocket protocol, and
        # the attribute (and its attribute) that holds it.
        steps = path.replace("<", ".<").split(".")
        by_path[".".join(steps[:5])] += size
        by_type[type(obj).__qualname__] += size
        count[type(obj).__qualname__] += 1
    return {"total": sum(by_type.values()), "objects": objects,
            "by_path": dict(by_path.most_common()),
            "by_type": {k: [count[k], v] for k, v in by_type.most_common()}}


def report() -> dict[str, Any]:
    gc.collect()
    snap = tracemalloc.take_snapshot()
    lines = {}
    for stat in snap.statistics("lineno"):
        frame = stat.traceback[0]
        lines[f"{frame.filename}:{frame.lineno}"] = [stat.size, stat.count]
    types_: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        entry = types_.setdefault(type(obj).__qualname__, [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    connections = _connection_objects()
    owned = []
    if connections:
        shared = _shared(connections)
        picked = connections[len(connections) // 3:][:3]
        for conn, twin in zip(picked, picked[1:] + picked[:1], strict=True):
            owned.append(_owned(conn, twin, connections, shared))
    with open(f"/proc/{os.getpid()}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f
                   if line.startswith("VmRSS:"))
    return {"rss": rss, "traced": tracemalloc.get_traced_memory()[0],
            "lines": lines, "types": types_, "connections": owned,
            "open": len(connections)}


def install(path: str) -> None:
    """Start tracing; on SIGUSR2 write :func:`report` to ``path``."""
    tracemalloc.start(1)

    def audit(*_: object) -> None:
        Path(path).write_text(json.dumps(report()))
        print("AUDITED", flush=True)

    signal.signal(signal.SIGUSR2, audit)
