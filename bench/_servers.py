"""
The echo servers the benchmarks measure, one per process.

Run by :class:`_harness.Server` as ``python bench/_servers.py KIND PORT
CERT KEY [CPU]`` (port 0 picks a free port); prints ``READY <port>`` once
listening on 127.0.0.1, or ``FAILED <why>``, and runs until SIGINT.  Each
process pins itself to CPU (the parent's choice, never an inherited
mask), raises its open-file limit to the hard limit, dies with its
parent, and logs to ``KIND.log`` beside ``CERT``.  Every kind serves
``/ws`` over TLS with the same certificate.

``securews``
    securews as deployed, through :func:`securews.service._service.build_service`
    (what ``twistd securews`` runs, minus systemd): the built-in echo app;
    JWT authentication (RS256, key ``jwt-public.pem`` beside ``CERT``,
    ``iss`` and ``aud`` checked, token in the ``?token=`` query); Origin
    allow-list ``https://app.bench.example``, a missing Origin refused;
    every ``[limits]`` default (64 KiB messages and frames, heartbeat
    every 20 s with a 10 s timeout, 300 s idle timeout, 1 MiB write-buffer
    limit, 24 h lifetime, 5 s handshake timeout); ``[messages]`` defaults
    (UTF-8 checked, binary allowed); the per-client connection limits at
    their defaults (20 per address, 5/s, burst 20), which the benchmark
    meets by giving every connection its own source address; only the
    per-session message and byte rates raised (:data:`PEER_RATES`), since
    one benchmark connection sends thousands of messages a second.  The
    buckets are still charged for every message.  Logs: one INFO line per
    handshake, text, to a file.
``securews-unchecked``
    The ``securews`` kind with its credential check taken out
    (:func:`_harness.unchecked_authenticator`): every connection gets
    the principal the benchmark's token gives without the token being
    read; everything else as ``securews``.  ``peers.py --unchecked``
    sets it beside the others: the difference is what verifying the JWT
    costs per connection.
``securews-on``, ``securews-min``
    ``echo_overhead.py``'s kinds: anonymous authenticator, missing Origin
    allowed, every rate raised to its maximum, heartbeat every second
    (``-on``) or every rate-free timer at its maximum (``-min``).
``autobahn``
    Autobahn's ``WebSocketServerFactory`` and a plain echo protocol behind
    securews's TLS context, with the Autobahn options a
    ``SecureServerFactory`` sets (so only securews's session layer
    differs from ``securews-on``).
``autobahn-defaults``
    The same with Autobahn's own defaults: no defences (no size limits,
    no Origin check, no heartbeat, no authentication), still behind
    securews's TLS context: what securews's session layer and options
    cost, TLS set aside.
``autobahn-twisted``
    The same echo protocol and Autobahn defaults, served the way an
    Autobahn user serves ``wss://``: an ``ssl:`` endpoint string, that is
    Twisted's ``listenSSL`` with a default ``CertificateOptions`` (which,
    among other things, releases idle connections' TLS buffers and lets
    OpenSSL choose among its default suites and groups).
``websockets``
    ``websockets.asyncio.server.serve`` (asyncio's default event loop,
    *not* uvloop) with an ``async for message in ws: await ws.send(message)``
    handler and the library's defaults: 1 MiB ``max_size``, ping every
    20 s with a 20 s timeout, ``max_queue`` 16, ``write_limit`` 32 KiB,
    10 s open and close timeouts, no Origin check, permessage-deflate
    offered (the picows client does not ask for it, so it is never used),
    logging not configured.  TLS from the ``ssl`` module: a
    ``PROTOCOL_TLS_SERVER`` context with the certificate and nothing else
    changed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import _harness

KINDS = ("securews", "securews-unchecked", "securews-on", "securews-min", "autobahn",
         "autobahn-defaults", "autobahn-twisted", "websockets")

#: The peer benchmark's securews: per-session rates raised, nothing else.
PEER_RATES = {
    "messages_per_second": 100_000,
    "message_burst": 100_000,
    "bytes_per_second": 2**30,
    "bytes_burst": 2**30,
    # Every benchmark connection is the same JWT user.
    "sessions_per_principal": 1_000_000,
}

#: echo_overhead.py's kinds: every rate at its maximum.
OVERHEAD_RATES = {
    "connections_per_ip": 100_000,
    "connect_rate": 100_000,
    "connect_burst": 1_000_000,
    "messages_per_second": 1_000_000,
    "message_burst": 10_000_000,
    "bytes_per_second": 2**34,
    "bytes_burst": 2**34,
}

OVERHEAD_LIMITS: dict[str, dict[str, object]] = {
    "securews-on": {"ping_interval": 1.0},
    "securews-min": {"ping_interval": 3600, "ping_timeout": 3600,
                     "idle_timeout": 7 * 86400, "max_lifetime": 0},
}


def peer_config(port: int, cert: str, key: str, log_file: str) -> Any:
    """The ``securews`` kind's settings (see the module docstring)."""
    from securews.testing import make_config

    return make_config(
        server={"listen": f"tcp:{port}:interface=127.0.0.1",
                "path": _harness.PATH, "app": "echo"},
        tls={"cert": cert, "key": key},
        log={"file": log_file},
        origin={"allowed": [_harness.ORIGIN]},
        auth={"methods": ["jwt"],
              "jwt": {"algorithms": ["RS256"],
                      "key_file": str(Path(cert).parent / _harness.JWT_PUBLIC),
                      "issuer": _harness.JWT_ISSUER,
                      "audience": _harness.JWT_AUDIENCE}},
        ratelimit=PEER_RATES,
    )


