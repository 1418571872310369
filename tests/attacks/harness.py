"""
The attack suite's tools: the servers' settings, a running ``twistd
securews`` (:class:`Target`), ``websockets`` clients, an attack run
beside the well-behaved client (:func:`attack`, with
:class:`bystander.Bystander` and :func:`processes.peak_rss`) and the
memory bounds.  The hand-driven client is :mod:`attacks.wire`.

Memory bounds (growth of the server's peak RSS over its RSS before the
attack; kernel socket buffers are not RSS):

``SESSION_BOUND``
    In-session attacks (oversized or compressed messages, fragments,
    floods, dead and idle peers): ``2 x max_message_size + 10 MiB``, as
    README documents.
``SLOW_READER_BOUND``
    A client that does not read: the server queues up to
    ``max_write_buffer`` plus the message whose send crossed it, and TLS
    and Twisted's write path each keep a transient copy of what they pass
    on: ``2 x (max_write_buffer + max_message_size) + 10 MiB``.
``handshake_bound(n)``
    Attacks that never get a session (refused handshakes, slowloris,
    header floods, bad TLS) with at most ``n`` attacking connections open
    at once: ``10 MiB + n x (max_header_bytes + 64 KiB)``: each holds at
    most one request head and a TLS connection's buffers.
``sessions_bound(n)``
    Connection floods that hold ``n`` open sessions:
    ``10 MiB + n x 256 KiB`` (a TLS connection, a session and its
    buffers; the flood's sessions do not negotiate compression).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import jwt
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

from tests.support.bystander import Bystander
from tests.support.common import websocket_client_tls
from tests.support.processes import TWISTD, Server, peak_rss, toml
from tests.support.proxyheaders import v2

KiB, MiB = 2**10, 2**20
ORIGIN = "https://app.example.com"
ISSUER, AUDIENCE = "https://id.example.com", "securews"

# -- the settings under attack ---------------------------------------------------

MAX_HEADER_BYTES = 8192
MAX_HEADERS = 64
MAX_MESSAGE = 1 * MiB
MAX_FRAME = 256 * KiB
MAX_FRAGMENTS = 16
HANDSHAKE_TIMEOUT = 1.0
CLOSE_TIMEOUT = 1.0
# Long enough for a flood test's held sessions to stay open while they
# wait, and for a dead peer to be found (ping_interval + ping_timeout)
# well before the idle timeout would close it anyway.
IDLE_TIMEOUT = 3.0
PING_INTERVAL = 0.5
PING_TIMEOUT = 0.5
MAX_WRITE_BUFFER = 1 * MiB
CONNECTIONS_PER_IP = 4
SESSIONS_PER_PRINCIPAL = 6
CONNECT_RATE, CONNECT_BURST = 2.0, 10
MESSAGES_PER_SECOND, MESSAGE_BURST = 50.0, 100
# Generous, so that only max_write_buffer can stop a client that does not
# read: the kernel's socket buffers take several MiB of echoes first.
BYTES_PER_SECOND, BYTES_BURST = 4.0 * MiB, 32 * MiB
ALERT_WINDOW = 1.0
JWT_LEEWAY = 1.0
SEND_BUFFER = 128 * KiB

SESSION_BOUND = 2 * MAX_MESSAGE + 10 * MiB
SLOW_READER_BOUND = 2 * (MAX_WRITE_BUFFER + MAX_MESSAGE) + 10 * MiB


def handshake_bound(connections: int) -> int:
    return 10 * MiB + connections * (MAX_HEADER_BYTES + 64 * KiB)


def sessions_bound(sessions: int) -> int:
    return 10 * MiB + sessions * 256 * KiB


Sections = dict[str, dict[str, object]]


def settings(*, tls: dict[str, object], auth: Sections, log_format: str,
             **extra: dict[str, object]) -> Sections:
    """Every section of the servers' TOML file; ``auth`` maps section names
    (``"auth"``, ``"auth.jwt"``, ...) to their keys."""
    sections: dict[str, dict[str, object]] = {
        "server": {"listen": "tcp:0:interface=127.0.0.1", "path": "/ws",
                   "app": "echo", "max_connections": 500, "shutdown_grace": 1.0},
        "tls": tls,
        "log": {"format": log_format, "file": "-"},
        "limits": {
            "max_header_bytes": MAX_HEADER_BYTES, "max_headers": MAX_HEADERS,
            "max_message_size": MAX_MESSAGE, "max_frame_size": MAX_FRAME,
            "max_fragments": MAX_FRAGMENTS, "compression": True,
            "handshake_timeout": HANDSHAKE_TIMEOUT, "close_timeout": CLOSE_TIMEOUT,
            "idle_timeout": IDLE_TIMEOUT, "ping_interval": PING_INTERVAL,
            "ping_timeout": PING_TIMEOUT, "max_write_buffer": MAX_WRITE_BUFFER,
            "send_buffer": SEND_BUFFER,
        },
        "origin": {"allowed": [ORIGIN], "allow_missing": False},
        **auth,
        "ratelimit": {
            "connections_per_ip": CONNECTIONS_PER_IP,
            "sessions_per_principal": SESSIONS_PER_PRINCIPAL,
            "connect_rate": CONNECT_RATE,
            "connect_burst": CONNECT_BURST, "ipv6_prefix": 64,
            "messages_per_second": MESSAGES_PER_SECOND,
            "message_burst": MESSAGE_BURST, "bytes_per_second": BYTES_PER_SECOND,
            "bytes_burst": BYTES_BURST,
        },
        "messages": {"allow_binary": True, "format": "any"},
        # Metrics for the tests to read; one-second windows, so that
        # aggregated log lines and spike alerts come within a test.
        "admin": {"listen": "tcp:0:interface=127.0.0.1"},
        "alerts": {"window": ALERT_WINDOW},
    }
    for name, values in extra.items():
        sections[name] = {**sections.get(name, {}), **values}
    return sections


# -- credentials, minted the way the documents say -----------------------------


@attrs.frozen
class Credentials:
    """The identity provider's RSA key (JWTs) and the web application's
    cookie secret, as the server's key files hold them."""

    private_key: Any
    cookie_secret: bytes

    def token(self, sub: str, lifetime: float = 300, **claims: Any) -> str:
        """A JWT as the identity provider issues it (RS256, iss, aud, exp)."""
        now = int(time.time())
        payload = {"sub": sub, "iat": now, "exp": now + lifetime, "iss": ISSUER,
                   "aud": AUDIENCE, **claims}
        return jwt.encode(payload, self.private_key, algorithm="RS256")

    def cookie(self, sub: str, lifetime: float = 3600) -> str:
        """The web application's session cookie: an HS256 JWT, iat and exp."""
        now = int(time.time())
        return jwt.encode({"sub": sub, "iat": now, "exp": now + lifetime},
                          self.cookie_secret, algorithm="HS256")


