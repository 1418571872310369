"""
What one connection costs above TLS and the kernel, in CPU instructions,
and where it goes.

Run (about two minutes; needs valgrind)::

    python bench/handshake_path.py [--connections 200]
    python bench/handshake_path.py --profile [--connections 2000]
    python bench/handshake_path.py --time [--connections 1000] [--rounds 7]

``bench/peers.py`` counts the instructions of whole connections (TCP,
TLS, upgrade, close) over real sockets; this script takes the TLS and
the sockets away, so that what the WebSocket layers cost shows alone and
can be taken apart.  Each kind is driven in memory: a protocol built by
its factory over a ``StringTransport`` receives the upgrade request
(with the ``Origin`` and the RS256 JWT of the peer benchmark), answers
101, receives a masked close frame, answers it, and loses its
connection.  Every kind runs twice under callgrind, once with no
connections and once with ``--connections``; the difference divided by
the count is the cost of one connection, setup excluded.

Kinds:

``autobahn``
    Autobahn's ``WebSocketServerFactory`` with its defaults and a plain
    echo protocol: what ``ab+twTLS`` and ``ab+swTLS`` run above TLS.
``securews``
    :class:`securews.SecureServerFactory` as the peer benchmark's
    securews: JWT verification (RS256, ``iss`` and ``aud``), the Origin
    allow-list, every limit at its default (per-session rates raised),
    metrics, and the one handshake log line written by the text observer
    ``[log]`` builds.
``securews-nolog``
    The same without a log observer (the event is still built).
``securews-noauth``
    The ``securews`` kind with its credential check taken out: the
    authenticator answers the principal the token would give (same id,
    claims and expiry) without reading the token, so every step after
    it (revocation, per-principal places, the log line) still runs.
    The difference to ``securews`` is what verifying the JWT costs.
``securews-es256``, ``securews-hs256``
    The ``securews`` kind with a JWT signed with ES256 (P-256) or HS256
    (a 64-character secret) instead of RS256 (RSA-2048).
``securews-cookie``
    The ``securews`` kind authenticating the web application's signed
    session cookie instead (``auth.cookie``, an HS256 JWT with ``sub``,
    ``iat`` and ``exp``, sent beside another cookie), no token in the
    query.  With ``securews-noauth``, these say what each credential
    check costs a handshake.

``--time`` counts CPU time instead (``time.process_time``): each kind in
a fresh process, the kinds taking turns over ``--rounds`` rounds,
medians printed; and, with the collector off for as many connections
again, the objects per connection that only the cyclic garbage
collector frees (everything else is freed when the connection ends).
Instruction counts repeat, but they weigh every instruction alike, and
the same count costs more time in code spread over many functions and
objects (securews) than in a tight loop
(Autobahn's eager debug formatting); the time is the figure a
connection rate follows, with the machine's noise.

``--profile`` runs the ``securews`` kind (and ``autobahn``) under
``cProfile`` instead, outside valgrind, and prints the functions with
the most own time and the most inclusive time, per connection: where to
look, not the instruction counts.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KINDS = ("autobahn", "securews", "securews-nolog", "securews-noauth",
         "securews-es256", "securews-hs256", "securews-cookie")
#: What each kind's request carries: a JWT signed with this algorithm in
#: ``?token=``, or (``cookie``) an HS256 JWT in the ``session`` cookie.
CREDENTIAL = {"securews-es256": "ES256", "securews-hs256": "HS256",
              "securews-cookie": "cookie"}
ORIGIN = "https://app.bench.example"
ISSUER = "https://auth.bench.example"
AUDIENCE = "securews-bench"


def close_frame() -> bytes:
    """A masked client close frame, code 1000 (all-zero mask)."""
    body = struct.pack("!H", 1000)
    return struct.pack("!BB", 0x88, 0x80 | len(body)) + b"\0\0\0\0" + body


def credential(kind: str) -> str:
    """``RS256``, ``ES256``, ``HS256`` or ``cookie``."""
    return CREDENTIAL.get(kind, "RS256")


def request(kind: str, token: str) -> bytes:
    query, cookie = f"?token={token}", ""
    if credential(kind) == "cookie":
        query, cookie = "", f"Cookie: theme=dark; session={token}\r\n"
    return (f"GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n{cookie}\r\n").encode()


def credentials(directory: Path) -> None:
    """
    Write to ``directory`` a verification key (``key-RS256``, a PEM
    public key; ``key-ES256``, P-256; ``key-HS256`` and ``key-cookie``,
    one 64-character secret) and a token it verifies (``token-...``) per
    credential: the JWTs with ``sub``, ``iss``, ``aud``, ``iat`` and
    ``exp``, the cookie's without ``iss`` and ``aud``, as a web
    application signs its session.
    """
    import secrets

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    now = int(time.time())
    claims = {"sub": "bench-user", "iss": ISSUER, "aud": AUDIENCE,
              "iat": now, "exp": now + 86400}
    secret = secrets.token_urlsafe(48)
    for name, private in (("RS256", rsa.generate_private_key(65537, 2048)),
                          ("ES256", ec.generate_private_key(ec.SECP256R1()))):
        (directory / f"key-{name}").write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo))
        (directory / f"token-{name}").write_text(
            jwt.encode(claims, private, algorithm=name))
    (directory / "key-HS256").write_text(secret + "\n")
    (directory / "token-HS256").write_text(
        jwt.encode(claims, secret, algorithm="HS256"))
    (directory / "key-cookie").write_text(secret + "\n")
    (directory / "token-cookie").write_text(jwt.encode(
        {"sub": "bench-user", "iat": now, "exp": now + 86400}, secret,
        algorithm="HS256"))


def token(kind: str, directory: Path) -> str:
    return (directory / f"token-{credential(kind)}").read_text()


def build(kind: str, directory: Path) -> tuple[Any, Any]:
    """``(factory, clock)`` for ``kind``."""
    import txaio
    from twisted.internet.task import Clock

    clock = Clock()
    clock.advance(time.time())  # the JWT's iat and exp are real times
    txaio.use_twisted()
    txaio.config.loop = clock
    if kind == "autobahn":
        from autobahn.twisted.websocket import (
            WebSocketServerFactory,
            WebSocketServerProtocol,
        )

        class Echo(WebSocketServerProtocol):
            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                self.sendMessage(payload, isBinary)

        factory = WebSocketServerFactory(reactor=clock)
        factory.protocol = Echo
        return factory, clock
    from twisted.logger import globalLogBeginner

    from securews.ops.logs import make_observer
    from securews.testing import make_config
    from securews.wire.factory import SecureServerFactory

    method = credential(kind)
    key_file = str(directory / f"key-{method}")
    auth: dict[str, Any] = (
        {"methods": ["cookie"],
         "cookie": {"mode": "signed", "secret_file": key_file, "max_age": 86400}}
        if method == "cookie" else
        {"methods": ["jwt"],
         "jwt": {"algorithms": [method], "key_file": key_file,
                 "issuer": ISSUER, "audience": AUDIENCE}})
    config = make_config(
        server={"path": "/ws", "app": "echo"},
        tls={"cert": "/unused/cert.pem", "key": "/unused/key.pem"},
        log={"file": str(directory / "securews.log")},
        origin={"allowed": [ORIGIN]},
        auth=auth,
        ratelimit={"messages_per_second": 100_000, "message_burst": 100_000,
                   "bytes_per_second": 2**30, "bytes_burst": 2**30,
                   "sessions_per_principal": 1_000_000,
                   "connections_per_ip": 100_000, "connect_rate": 100_000,
                   "connect_burst": 1_000_000},
    )
    observers = [] if kind == "securews-nolog" else [make_observer(config.log)]
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False,
                                     discardBuffer=True)
    factory = SecureServerFactory(config, reactor=clock)
    if kind == "securews-noauth":
        factory.policy.authenticator = _unchecked(directory)
    return factory, clock


def _unchecked(directory: Path) -> Any:
    """The peer benchmark's unchecked authenticator, for this token."""
    import _harness
    import jwt

    claims = jwt.decode(token("securews", directory),
                        options={"verify_signature": False})
    return _harness.unchecked_authenticator(claims)


