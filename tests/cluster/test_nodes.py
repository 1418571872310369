"""
Three ``twistd securews`` nodes and one real Redis act as one: tickets,
limits and revocations hold cluster-wide (black box: real TLS, the
``websockets`` client, the admin listener, signals).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import trustme
from websockets.exceptions import ConnectionClosed

from securews.cluster.scripts import SCRIPTS
from tests.cluster.harness import (
    Cluster,
    eventually,
    fresh_network,
    running_cluster,
)
from tests.support.common import write_cert
from tests.support.redis import RedisServer, running_redis


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("cluster-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA,
            redis: RedisServer) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("cluster")
    certs = write_cert(ca, directory / "tls")
    with running_cluster(directory, redis, certs) as running:
        yield running


def test_a_session_opens_on_every_node(cluster: Cluster) -> None:
    token = cluster.token("alice")
    for node in cluster.nodes:
        with cluster.open(node, token=token, network=fresh_network()) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"


def test_a_ticket_minted_on_one_node_is_spent_once_across_all(cluster: Cluster) -> None:
    """Minted on A, presented ten times at once on each of A, B and C:
    exactly one 101, every other presentation 401."""
    a = cluster.node("a")
    network = fresh_network()  # the ticket is bound to the address it was minted for
    status, ticket = cluster.mint(a, cluster.token("bob"), network)
    assert status == 201
    assert ticket is not None
    go = threading.Event()

    def present(node_name: str) -> int:
        go.wait(5)
        return cluster.status(cluster.node(node_name), ticket=ticket, network=network)

    with ThreadPoolExecutor(max_workers=30) as pool:
        futures = [pool.submit(present, name) for name in "abc" * 10]
        go.set()
        statuses = sorted(f.result() for f in futures)
    assert statuses.count(101) == 1
    # The others are the ticket's refusal (reused), or the network's connect
    # rate across the cluster: never 503.
    assert set(statuses) - {101} <= {401, 429}
    assert 401 in statuses


def test_the_sixth_ticket_on_any_node_is_429(cluster: Cluster) -> None:
    """auth.ticket.max_outstanding (5) holds for the principal cluster-wide."""
    token = cluster.token("carol")
    minted = [cluster.mint(cluster.node(name), token)[0] for name in "abcab"]
    assert minted == [201] * 5
    assert cluster.mint(cluster.node("c"), token)[0] == 429


def test_the_per_network_cap_holds_across_nodes(cluster: Cluster) -> None:
    """connections_per_ip (3) spread over three nodes admits exactly three;
    a close frees a place at once, wherever the next one comes."""
    network = fresh_network()
    token = cluster.token("dave")
    sessions = [cluster.open(cluster.node(name), token=token, network=network)
                for name in "abc"]
    assert [cluster.status(cluster.node(name), token=token, network=network)
            for name in "abc"] == [429, 429, 429]
    sessions.pop().close()
    eventually(lambda: cluster.status(cluster.node("a"), token=token,
                                      network=network) == 101, 1.0,
               "a place freed by a close on C is taken on A")
    for ws in sessions:
        ws.close()


def test_sessions_per_principal_hold_across_nodes(cluster: Cluster) -> None:
    """sessions_per_principal (5) for one account from many networks."""
    sessions = [cluster.open(cluster.node(name), token=cluster.token("erin"),
                             network=fresh_network()) for name in "abcab"]
    assert cluster.status(cluster.node("c"), token=cluster.token("erin"),
                          network=fresh_network()) == 429
    for ws in sessions:
        ws.close()


def test_the_connect_rate_is_cluster_wide(cluster: Cluster) -> None:
    """30 handshakes over three nodes: no more than burst + rate x t admitted
    (burst 6, rate 2/s), however they are spread."""
    network = fresh_network()
    began = time.monotonic()
    statuses = [cluster.status(cluster.node(name), token=cluster.token("frank"),
                               network=network) for name in "abc" * 10]
    elapsed = time.monotonic() - began
    admitted = statuses.count(101)
    assert admitted <= 6 + 2 * elapsed + 1e-9, (admitted, elapsed)
    assert admitted >= 6
    assert set(statuses) == {101, 429}


def test_a_revocation_on_one_node_closes_sessions_on_every_node(
    cluster: Cluster
) -> None:
    """POST /revoke on A: the principal's sessions on A, B and C close 4401
    within a second; its credentials are refused on every node."""
    token = cluster.token("grace")
    sessions = {name: cluster.open(cluster.node(name), token=token,
                                   network=fresh_network()) for name in "abc"}
    other = cluster.open(cluster.node("b"), token=cluster.token("heidi"),
                         network=fresh_network())
    status, body = cluster.admin(cluster.node("a"), "POST", "/revoke",
                                 {"principal": "grace"})
    assert status == 200, body
    for name, ws in sessions.items():
        began = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=2)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401, name
        assert closed.value.rcvd.reason == "credential revoked"
        assert time.monotonic() - began < 1.5
    for name in "abc":
        assert cluster.status(cluster.node(name), token=token,
                              network=fresh_network()) == 401
    # Credentials issued after the revocation are good (iat has whole
    # seconds: one issued the next second); others untouched.
    later = cluster.token("grace", iat=int(time.time()) + 1)
    assert cluster.status(cluster.node("c"), token=later,
                          network=fresh_network()) == 101
    other.send("still here")
    assert other.recv(timeout=5) == "still here"
    other.close()


def test_a_revoked_token_is_refused_everywhere(cluster: Cluster) -> None:
    token = cluster.token("ivan", jti="token-to-revoke")
    ws = cluster.open(cluster.node("c"), token=token, network=fresh_network())
    status, _ = cluster.admin(cluster.node("b"), "POST", "/revoke",
                              {"jti": "token-to-revoke"})
    assert status == 200
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=2)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert cluster.status(cluster.node("a"), token=token,
                          network=fresh_network()) == 401
    assert cluster.status(cluster.node("a"), token=cluster.token("ivan"),
                          network=fresh_network()) == 101


def test_the_revoke_endpoint_needs_the_admin_token(cluster: Cluster) -> None:
    a = cluster.node("a")
    assert cluster.admin(a, "POST", "/revoke", {"principal": "x"}, token=None)[0] == 401
    assert cluster.admin(a, "POST", "/revoke", {"principal": "x"},
                         token="wrong-token-0000000000")[0] == 401
    assert cluster.admin(a, "GET", "/revoke")[0] == 405
    assert cluster.admin(a, "POST", "/revoke", {"principal": "x", "jti": "y"})[0] == 400
    assert cluster.admin(a, "POST", "/revoke", {"nobody": "x"})[0] == 400


def monitor(redis: RedisServer, stop: threading.Event, lines: list[str]) -> None:
    """Every command Redis runs, until ``stop`` (``MONITOR``)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(redis.unix_socket))
        sock.sendall(b"MONITOR\r\n")
        sock.settimeout(0.2)
        buffer = b""
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            *done, buffer = buffer.split(b"\r\n")
            lines += [line.decode("utf-8", "replace") for line in done]


