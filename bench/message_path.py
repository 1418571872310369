"""
What securews adds to the cost of one message, in CPU instructions.

Run (about a minute; needs valgrind)::

    python bench/message_path.py [--messages 4000] [--size 32]

Wall-clock benchmarks on a shared machine wobble by 10% from run to run,
more than the difference this script is for.  Instruction counts do not:
valgrind's callgrind counts the instructions a process executes, the same
for the same inputs whatever else the machine is doing.

Each server kind is driven in memory, with no sockets, no TLS and no
reactor loop (what those cost is the same for every kind): a protocol
over a ``StringTransport`` completes its opening handshake, then receives
``--messages`` masked client frames, one ``dataReceived`` call each, and
echoes them.  Every kind runs twice under callgrind, once with no
messages and once with ``--messages``; the difference divided by the
message count is the cost of one message, setup excluded.

Kinds:

``securews``
    :class:`securews.SecureServerFactory` with the built-in echo app and
    every in-session control working (buckets charged, validation with
    format ``"any"``, heartbeat and idle deadlines, fragment count, the
    write-buffer check, metrics).
``securews-json``
    The same with ``format = "json"`` (messages are ``{"n": ...}``).
``autobahn``
    Autobahn's ``WebSocketServerProtocol`` echoing in ``onMessage``, with
    the Autobahn options a ``SecureServerFactory`` sets.
``autobahn-lean``
    The same, plus the three shortcuts securews's session takes around
    Autobahn's per-message debug logging and ``message`` event (see
    ``securews.wire._session``), and no controls: the ratio of
    ``securews`` to this kind is the price of the controls alone.

The ratio columns are securews's instructions per message over each
Autobahn kind's: what a securews message costs the CPU next to a bare
Autobahn one, and the price of the controls alone, both without the TLS
and kernel work that a real connection adds on top for every kind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from typing import Any

KINDS = ("autobahn", "autobahn-lean", "securews", "securews-json")


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked, final client frame (all-zero mask: payload unchanged)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + b"\0\0\0\0" + payload


def payload_for(kind: str, size: int) -> bytes:
    if kind == "securews-json":
        body = b'{"n":"' + b"x" * max(0, size - 8) + b'"}'
        return body
    return b"x" * size


def request() -> bytes:
    return (b"GET /ws HTTP/1.1\r\nHost: ws.example.com\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            b"Origin: https://app.example.com\r\n\r\n")


def build(kind: str) -> Any:
    """A connected protocol of ``kind`` over a StringTransport."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from securews.auth.anonymous import AnonymousAuthenticator
    from securews.testing import make_config
    from securews.wire.factory import SecureServerFactory

    messages = {"format": "json"} if kind == "securews-json" else {}
    config = make_config(
        tls={"cert": "/unused/cert.pem", "key": "/unused/key.pem"},
        origin={"allowed": ["https://app.example.com"]},
        auth={"methods": []},  # replaced by the authenticator below
        ratelimit={"messages_per_second": 1_000_000, "message_burst": 10_000_000,
                   "bytes_per_second": 2**34, "bytes_burst": 2**34},
        messages=messages,
    )
    clock = Clock()
    secure = SecureServerFactory(config, authenticator=AnonymousAuthenticator(),
                                 reactor=clock)
    factory: Any
    if kind.startswith("autobahn"):
        from autobahn.twisted.websocket import (
            WebSocketServerFactory,
            WebSocketServerProtocol,
        )

        class Echo(WebSocketServerProtocol):
            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                self.sendMessage(payload, isBinary)

        class Lean(Echo):
            def dataReceived(self, data: bytes) -> None:
                self._dataReceived(data)

            def onMessageEnd(self) -> None:
                if not self.failedByMe:
                    self.onMessage(b"".join(self.message_data),
                                   self.message_is_binary)
                self.message_data = None

            def sendData(self, data: bytes, sync: bool = False,
                         chopsize: int | None = None) -> None:
                if sync or chopsize or self.send_queue:
                    super().sendData(data, sync, chopsize)
                else:
                    self.transport.write(data)
                    self.trafficStats.outgoingOctetsWireLevel += len(data)

        factory = WebSocketServerFactory()
        factory.protocol = Lean if kind == "autobahn-lean" else Echo
        options = {name: getattr(secure, name) for name in (
            "webStatus", "failByDrop", "maxFramePayloadSize",
            "maxMessagePayloadSize", "openHandshakeTimeout",
            "closeHandshakeTimeout", "allowedOrigins", "maxConnections",
            "trustXForwardedFor", "autoPingInterval", "autoPingTimeout",
            "serveFlashSocketPolicy", "echoCloseCodeReason",
            "requireMaskedClientFrames", "utf8validateIncoming", "versions")}
        factory.setProtocolOptions(**options)
    else:
        factory = secure

    class Transport(StringTransport):
        def unregisterProducer(self) -> None:
            self.producer = None

    address = IPv4Address("TCP", "203.0.113.7", 40000)
    proto = factory.buildProtocol(address)
    transport = Transport(peerAddress=address)
    proto.makeConnection(transport)
    proto.dataReceived(request())
    if not transport.value().startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"{kind}: handshake failed: {transport.value()[:200]!r}")
    transport.clear()
    return proto, transport


def drive(kind: str, messages: int, size: int) -> None:
    """The child: set up, then echo ``messages`` frames."""
    proto, transport = build(kind)
    data = frame(payload_for(kind, size))
    received = proto.dataReceived
    clear = transport.clear
    for _ in range(messages):
        received(data)
        clear()
    if messages:
        received(data)
        if not transport.value().endswith(payload_for(kind, size)):
            raise SystemExit(f"{kind}: no echo: {transport.value()[:100]!r}")


def instructions(kind: str, messages: int, size: int) -> int:
    """Instructions callgrind counts for one child run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--child", kind,
             "--messages", str(messages), "--size", str(size)],
            check=True, capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        with open(out) as f:
            match = re.search(r"^summary:\s+(\d+)", f.read(), re.MULTILINE)
    if match is None:
        raise SystemExit("callgrind wrote no summary")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # The securews of this source tree, not an installed copy.
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        drive(args.child, args.messages, args.size)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (Debian package valgrind)")
    kinds = args.kinds.split(",")
    per_message: dict[str, float] = {}
    for kind in kinds:
        base = instructions(kind, 0, args.size)
        loaded = instructions(kind, args.messages, args.size)
        per_message[kind] = (loaded - base) / args.messages
    print(f"instructions per {args.size}-byte echo "
          f"({args.messages} messages, in memory, no TLS):")
    for kind in kinds:
        ratios = "".join(
            f"  {per_message[kind] / per_message[base]:5.2f}x {base}"
            for base in ("autobahn", "autobahn-lean")
            if base in per_message and kind.startswith("securews"))
        print(f"  {kind:15} {per_message[kind]:10,.0f}{ratios}")

if __name__ == "__main__":
    main()