def overhead_factory(kind: str, cert: str, key: str, log_file: str,
                     reactor: Any) -> Any:
    """``securews-on`` or ``securews-min``: a ``SecureServerFactory``."""
    from securews import SecureServerFactory
    from securews.auth.anonymous import AnonymousAuthenticator
    from securews.testing import make_config

    config = make_config(
        server={"path": _harness.PATH},
        tls={"cert": cert, "key": key},
        log={"file": log_file},
        origin={"allow_missing": True},
        auth={"methods": []},  # replaced by the authenticator below
        ratelimit=OVERHEAD_RATES,
        limits=OVERHEAD_LIMITS[kind],
        messages={"format": "any", "allow_binary": True},
    )
    return SecureServerFactory(config, authenticator=AnonymousAuthenticator(),
                               reactor=reactor)


def autobahn_factory(kind: str, cert: str, key: str, log_file: str,
                     reactor: Any) -> Any:
    """
    ``autobahn`` or ``autobahn-defaults``, wrapped in securews's TLS;
    ``autobahn-twisted`` unwrapped (its TLS comes from the endpoint).
    """
    from autobahn.twisted.websocket import (
        WebSocketServerFactory,
        WebSocketServerProtocol,
    )
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from securews.wire.tls import server_context

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)  # type: ignore[no-untyped-call]

    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = Echo
    if kind == "autobahn-twisted":
        return factory
    secure = overhead_factory("securews-on", cert, key, log_file, reactor)
    if kind == "autobahn":
        for name in WebSocketServerProtocol.CONFIG_ATTRS:
            setattr(factory, name, getattr(secure, name))
    return TLSMemoryBIOFactory(server_context(secure.config.tls), False, factory)


def twisted_tls_endpoint(reactor: Any, port: int, cert: str, key: str) -> Any:
    """
    What an Autobahn user writes: an ``ssl:`` endpoint string, that is
    ``reactor.listenSSL`` with Twisted's ``CertificateOptions`` at its
    defaults (built from the key and certificate files).
    """
    from twisted.internet.endpoints import serverFromString

    return serverFromString(
        reactor, f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}")