def test_messages_add_no_engine_commands(cluster: Cluster) -> None:
    """
    1,000 messages on a session add no command to the engine: what runs
    meanwhile is the nodes' background work only (renewals, the
    announcement reads), whatever the traffic.
    """
    session = cluster.open(cluster.node("b"), token=cluster.token("trent"),
                           network=fresh_network())
    stop, lines = threading.Event(), []
    watcher = threading.Thread(target=monitor, args=(cluster.redis, stop, lines))
    watcher.start()
    time.sleep(0.2)
    try:
        for n in range(1000):
            session.send(f"message {n}")
            assert session.recv(timeout=5) == f"message {n}"
    finally:
        stop.set()
        watcher.join(5)
        session.close()
    renew = SCRIPTS["renew"].sha
    # Commands a script runs are listed too ("[0 lua]"): they are the
    # script's, already accounted for by its EVALSHA.
    commands = [line.split('"')[1:4:2] for line in lines
                if '"' in line and " lua]" not in line]
    assert lines[0] == "+OK"
    unexpected = [c for c in commands
                  if not (c[0] in ("XREAD", "XREVRANGE", "PING")
                          or (c[0] == "EVALSHA" and c[1] == renew)
                          or c == ["INFO", "memory"])]  # the eviction policy
    assert unexpected == []


def dump(redis: RedisServer) -> bytes:
    """Every key and everything stored under it."""
    out = []
    for key in redis.scan():
        out.append(key)
        kind = redis.command("TYPE", key)
        if kind == "string":
            out.append(redis.command("GET", key))
        elif kind == "hash":
            out += redis.command("HGETALL", key)
        elif kind == "zset":
            out += redis.command("ZRANGE", key, 0, -1, "WITHSCORES")
        elif kind == "stream":
            for _, fields in redis.command("XRANGE", key, "-", "+"):
                out += fields
    return b"\n".join(out)


def test_the_engine_never_holds_a_ticket_or_token_in_clear(cluster: Cluster) -> None:
    """SCAN and read everything: no ticket and no token (JWT) is there in
    clear, not even half of one (the engine holds digests)."""
    secrets: list[str] = []
    for name in "abc":
        token = cluster.token(f"walter-{name}", jti=f"jti-of-walter-{name}")
        network = fresh_network()
        status, ticket = cluster.mint(cluster.node(name), token, network)
        assert status == 201
        assert ticket is not None
        secrets += [token, ticket]
        with cluster.open(cluster.node(name), token=token, network=fresh_network()):
            pass
        spent = cluster.mint(cluster.node(name), token, network)[1]
        assert spent is not None
        assert cluster.status(cluster.node(name), ticket=spent, network=network) == 101
        secrets.append(spent)
    assert cluster.admin(cluster.node("a"), "POST", "/revoke",
                         {"jti": "jti-of-walter-a"})[0] == 200
    everything = dump(cluster.redis)
    assert everything
    for secret in secrets:
        assert secret.encode() not in everything
        # Not even half of one.
        assert secret[: len(secret) // 2].encode() not in everything
