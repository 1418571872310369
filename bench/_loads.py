"""
Client loads and the alternating-slices measurement the benchmarks share.

A :class:`Load` is a set of client connections to one server that can be
resumed and paused: while resumed it works (echoes, or whatever a
subclass does) and counts; pausing returns once nothing is in flight.
:func:`alternate` gives every server kind its load, then lets the kinds
take turns in short slices until each has run the measured time, so that
what other programs do to the machine falls on every kind alike.  CPU
time of the server, of this (client) process and of the whole machine is
summed over a kind's slices from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from _harness import Addresses, Server, busy_seconds, kernel_seconds, schedstat

#: Seconds a kind runs after it resumes before its slice is counted.
SETTLE = 0.05


class Load:
    """
    ``clients`` connections that echo ``payload`` (one message in flight
    per connection) while resumed; ``count`` is the round trips so far.

    :param headers: extra handshake headers (``Origin``).
    :param addresses: where source addresses come from; ``None``: the
        kernel's choice (127.0.0.1).
    """

    name = ""

    def __init__(self, url: str, ctx: ssl.SSLContext, clients: int,
                 payload: bytes, binary: bool, *,
                 headers: Mapping[str, str] | None = None,
                 addresses: Addresses | None = None) -> None:
        self.url, self.ctx, self.clients = url, ctx, clients
        self.payload, self.binary = payload, binary
        self.headers = dict(headers or {})
        self.addresses = addresses
        self.count = 0
        #: Round-trip times, seconds (only loads that time messages).
        self.samples: list[float] = []
        self.errors: list[str] = []
        self.running = self.closing = False
        self.in_flight = 0
        self.drained = asyncio.Event()
        self.tls = ""

    def local_addr(self) -> dict[str, Any]:
        if self.addresses is None:
            return {}
        return {"local_addr": (self.addresses.next(), 0)}

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


def tls_description(transport: Any) -> str:
    """``"TLSv1.3 TLS_AES_256_GCM_SHA384"`` for an asyncio TLS transport."""
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if obj is None:
        return "?"
    return f"{obj.version()} {obj.cipher()[0]}"


class PicowsLoad(Load):
    name = "picows"

    async def connect(self) -> None:
        from picows import WSListener, WSMsgType, ws_connect

        load = self
        self.msg_type = msg_type = (WSMsgType.BINARY if self.binary
                                    else WSMsgType.TEXT)
        size = len(self.payload)

        class Echoer(WSListener):
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
                Echoer, self.url, ssl_context=self.ctx, max_frame_size=1 << 20,
                extra_headers=self.headers or None, **self.local_addr())
            self.transports.append(transport)
        self.tls = tls_description(self.transports[0].underlying_transport)

    def resume(self) -> None:
        self.running = True
        self.drained.clear()
        self.in_flight = len(self.transports)
        for transport in self.transports:
            transport.send(self.msg_type, self.payload)

    async def close(self) -> None:
        from picows import WSCloseCode

        self.closing = True
        for transport in self.transports:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        for transport in self.transports:
            await asyncio.wait_for(transport.wait_disconnected(), 10)


class TaskLoad(Load):
    """A load of asyncio tasks, each repeating one awaitable step (an echo,
    a whole connection) while resumed."""

    def _start(self, steps: list[Callable[[], Awaitable[None]]]) -> None:
        self.go = asyncio.Event()
        self.tasks = [asyncio.create_task(self._repeat(step)) for step in steps]

    async def _repeat(self, step: Callable[[], Awaitable[None]]) -> None:
        try:
            while True:
                await self.go.wait()
                if self.closing:
                    return
                if not self.running:
                    continue
                self.in_flight += 1
                await step()
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


class WebsocketsLoad(TaskLoad):
    name = "websockets"

    async def connect(self) -> None:
        from websockets.asyncio.client import connect

        self.conns = [await connect(self.url, ssl=self.ctx, compression=None,
                                    max_size=1 << 20, ping_interval=None,
                                    additional_headers=self.headers or None,
                                    **self.local_addr())
                      for _ in range(self.clients)]
        self.tls = tls_description(self.conns[0].transport)
        message = self.payload if self.binary else self.payload.decode()
        self._start([functools.partial(self._echo, c, message) for c in self.conns])

    async def _echo(self, conn: Any, message: bytes | str) -> None:
        await conn.send(message)
        if len(await conn.recv()) != len(message):
            self.errors.append("short echo")

    async def close(self) -> None:
        await super().close()
        for conn in self.conns:
            await asyncio.wait_for(conn.close(), 10)


def client_class(name: str) -> type[Load]:
    """``"picows"``, ``"websockets"`` or ``"auto"`` (picows if installed)."""
    if name == "auto":
        try:
            import picows  # noqa: F401
        except ImportError:
            return WebsocketsLoad
        return PicowsLoad
    return PicowsLoad if name == "picows" else WebsocketsLoad


# -- measuring ------------------------------------------------------------------


class Tally:
    """One kind's sums over its slices of one load."""

    def __init__(self) -> None:
        self.wall = self.messages = 0.0
        self.server = self.server_wait = self.client = self.client_wait = 0.0
        self.busy = self.server_kernel = 0.0
        self.rates: list[float] = []
        self.costs: list[float] = []
        self.samples: list[float] = []

    def row(self) -> dict[str, float]:
        """
        ``rate`` (median of the slices, per second), ``server``, ``wait``,
        ``client``, ``client_wait`` and ``other`` (% of one CPU over the
        measured time), ``us`` (server CPU microseconds per unit of
        work, median of the slices) and ``kernel_us`` (of it in the
        kernel, over all the slices: ``stime`` counts in whole ticks).
        """
        w = self.wall
        return {
            "rate": statistics.median(self.rates),
            "server": 100 * self.server / w,
            "wait": 100 * self.server_wait / w,
            "client": 100 * self.client / w,
            "client_wait": 100 * self.client_wait / w,
            "other": max(0.0, 100 * (self.busy - self.server - self.client) / w),
            "us": statistics.median(self.costs),
            "kernel_us": 1e6 * self.server_kernel / max(self.messages, 1),
        }


