"""
The peer benchmark's loads besides plain echo throughput: a fixed message
rate with round trips timed, connection churn, and idle connections.

All use picows (a C WebSocket client on asyncio) and the same handshake:
``Origin`` and the JWT in the URL, each connection from its own loopback
source address (:class:`_harness.Addresses`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, cast

from _harness import Addresses
from _loads import Load, TaskLoad, tls_description


class RateLoad(Load):
    """
    ``clients`` connections sending ``rate`` text messages a second
    between them, round robin, on a fixed schedule (open loop: a late
    echo does not delay the next send), timing every echo from the send
    call to the arrival of its frame (``samples``, seconds).
    """

    name = "picows"

    def __init__(self, url: str, ctx: Any, clients: int, payload: bytes,
                 rate: float, **kw: Any) -> None:
        super().__init__(url, ctx, clients, payload, False, **kw)
        self.rate = rate
        self.ticker: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        from picows import WSListener, WSMsgType, ws_connect

        load = self
        self.text = WSMsgType.TEXT

        class Timer(WSListener):
            def __init__(self) -> None:
                self.sent: deque[float] = deque()

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type == WSMsgType.TEXT and self.sent:
                    load.samples.append(time.perf_counter() - self.sent.popleft())
                    load.count += 1
                    load._landed()
                elif frame.msg_type == WSMsgType.CLOSE:
                    load._failed(f"closed by the server: {frame.get_close_code()}")
                    transport.disconnect()

            def on_ws_disconnected(self, transport: Any) -> None:
                load._failed("disconnected by the server")

        self.conns: list[tuple[Any, Timer]] = []
        for _ in range(self.clients):
            transport, timer = await ws_connect(
                Timer, self.url, ssl_context=self.ctx,
                extra_headers=self.headers or None, **self.local_addr())
            self.conns.append((transport, cast(Timer, timer)))
        self.tls = tls_description(self.conns[0][0].underlying_transport)

    def resume(self) -> None:
        self.running = True
        self.drained.clear()
        self.ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        start, k = loop.time(), 0
        while self.running:
            delay = start + k / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            transport, timer = self.conns[k % len(self.conns)]
            timer.sent.append(time.perf_counter())
            self.in_flight += 1
            transport.send(self.text, self.payload)
            k += 1

    async def pause(self) -> None:
        self.running = False
        if self.ticker is not None:
            await self.ticker
        await super().pause()

    async def close(self) -> None:
        from picows import WSCloseCode

        self.closing = True
        for transport, _timer in self.conns:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
        for transport, _timer in self.conns:
            await asyncio.wait_for(transport.wait_disconnected(), 10)


async def connect_and_close(url: str, ctx: Any, headers: dict[str, str],
                            addresses: Addresses) -> str:
    """
    One full connection: TCP, TLS handshake (no resumption), WebSocket
    upgrade, close handshake (1000, answered by the server), TCP close.

    :returns: the negotiated TLS version and cipher.
    """
    from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

    class Closer(WSListener):
        def __init__(self) -> None:
            self.closed: asyncio.Future[WSCloseCode | None] = (
                asyncio.get_running_loop().create_future())

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == WSMsgType.CLOSE and not self.closed.done():
                self.closed.set_result(frame.get_close_code())

        def on_ws_disconnected(self, transport: Any) -> None:
            if not self.closed.done():
                self.closed.set_result(None)

    transport, listener = await ws_connect(
        Closer, url, ssl_context=ctx, extra_headers=headers,
        local_addr=(addresses.next(), 0), websocket_handshake_timeout=10)
    closed = cast(Closer, listener).closed
    tls = tls_description(transport.underlying_transport)
    transport.send_close(WSCloseCode.OK)
    code = await asyncio.wait_for(closed, 10)
    if code not in (None, WSCloseCode.OK):
        raise RuntimeError(f"close answered with {code}")
    transport.disconnect()
    await asyncio.wait_for(transport.wait_disconnected(), 10)
    return tls


class ChurnLoad(TaskLoad):
    """
    ``clients`` connectors, each doing :func:`connect_and_close` over and
    over while resumed; ``count`` is the connections completed.
    """

    name = "picows"

    def __init__(self, url: str, ctx: Any, clients: int, **kw: Any) -> None:
        super().__init__(url, ctx, clients, b"", False, **kw)
        assert self.addresses is not None

    async def _once(self) -> None:
        assert self.addresses is not None
        self.tls = await connect_and_close(self.url, self.ctx, self.headers,
                                           self.addresses)

    async def connect(self) -> None:
        await self._once()  # fail early, before the clock runs
        self._start([self._once] * self.clients)


class IdleConnections:
    """
    Connections that only handshake and then stay open, sending nothing
    (picows answers the servers' pings by itself).
    """

    def __init__(self, url: str, ctx: Any, headers: dict[str, str],
                 addresses: Addresses) -> None:
        self.url, self.ctx, self.headers = url, ctx, headers
        self.addresses = addresses
        self.transports: list[Any] = []
        self.errors: list[str] = []
        self.closing = False

    async def open(self, count: int, rate: float, concurrency: int) -> float:
        """
        Open ``count`` more, starting at most ``rate`` a second with at
        most ``concurrency`` handshakes in progress.

        :returns: the seconds it took.
        """
        from picows import WSListener, WSMsgType, ws_connect

        conns = self

        class Idle(WSListener):
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type == WSMsgType.CLOSE and not conns.closing:
                    conns.errors.append(f"closed by the server: "
                                        f"{frame.get_close_code()}")
                elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    conns.errors.append("unexpected data message")

            def on_ws_disconnected(self, transport: Any) -> None:
                if not conns.closing:
                    conns.errors.append("disconnected by the server")

        gate = asyncio.Semaphore(concurrency)

        async def one() -> Any:
            async with gate:
                transport, _ = await ws_connect(
                    Idle, self.url, ssl_context=self.ctx, extra_headers=self.headers,
                    local_addr=(self.addresses.next(), 0),
                    websocket_handshake_timeout=30)
                return transport

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        self.transports += await asyncio.gather(*tasks)
        return loop.time() - start

    def open_count(self) -> int:
        return sum(not t.is_disconnected for t in self.transports)

    async def close(self) -> None:
        self.closing = True
        for transport in self.transports:
            transport.disconnect()
        for transport in self.transports:
            await asyncio.wait_for(transport.wait_disconnected(), 30)
        self.transports = []
        self.closing = False
