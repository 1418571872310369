"""
Several ``twistd -n securews`` nodes sharing one real ``redis-server``,
driven as a client and an operator would: ``websockets`` clients over
real TLS, ``POST /tickets``, the admin listener's ``/readyz`` and
``POST /revoke``, signals to the processes.

Clients choose the network they come from with ``X-Forwarded-For``: the
nodes trust loopback as a re-encrypting proxy
(``server.trust_forwarded_for``), so each test keeps to networks of its
own on the shared nodes.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.common import CertFiles, websocket_client_tls
from tests.support.processes import Server, free_port, toml
from tests.support.redis import RedisServer

ORIGIN = "https://app.example.com"
ADMIN_TOKEN = "admin-token-for-the-cluster-tests-0123"
#: Seconds a node's share of a count survives without renewal, in these tests.
LEASE = 4.0

_networks = itertools.count(1)


def fresh_network() -> str:
    """A client address no other test uses (198.18.0.0/15, for benchmarks)."""
    n = next(_networks)
    return f"198.18.{n // 250}.{n % 250 + 1}"


@attrs.define
class Node:
    name: str
    port: int
    admin_port: int
    directory: Path
    config: Path
    server: Server | None = None

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.process.pid


@attrs.define
class Cluster:
    redis: RedisServer
    certs: CertFiles
    private_key: Any
    nodes: list[Node]
    context: ssl.SSLContext = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.context = websocket_client_tls(self.certs.ca_cert)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # -- credentials --------------------------------------------------------

    def token(self, sub: str, lifetime: float = 300, **claims: Any) -> str:
        now = int(time.time()) - 1
        return jwt.encode({"sub": sub, "iat": now, "exp": now + lifetime,
                           "jti": uuid.uuid4().hex, **claims},
                          self.private_key, algorithm="RS256")

    def mint(self, node: Node, token: str,
             network: str | None = None) -> tuple[int, str | None]:
        """``POST /tickets`` (from a network of its own unless told): the
        status and the ticket."""
        network = network or fresh_network()
        connection = http.client.HTTPSConnection("127.0.0.1", node.port,
                                                 context=self.context, timeout=10)
        try:
            connection.request("POST", "/tickets", body=b"{}", headers={
                "Content-Type": "application/json", "Origin": ORIGIN,
                "Authorization": f"Bearer {token}", "X-Forwarded-For": network})
            response = connection.getresponse()
            body = response.read()
            ticket = json.loads(body)["ticket"] if response.status == 201 else None
            return response.status, ticket
        finally:
            connection.close()

    # -- sessions -----------------------------------------------------------

    def open(self, node: Node, *, token: str | None = None, ticket: str | None = None,
             network: str = "198.19.0.1") -> ClientConnection:
        """A session, or :exc:`InvalidStatus` for a refusal."""
        query = f"?ticket={ticket}" if ticket else f"?token={token}" if token else ""
        connection: ClientConnection = connect(
            f"wss://127.0.0.1:{node.port}/ws{query}", ssl=self.context,
            origin=ORIGIN,  # type: ignore[arg-type]
            additional_headers={"X-Forwarded-For": network},
            open_timeout=10, close_timeout=2, legacy=True)
        return connection

    def status(self, node: Node, **kwargs: Any) -> int:
        """101 (and the session is closed again at once) or the refusal."""
        try:
            self.open(node, **kwargs).close()
        except InvalidStatus as e:
            return int(e.response.status_code)
        return 101

    # -- operating ----------------------------------------------------------

    def admin(self, node: Node, method: str, path: str,
              body: dict[str, Any] | None = None,
              token: str | None = ADMIN_TOKEN) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", node.admin_port,
                                                timeout=10)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection.request(method, path, body=None if body is None
                               else json.dumps(body).encode(), headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def ready(self, node: Node) -> bool:
        try:
            return self.admin(node, "GET", "/readyz", token=None)[0] == 200
        except OSError:
            return False

    def start(self, node: Node) -> None:
        node.server = Server(["--config", str(node.config)], node.directory)

    def wait_ready(self, *nodes: Node, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes or tuple(self.nodes):
            while not self.ready(node):
                assert node.server is not None
                ended = node.server.process.poll() is not None
                if ended or time.monotonic() > deadline:
                    raise AssertionError(f"node {node.name} never ready:\n"
                                         + node.server.text()[-3000:])
                time.sleep(0.05)

    def kill(self, node: Node) -> None:
        """``kill -9``: the node ends without giving anything back."""
        os.kill(node.pid, signal.SIGKILL)
        assert node.server is not None
        node.server.process.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            if node.server is not None:
                node.server.stop()


def node_config(name: str, directory: Path, redis: RedisServer, certs: CertFiles,
                public_key: Path, **overrides: dict[str, Any]) -> Node:
    directory.mkdir(parents=True, exist_ok=True)
    port, admin_port = free_port(), free_port()
    token_file = directory / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    sections: dict[str, dict[str, Any]] = {
        "server": {"listen": f"tcp:{port}:interface=127.0.0.1",
                   "trusted_proxies": ["127.0.0.0/8"], "trust_forwarded_for": True},
        "tls": {"cert": str(certs.cert), "key": str(certs.key)},
        "origin": {"allowed": [ORIGIN]},
        "auth": {"methods": ["ticket", "jwt"]},
        "auth.jwt": {"key_file": str(public_key)},
        "ratelimit": {"connections_per_ip": 3, "sessions_per_principal": 5,
                      "connect_rate": 2.0, "connect_burst": 6,
                      "messages_per_second": 10_000, "message_burst": 10_000},
        "limits": {"handshake_timeout": 10},
        "admin": {"listen": f"tcp:{admin_port}:interface=127.0.0.1",
                  "token_file": str(token_file)},
        "cluster": {"redis_url": redis.url(), "node_id": name, "lease": LEASE,
                    "timeout": 0.25},
        "log": {"format": "json", "file": str(directory / "securews.log")},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    config = directory / "securews.toml"
    config.write_text(toml(sections))
    return Node(name, port, admin_port, directory, config)


@contextmanager
def running_cluster(directory: Path, redis: RedisServer, certs: CertFiles,
                    names: tuple[str, ...] = ("a", "b", "c"),
                    **overrides: dict[str, Any]) -> Iterator[Cluster]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = directory / "jwt-public.pem"
    directory.mkdir(parents=True, exist_ok=True)
    public.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    nodes = [node_config(name, directory / name, redis, certs, public, **overrides)
             for name in names]
    cluster = Cluster(redis, certs, private, nodes)
    try:
        for node in nodes:
            cluster.start(node)
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


def eventually(check: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``check`` until it holds; how long it took (fails past ``within``)."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > within:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.02)
    return time.monotonic() - began