def snapshot(load: Load, server: Server) -> tuple[float, ...]:
    """The clock, the count, then (on-CPU, waiting) seconds of the server,
    of the client (this process and the load's own process, if any) and
    the machine's busy seconds."""
    client_run, client_wait = schedstat()
    pid = getattr(load, "pid", None)
    if pid:
        run, wait = schedstat(pid)
        client_run, client_wait = client_run + run, client_wait + wait
    return (time.monotonic(), load.count, *schedstat(server.pid),
            client_run, client_wait, busy_seconds(), kernel_seconds(server.pid))


async def alternate(loads: Mapping[str, Load], running: Mapping[str, Server], *,
                    seconds: float, slice_: float, warmup: float,
                    what: str) -> dict[str, Tally]:
    """
    Connect every kind's load, give each ``warmup`` seconds, then run
    them in turns of ``slice_`` seconds (the first kind rotating) until
    each has run ``seconds``; close them all.

    :param what: names the load in errors.
    :raises RuntimeError: when a load reports an error, a server exits,
        or a kind completes nothing.
    """
    kinds = list(loads)
    tallies = {kind: Tally() for kind in kinds}
    slices = max(1, round(seconds / slice_))
    connected: list[Load] = []
    try:
        for kind in kinds:
            await asyncio.wait_for(loads[kind].connect(), 120)
            connected.append(loads[kind])
        for kind in kinds:
            loads[kind].resume()
            await asyncio.sleep(warmup)
            await loads[kind].pause()
        for i in range(slices):
            for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
                load, server, tally = loads[kind], running[kind], tallies[kind]
                load.resume()
                await asyncio.sleep(SETTLE)
                before, first = snapshot(load, server), len(load.samples)
                await asyncio.sleep(slice_)
                after, last = snapshot(load, server), len(load.samples)
                await load.pause()
                if load.errors or not server.alive():
                    raise RuntimeError(
                        f"{kind}, {what}: "
                        f"{load.errors[0] if load.errors else 'server exited'}"
                        f"{server.stderr_tail()}")
                wall, n, srv, srv_wait, cli, cli_wait, busy, kernel = (
                    b - a for a, b in zip(before, after, strict=True))
                tally.server_kernel += kernel
                tally.wall += wall
                tally.messages += n
                tally.server += srv
                tally.server_wait += srv_wait
                tally.client += cli
                tally.client_wait += cli_wait
                tally.busy += busy
                tally.rates.append(n / wall)
                tally.costs.append(1e6 * srv / max(n, 1))
                tally.samples.extend(load.samples[first:last])
    finally:
        for load in connected:
            with contextlib.suppress(Exception):
                await load.close()
    for kind, tally in tallies.items():
        if not tally.messages:
            raise RuntimeError(f"{kind}, {what}: nothing completed")
    return tallies