def serve_twisted(kind: str, port: int, cert: str, key: str) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from securews.ops.logs import make_observer

    log_file = str(Path(cert).parent / f"{kind}.log")

    def ready(listening: Any) -> None:
        install_marker()
        print(f"READY {listening.getHost().port}", flush=True)

    def failed(failure: Any) -> None:
        print(f"FAILED {failure.getErrorMessage()}", flush=True)
        reactor.stop()

    if kind in ("securews", "securews-unchecked"):
        from securews.service._service import build_service

        config = peer_config(port, cert, key, log_file)
        globalLogBeginner.beginLoggingTo([make_observer(config.log)],
                                         redirectStandardIO=False)
        authenticator = (_harness.unchecked_authenticator(_harness.token_claims())
                         if kind == "securews-unchecked" else None)
        service = build_service(config, reactor, authenticator=authenticator)
        service.startService()
        waiting = service.listener.when_listening()  # type: ignore[attr-defined]
        waiting.addCallbacks(ready, failed)
    else:
        from twisted.internet.endpoints import TCP4ServerEndpoint

        from securews import listening_factory

        if kind.startswith("securews"):
            factory = overhead_factory(kind, cert, key, log_file, reactor)
            observer = make_observer(factory.config.log)
            wrapped = listening_factory(factory)
        else:
            log = open(log_file, "a")  # noqa: SIM115 -- open for the process's life
            observer = textFileLogObserver(log)
            wrapped = autobahn_factory(kind, cert, key, log_file, reactor)
        globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
        if kind == "autobahn-twisted":
            endpoint = twisted_tls_endpoint(reactor, port, cert, key)
        else:
            endpoint = TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
        endpoint.listen(wrapped).addCallbacks(ready, failed)
    reactor.run()


def serve_websockets(port: int, cert: str, key: str) -> None:
    import asyncio
    import signal
    import ssl

    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGINT, stop.set_result, None)
        async with serve(echo, "127.0.0.1", port, ssl=ctx) as server:
            install_marker(asyncio.get_running_loop())
            sock = next(iter(server.sockets))
            print(f"READY {sock.getsockname()[1]}", flush=True)
            await stop

    asyncio.run(main())


def install_marker(loop: Any = None) -> None:
    """
    On SIGUSR1, call libc's ``seed48`` and print ``MARKED <n>``: the
    instruction benchmark's way of cutting a server's run into windows
    (under callgrind, ``--dump-before=seed48*`` writes the instructions
    counted since the previous mark; nothing else in these processes
    uses the ``drand48`` family).  With an asyncio ``loop``, the handler
    runs on it.
    """
    import ctypes
    import signal

    libc = ctypes.CDLL(None)
    state = (ctypes.c_ushort * 3)(0x330E, 0, 0)
    marks = [0]

    def mark(*_: object) -> None:
        libc.seed48(state)
        marks[0] += 1
        print(f"MARKED {marks[0]}", flush=True)

    if loop is None:
        signal.signal(signal.SIGUSR1, mark)
    else:
        loop.add_signal_handler(signal.SIGUSR1, mark)


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5) or argv[0] not in KINDS:
        print(f"usage: _servers.py {{{','.join(KINDS)}}} PORT CERT KEY [CPU]",
              file=sys.stderr)
        return 2
    kind, port, cert, key = argv[:4]
    cpu = argv[4] if len(argv) == 5 else ""
    _harness.die_with_parent()
    # The CPU comes from the parent: an inherited affinity may be the
    # client's own (it was, when the client pinned itself first).
    _harness.pin_server(int(cpu) if cpu else None)
    _harness.raise_nofile()
    audit = os.environ.get("SECUREWS_BENCH_AUDIT")
    if audit:
        import _audit

        _audit.install(audit)
    if kind == "websockets":
        serve_websockets(int(port), cert, key)
    else:
        serve_twisted(kind, int(port), cert, key)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
