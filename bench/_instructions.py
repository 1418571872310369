"""
Instructions a server executes per echoed message and per connection,
counted by valgrind's callgrind: the same for the same work whatever
else the machine is doing, unlike wall-clock rates on a shared machine.

Each server kind runs its real ``_servers.py`` process (sockets, TLS,
reactor, everything) under ``valgrind --tool=callgrind``, not pinned; the
client is the benchmark process, outside valgrind, so none of its work is
counted.  The server cuts its run into windows on request
(:meth:`_harness.Server.mark`: SIGUSR1 makes it call libc's ``seed48``,
and ``--dump-before=seed48*`` makes callgrind write the instructions counted
since the previous mark).  Every figure is a slope between two windows of
the same work in different amounts (``small`` and ``large`` round trips
or connections), so what a window costs regardless of its size (the
signal, the reactor waking up, the last connection's teardown) cancels
out:

``per message``
    one connection, ``small`` then ``large`` sequential echoes (one
    message in flight: one TLS record read and one written per message).
``per message, 50 connections``
    with ``bench/wsload.c`` as the client: 50 connections, each keeping
    one message in flight, until ``small`` then ``large`` times 5 echoes
    have come back in all (the server, slowed down by valgrind, is
    saturated: this is the busy server's cost per message).
``per connection``
    ``small`` then ``large`` sequential full connections: TCP accept, a
    full TLS handshake (no resumption), the WebSocket upgrade with the
    same headers as every other phase (Origin, the JWT), the close
    handshake and the TCP close.

Only user-space instructions are counted (valgrind sees no kernel work),
and valgrind's virtual CPU decides which of OpenSSL's code paths run (AES-NI
yes, AVX-512 no), the same for every kind.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _harness import Addresses, Server
from _peerloads import connect_and_close

MARKER = "seed48*"
#: Seconds (wall) for the server to finish what a window's last step left.
QUIET = 1.0
STARTUP_TIMEOUT = 600.0


def available() -> bool:
    return shutil.which("valgrind") is not None


def start(kind: str, cert: str, key: str, directory: Path) -> Server:
    out = directory / f"callgrind.{kind}.%p"
    return Server(kind, cert, key, STARTUP_TIMEOUT, wait=False, pin=False,
                  wrapper=["valgrind", "--tool=callgrind", f"--dump-before={MARKER}",
                           f"--callgrind-out-file={out}"],
                  env={"PYTHONHASHSEED": "0"})


def totals(directory: Path, kind: str, pid: int) -> dict[int, int]:
    """Instructions per dump (1, 2, ...) written so far."""
    found = {}
    for path in glob.glob(str(directory / f"callgrind.{kind}.{pid}.*")):
        with open(path) as f:
            match = re.search(r"^(?:summary|totals):\s+(\d+)", f.read(), re.MULTILINE)
        if match:
            found[int(path.rsplit(".", 1)[1])] = int(match.group(1))
    return found


class Counter:
    """One callgrind server and its windows."""

    def __init__(self, server: Server, directory: Path) -> None:
        self.server, self.directory = server, directory

    async def window(self, work: Callable[[], Awaitable[None]]) -> int:
        """Instructions the server executed while ``work`` ran (and settled)."""
        first = await asyncio.to_thread(self.server.mark)
        await work()
        await asyncio.sleep(QUIET)
        second = await asyncio.to_thread(self.server.mark)
        # Dump n holds what was counted before mark n: the window is
        # dump ``second``; the file is complete once the mark is printed.
        counted = totals(self.directory, self.server.kind, self.server.pid)
        if second != first + 1 or sorted(counted) != list(range(1, second + 1)):
            raise RuntimeError(f"{self.server.kind}: after mark {second}, "
                               f"callgrind dumps {sorted(counted)} (one per mark "
                               "expected: did something else call the marker?)")
        return counted[second]

    async def slope(self, small: int, large: int,
                    work: Callable[[int], Awaitable[None]]) -> float:
        low = await self.window(lambda: work(small))
        high = await self.window(lambda: work(large))
        return (high - low) / (large - small)


async def echo_work(url: str, ctx: Any, headers: dict[str, str],
                    addresses: Addresses, payload: bytes,
                    binary: bool) -> tuple[Callable[[int], Awaitable[None]],
                                           Callable[[], Awaitable[None]]]:
    """A connection that echoes ``n`` messages, one at a time, per call."""
    from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

    kind = WSMsgType.BINARY if binary else WSMsgType.TEXT
    landed: asyncio.Queue[int] = asyncio.Queue()

    class Echo(WSListener):
        got = 0

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type in (kind, WSMsgType.CONTINUATION):
                self.got += frame.payload_size
                if frame.fin:
                    landed.put_nowait(self.got)
                    self.got = 0
            elif frame.msg_type == WSMsgType.CLOSE:
                landed.put_nowait(-1)

    transport, _ = await ws_connect(Echo, url, ssl_context=ctx, extra_headers=headers,
                                    local_addr=(addresses.next(), 0),
                                    max_frame_size=1 << 20,
                                    websocket_handshake_timeout=120)

    async def run(n: int) -> None:
        for _ in range(n):
            transport.send(kind, payload)
            got = await asyncio.wait_for(landed.get(), 120)
            if got != len(payload):
                raise RuntimeError(f"echo of {got} bytes, not {len(payload)}")

    async def close() -> None:
        transport.send_close(WSCloseCode.OK)
        transport.disconnect()
        await asyncio.wait_for(transport.wait_disconnected(), 60)

    return run, close


#: Connections of the many-connections echo, and how many more echoes its
#: windows hold than the one-connection windows.
MANY, MANY_SCALE = 50, 5


async def many_connections(wsload: Path, url: str, cafile: str,
                           headers: dict[str, str], addresses: Addresses,
                           counter: Counter, messages: tuple[int, int]) -> float:
    """Instructions per 32-byte echo with :data:`MANY` busy connections."""
    from _cload import CLoad

    load = CLoad(wsload, "echo", url, cafile, MANY, b'{"n": "' + b"x" * 23 + b'"}',
                 False, headers=headers, addresses=addresses)
    await load.connect()

    async def echoes(n: int) -> None:
        start = load.count
        load.resume()
        while load.count - start < n and not load.errors:
            await asyncio.sleep(0.02)
        await load.pause()
        if load.errors:
            raise RuntimeError(f"{MANY} connections: {load.errors[0]}")

    try:
        await echoes(MANY * 2)
        small, large = (MANY_SCALE * m for m in messages)
        return await counter.slope(small, large, echoes)
    finally:
        await load.close()


async def count(kind: str, server: Server, directory: Path, url: str, ctx: Any,
                headers: dict[str, str], addresses: Addresses,
                messages: tuple[int, int], connections: tuple[int, int],
                sizes: list[int], binary_from: int, wsload: Path | None = None,
                cafile: str = "") -> dict[str, float]:
    """
    ``{"conn": instructions per connection, "msg <size>": per message,
    "many 32": per 32-byte message with many connections (with wsload)}``
    for one callgrind server that is listening.
    """
    counter = Counter(server, directory)

    async def connections_(n: int) -> None:
        for _ in range(n):
            await connect_and_close(url, ctx, headers, addresses)

    await connections_(3)  # warm: first-use imports and caches
    result = {"conn": await counter.slope(*connections, connections_)}
    for size in sizes:
        binary = size >= binary_from
        payload = os.urandom(size) if binary else b"x" * size
        run, close = await echo_work(url, ctx, headers, addresses, payload, binary)
        try:
            await run(20)
            result[f"msg {size}"] = await counter.slope(*messages, run)
        finally:
            await close()
    if wsload is not None:
        result["many 32"] = await many_connections(wsload, url, cafile, headers,
                                                   addresses, counter, messages)
    return result