# -- addresses -------------------------------------------------------------------

_serial = itertools.count(1)


@attrs.frozen
class Addresses:
    """
    Fresh rate-limit keys for one test: loopback source addresses for
    direct connections, IPv6 networks for ``X-Forwarded-For``.
    """

    attacker: str
    other: str
    good: str
    attacker_net: ipaddress.IPv6Network
    good_v6: str

    @classmethod
    def fresh(cls) -> Addresses:
        n = next(_serial)
        low, high = n % 250 + 1, n // 250
        return cls(
            attacker=f"127.1.{high}.{low}", other=f"127.3.{high}.{low}",
            good=f"127.2.{high}.{low}",
            attacker_net=ipaddress.IPv6Network(f"2001:db8:a:{n:x}::/64"),
            good_v6=f"2001:db8:b:{n:x}::1",
        )

    def in_attacker_net(self, i: int) -> str:
        return str(self.attacker_net[i + 1])

    def flooders(self, count: int) -> list[str]:
        """``count`` more loopback addresses of this test, one per attacker."""
        n = next(_serial)
        return [f"127.{10 + i}.{n // 250}.{n % 250 + 1}" for i in range(count)]


# -- the server process ------------------------------------------------------------


class Target:
    """
    ``twistd securews --config`` serving the given settings; its port,
    its log (text or JSON lines) and its memory.
    """

    def __init__(self, directory: Path, sections: Sections, ca_cert: Path,
                 credentials: Credentials,
                 program: Sequence[str] = (TWISTD,)) -> None:
        self.ca_cert = ca_cert
        self.credentials = credentials
        self.tls = bool(sections["tls"].get("enabled", True))
        self.json_log = sections["log"]["format"] == "json"
        proxies = list(sections["server"].get("trusted_proxies", []))  # type: ignore[call-overload]
        #: Behind a proxy that terminated TLS: every connection comes from
        #: it (127.0.0.1) and X-Forwarded-For names the client.
        self.proxied = bool(proxies) and not self.tls
        #: Behind a TCP load balancer (TLS passthrough) at this address,
        #: which clients connect from.
        self.balancer: str | None = proxies[0] if proxies and self.tls else None
        self.proxy_protocol = bool(sections["server"].get("proxy_protocol"))
        config = directory / "securews.toml"
        config.write_text(toml(sections))
        self.server = Server(["--config", str(config)], directory, program)
        try:
            self.server.wait_for("securews listening on")
        except AssertionError:
            self.server.stop()
            raise
        found = re.search(r"securews listening on (wss?)://127\.0\.0\.1:(\d+)/ws",
                          self.log())
        assert found, self.log()
        assert found.group(1) == ("wss" if self.tls else "ws")
        self.port = int(found.group(2))
        self.url = f"{found.group(1)}://127.0.0.1:{self.port}/ws"
        self.pid = self.server.process.pid
        admin = re.search(r"securews admin starting on (\d+)", self.log())
        assert admin, self.log()
        self.admin_port = int(admin.group(1))

    # -- log ---------------------------------------------------------------

    def log(self) -> str:
        return self.server.text()

    def mark(self) -> int:
        """A place in the log: what comes after it happened after now."""
        return len(self.log())

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """The JSON log's events after ``since``."""
        assert self.json_log
        return [json.loads(line) for line in self.log()[since:].splitlines()
                if line.startswith("{")]

    def wait_event(self, since: int, timeout: float = 5,
                   **fields: object) -> dict[str, Any]:
        """The first JSON event after ``since`` carrying ``fields``."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(since):
                if all(event.get(k) == v for k, v in fields.items()):
                    return event
            assert time.monotonic() < deadline, \
                f"no event with {fields} logged:\n{self.log()[since:]}"
            time.sleep(0.05)

    def count_events(self, since: int, **fields: object) -> int:
        return sum(all(e.get(k) == v for k, v in fields.items())
                   for e in self.events(since))

    # -- clients -----------------------------------------------------------

    def client_tls(self) -> ssl.SSLContext | None:
        return websocket_client_tls(self.ca_cert) if self.tls else None

    def source(self, address: str) -> str:
        """Where a client binds: behind the trusted-proxy listener, every
        connection comes from the proxy (127.0.0.1); behind the PROXY
        protocol load balancer, from the balancer."""
        if self.proxied:
            return "127.0.0.1"
        if self.proxy_protocol and self.balancer:
            return self.balancer
        return address

    def proxy_header(self, client: str) -> bytes:
        """What the load balancer sends first, for ``client`` (PROXY v2)."""
        return v2(client, sport=40000) if self.proxy_protocol else b""

    def metrics(self) -> dict[str, float]:
        """The admin listener's ``/metrics``, as ``{"name{labels}": value}``."""
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as page:
            text = page.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def forwarded(self, client: str | None) -> dict[str, str]:
        return {"X-Forwarded-For": client} if self.proxied and client else {}


