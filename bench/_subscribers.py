"""
The subscribers of ``channels.py``, one asyncio process each: commands
come over a pipe (open sessions, count, take the tally, close), and every
message is checked and timed as it arrives.

A session subscribes to :data:`CHANNEL`, then expects each message once,
in offset order: a repeat, a gap or a ``recovered: false`` notice is
counted, and so is every close that is not the client's own (the kind and
the code and reason).  Each message's ``data`` carries its send time
(``t``, ``time.monotonic()`` of the publishing process: one clock for
every process on Linux), so its latency is the receive time minus ``t``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import ssl
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

from cluster import ORIGIN
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

CHANNEL = "bench:fanout"
#: Handshakes in flight per client process while subscribers connect.
CONNECTING = 8


class Tally:
    """What one client process's subscribers received since the last look."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.delivered = 0
        self.latencies = array("d")
        self.gaps = 0
        self.repeats = 0
        self.lost_notices = 0
        self.last = 0.0
        self.cpu = time.process_time()

    def take(self) -> dict[str, Any]:
        report = {"delivered": self.delivered, "latencies": self.latencies.tobytes(),
                  "gaps": self.gaps, "repeats": self.repeats,
                  "lost_notices": self.lost_notices, "last": self.last,
                  "cpu": time.process_time() - self.cpu}
        self.reset()
        return report


async def subscriber(kind: str, url: str, context: ssl.SSLContext, tally: Tally,
                     closes: collections.Counter[str], opened: asyncio.Queue[Any],
                     gate: asyncio.Semaphore) -> None:
    """One session: subscribe, then check and time every message until
    closed.  A failed handshake or subscription is counted and tried again
    (three times at most), so that the load is the one asked for."""
    async with gate:
        for attempt in range(1, 4):
            try:
                ws = await connect(url, ssl=context, origin=Origin(ORIGIN),
                                   open_timeout=60, ping_interval=None,
                                   compression=None)
                await ws.send(json.dumps({"op": "subscribe", "channel": CHANNEL,
                                          "id": 1}))
                reply = json.loads(await ws.recv())
                if reply.get("ok") is not True:
                    raise RuntimeError(f"subscribe refused: {reply}")
                break
            except Exception as e:  # reported, not raised
                closes[f"{kind}: handshake or subscribe failed "
                       f"({type(e).__name__}: {e})"] += 1
                if attempt == 3:
                    await opened.put(None)
                    return
                await asyncio.sleep(0.5 * attempt)
    await opened.put(ws)
    offset = reply["offset"]
    try:
        async for message in ws:
            now = time.monotonic()
            frame = json.loads(message)
            if "data" not in frame:
                tally.lost_notices += 1
                offset = frame["offset"]
                continue
            if frame["offset"] <= offset:
                tally.repeats += 1
                continue
            if frame["offset"] != offset + 1:
                tally.gaps += 1
            offset = frame["offset"]
            tally.delivered += 1
            tally.latencies.append(now - frame["data"]["t"])
            tally.last = now
    except ConnectionClosed:
        pass
    rcvd = ws.protocol.close_rcvd
    if rcvd is None:
        closes[f"{kind}: connection lost"] += 1
    elif rcvd.code != 1000:
        closes[f"{kind}: closed {rcvd.code} {rcvd.reason!r}"] += 1


async def client_loop(pipe: Connection, ca_file: str) -> None:
    """Commands from the parent: open subscribers, count, take, close."""
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context(cafile=ca_file)
    tally = Tally()
    closes: collections.Counter[str] = collections.Counter()
    sessions: list[ClientConnection] = []
    tasks: set[asyncio.Task[None]] = set()
    while True:
        command, argument = await loop.run_in_executor(None, pipe.recv)
        if command == "open":
            kind, urls = argument
            began, count = time.monotonic(), 0
            opened: asyncio.Queue[Any] = asyncio.Queue()
            gate = asyncio.Semaphore(CONNECTING)
            for url in urls:
                task = asyncio.create_task(subscriber(kind, url, context, tally,
                                                      closes, opened, gate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            for _ in urls:
                ws = await opened.get()
                if ws is not None:
                    sessions.append(ws)
                    count += 1
            pipe.send((count, time.monotonic() - began))
        elif command == "count":
            pipe.send(tally.delivered)
        elif command == "take":
            pipe.send(tally.take())
        elif command == "close":
            await asyncio.gather(*(ws.close() for ws in sessions),
                                 return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)
            pipe.send(dict(closes))
        else:
            return


def client_process(pipe: Connection, ca_file: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    asyncio.run(client_loop(pipe, ca_file))