def _transport_class() -> Any:
    from twisted.internet.testing import StringTransport

    class Transport(StringTransport):
        def unregisterProducer(self) -> None:
            # Autobahn unregisters whether or not it registered.
            self.producer = None

    return Transport


def connect(factory: Any, clock: Any, data: bytes, index: int,
            transport_class: Any) -> None:
    """One connection, accept to close, in memory."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.protocol import connectionDone

    address = IPv4Address("TCP", f"10.{index >> 16 & 255}.{index >> 8 & 255}."
                          f"{index & 255}", 40000)
    proto = factory.buildProtocol(address)
    transport = transport_class(peerAddress=address)
    proto.makeConnection(transport)
    proto.dataReceived(data)
    if not transport.value().startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"handshake failed: {transport.value()[:300]!r}")
    proto.dataReceived(close_frame())
    proto.connectionLost(connectionDone)
    clock.advance(0)


def drive(kind: str, connections: int, directory: Path, timed: bool = False) -> None:
    """
    The child: set up, connect once (warm), then ``connections`` times.
    With ``timed``, warm up with ``connections`` more first, then print
    the CPU time per connection.
    """
    factory, clock = build(kind, directory)
    data = request(kind, token(kind, directory))
    transport = _transport_class()
    connect(factory, clock, data, 0, transport)
    first = 1
    if timed:
        for i in range(connections):
            connect(factory, clock, data, first + i, transport)
        first += connections
        started = time.process_time()
    for i in range(connections):
        connect(factory, clock, data, first + i, transport)
    if timed:
        print(f"CPU {(time.process_time() - started) / connections * 1e6:.1f}")
        first += connections
        gc.collect()
        gc.disable()
        for i in range(connections):
            connect(factory, clock, data, first + i, transport)
        print(f"CYCLIC {gc.collect() / connections:.1f}")
        gc.enable()


def cpu_time(kind: str, connections: int, directory: Path) -> tuple[float, float]:
    """
    Microseconds of CPU per connection, from a fresh child process, and
    the objects per connection that only the cyclic garbage collector
    frees (the rest is freed the moment the connection ends).
    """
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--connections", str(connections),
         "--directory", str(directory), "--timed"],
        check=True, capture_output=True, text=True)
    match = re.search(r"^CPU ([0-9.]+)\nCYCLIC ([0-9.]+)$", done.stdout, re.MULTILINE)
    if match is None:
        raise SystemExit(f"{kind}: no time printed: {done.stderr[-500:]}")
    return float(match.group(1)), float(match.group(2))


def instructions(kind: str, connections: int, directory: Path) -> int:
    out = directory / f"callgrind.{kind}.{connections}"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         sys.executable, __file__, "--child", kind, "--connections",
         str(connections), "--directory", str(directory)],
        check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit("callgrind wrote no summary")
    return int(match.group(1))


def profile(kinds: list[str], connections: int, directory: Path, top: int,
            callers: list[str]) -> None:
    import cProfile
    import pstats

    for kind in kinds:
        factory, clock = build(kind, directory)
        data = request(kind, token(kind, directory))
        transport = _transport_class()
        connect(factory, clock, data, 0, transport)
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(connections):
            connect(factory, clock, data, i + 1, transport)
        profiler.disable()
        stats = pstats.Stats(profiler)
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"\n{kind}: {total / connections * 1e6:.0f} us per connection "
              "under cProfile")
        entries = stats.stats  # type: ignore[attr-defined]
        for order, label in ((2, "own"), (3, "inclusive")):
            print(f"  by {label} time, us per connection:")
            ranked = sorted(entries.items(), key=lambda kv: -kv[1][order])[:top]
            for (file, line, name), row in ranked:
                where = re.sub(r".*site-packages/|.*/wt-[^/]*/", "", file)
                print(f"    {row[order] / connections * 1e6:8.1f}  "
                      f"{row[1] / connections:5.1f} calls  {name} ({where}:{line})")
        for name in callers:
            stats.print_callers(name)


def times(kinds: list[str], connections: int, rounds: int, directory: Path) -> None:
    taken: dict[str, list[float]] = {kind: [] for kind in kinds}
    cyclic: dict[str, float] = {}
    for _ in range(rounds):
        for kind in kinds:
            cpu, cyclic[kind] = cpu_time(kind, connections, directory)
            taken[kind].append(cpu)
    median = {kind: statistics.median(values) for kind, values in taken.items()}
    print(f"CPU time per connection, upgrade to close ({connections} connections, "
          f"in memory, no TLS; median of {rounds} turns, low to high in brackets):")
    for kind in kinds:
        ratio = (f"  {median[kind] / median['autobahn']:5.2f}x autobahn"
                 if "autobahn" in median and kind != "autobahn" else "")
        print(f"  {kind:15} {median[kind]:8.1f} us  "
              f"[{min(taken[kind]):.1f} to {max(taken[kind]):.1f}]{ratio}")
    print("objects per connection left to the cyclic garbage collector "
          "(the rest is freed when the connection ends):")
    for kind in kinds:
        print(f"  {kind:15} {cyclic[kind]:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--callers", action="append", default=[],
                        help="with --profile: who calls functions matching this")
    parser.add_argument("--time", action="store_true",
                        help="CPU time per connection instead of instructions "
                             "(no valgrind; the kinds take turns)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="with --time: turns per kind; medians are printed")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--directory", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--timed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # The securews of this source tree, not an installed copy.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.child:
        drive(args.child, args.connections, args.directory, args.timed)
        return
    if args.connections < 1 or args.rounds < 1:
        parser.error("--connections and --rounds must be at least 1")
    kinds = args.kinds.split(",")
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown kind {sorted(unknown)[0]!r}: "
                     f"choose from {', '.join(KINDS)}")
    with tempfile.TemporaryDirectory(prefix="securews-handshake-") as tmp:
        directory = Path(tmp)
        credentials(directory)
        if args.profile:
            profile(kinds, args.connections, directory, args.top, args.callers)
            return
        if args.time:
            times(kinds, args.connections, args.rounds, directory)
            return
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind not found (Debian package valgrind)")
        per: dict[str, float] = {}
        for kind in kinds:
            base = instructions(kind, 0, directory)
            loaded = instructions(kind, args.connections, directory)
            per[kind] = (loaded - base) / args.connections
    print(f"instructions per connection, upgrade to close ({args.connections} "
          "connections, in memory, no TLS):")
    for kind in kinds:
        ratio = (f"  {per[kind] / per['autobahn']:5.2f}x autobahn"
                 if "autobahn" in per and kind != "autobahn" else "")
        print(f"  {kind:15} {per[kind]:12,.0f}{ratio}")


if __name__ == "__main__":
    main()