# -- websockets clients -----------------------------------------------------------


def client(target: Target, source: str, *, forwarded_for: str | None = None,
           auth: dict[str, str] | None = None, query: str = "",
           subprotocols: Sequence[str] = ()) -> ClientConnection:
    """A ``websockets`` client from ``source`` (or, behind the proxy, for
    ``forwarded_for``), authenticated by ``auth`` headers or ``query``."""
    if auth is None and not query:
        auth = {"Authorization": "Bearer " + target.credentials.token(source)}
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((target.source(source), 0))
    sock.connect(("127.0.0.1", target.port))
    sock.sendall(target.proxy_header(source))
    sock.settimeout(None)
    return connect(
        target.url + query, sock=sock, ssl=target.client_tls(),
        origin=Origin(ORIGIN),
        subprotocols=[Subprotocol(name) for name in subprotocols] or None,
        additional_headers={**(auth or {}), **target.forwarded(forwarded_for)},
        proxy=None, compression=None, open_timeout=5, ping_interval=None,
        max_size=None,
    )


# -- an attack ------------------------------------------------------------------


@contextmanager
def attack(target: Target, who: Addresses, what: str,
           bound: int) -> Iterator[Bystander]:
    """
    Run an attack while a well-behaved client is served: it has exchanged
    a message before the block, must have one answered during it (the
    block calls :meth:`Bystander.during` while the attack is under way)
    and after; the server's peak RSS must grow by less than ``bound``.
    """
    with client(target, who.good, forwarded_for=who.good_v6) as ws:
        bystander = Bystander(ws, period=0.1, message="well-behaved message {}".format)
        try:
            with peak_rss(target.pid, what, bound) as peak:
                yield bystander
            assert bystander.checked_during, "the bystander was not checked during"
            bystander.finish()
        finally:
            bystander.stop()
    assert peak.growth < bound, f"{what}: grew {peak.growth / MiB:.1f} MiB"


# -- shortcuts ------------------------------------------------------------------


def bearer(target: Target, sub: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + target.credentials.token(sub)}


def ticket_post(headers: dict[str, str], origin: str = ORIGIN) -> bytes:
    """The page's credentialed ``fetch(POST /tickets)``, as README shows it."""
    body = b"{}"
    lines = ["POST /tickets HTTP/1.1", "Host: 127.0.0.1", f"Origin: {origin}",
             "Content-Type: application/json", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_TEXT_HANDSHAKE = (r"handshake (?P<outcome>\w+) (?P<status>\d{{3}}) from {client} "
                   r"path=\S+ origin=\S+ method=\S+ reason=(?P<reason>\S+)")


def handshakes(target: Target, since: int, client: str, count: int,
               timeout: float = 5) -> list[tuple[int, str | None]]:
    """
    The ``(status, reason)`` of the handshake events logged for ``client``
    after ``since``, once there are ``count`` of them (in either log format).
    """
    deadline = time.monotonic() + timeout
    while True:
        if target.json_log:
            found = [(e["status"], e["reason"]) for e in target.events(since)
                     if e.get("event") == "handshake" and e.get("client") == client]
        else:
            pattern = _TEXT_HANDSHAKE.format(client=re.escape(client))
            found = [(int(m["status"]), None if m["reason"] == "None" else m["reason"])
                     for m in re.finditer(pattern, target.log()[since:])]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, \
            f"{len(found)} of {count} handshakes logged:\n{target.log()[since:]}"
        time.sleep(0.05)


def echo(ws: ClientConnection, message: str = "hello") -> None:
    ws.send(message)
    assert ws.recv(timeout=5) == message
