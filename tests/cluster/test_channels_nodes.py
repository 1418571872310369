"""
The ``channels`` application on three nodes and one Redis (black box:
``twistd`` nodes, real TLS, ``websockets`` clients): delivery across
nodes, recovery, a lost subscription, authorisation, slow subscribers,
server-side publishing.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from websockets.sync.client import ClientConnection

from tests.cluster.harness import Cluster, fresh_network, running_cluster
from tests.support.common import write_cert
from tests.support.redis import RedisServer, running_redis

GRANTS = {"channels": {"sub": ["news", "room:*", "user:{sub}"],
                       "pub": ["room:*"]}}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("channels-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA,
            redis: RedisServer) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("channels-cluster")
    certs = write_cert(ca, directory / "tls")
    with running_cluster(
            directory, redis, certs,
            server={"app": "channels"}, messages={"format": "json"},
            channels={"history_size": 30, "probe_interval": 0.5},
            ratelimit={"connections_per_ip": 100, "sessions_per_principal": 100,
                       "connect_rate": 100.0, "connect_burst": 100},
            limits={"max_write_buffer": 65536}) as running:
        yield running


def member(cluster: Cluster, node: str, user: str = "reader",
           claims: dict[str, Any] | None = None) -> ClientConnection:
    token = cluster.token(user, **(GRANTS if claims is None else claims))
    return cluster.open(cluster.node(node), token=token, network=fresh_network())


def request(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    """Send a request and read until its reply (messages before it are kept
    on ``ws.pending``)."""
    fields.setdefault("id", f"r{time.monotonic_ns()}")
    ws.send(json.dumps(fields))
    pending = getattr(ws, "pending", [])
    while True:
        frame = json.loads(ws.recv(timeout=5))
        if frame.get("id") == fields["id"]:
            ws.pending = pending  # type: ignore[attr-defined]
            return frame
        pending.append(frame)


def messages(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    got = list(getattr(ws, "pending", []))
    ws.pending = []  # type: ignore[attr-defined]
    while len(got) < count:
        got.append(json.loads(ws.recv(timeout=5)))
    return got


def test_a_message_published_through_one_node_reaches_every_node_once_in_order(
    cluster: Cluster
) -> None:
    readers = [member(cluster, name) for name in "abc"]
    for ws in readers:
        assert request(ws, op="subscribe", channel="room:1")["ok"] is True
    writer = member(cluster, "a", "writer")
    for n in range(20):
        assert request(writer, op="publish", channel="room:1", data={"n": n})["ok"]
    for ws in readers:
        got = messages(ws, 20)
        assert [m["data"]["n"] for m in got] == list(range(20))
        assert [m["offset"] for m in got] == list(range(1, 21))
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)  # each once: nothing more
        ws.close()
    writer.close()


def test_a_subscriber_back_since_its_position_gets_exactly_what_it_missed(
    cluster: Cluster
) -> None:
    reader = member(cluster, "b")
    request(reader, op="subscribe", channel="room:2")
    writer = member(cluster, "c", "writer")
    request(writer, op="publish", channel="room:2", data=0)
    last = messages(reader, 1)[-1]
    reader.close()
    for n in range(1, 21):
        request(writer, op="publish", channel="room:2", data=n)
    back = member(cluster, "a")
    reply = request(back, op="subscribe", channel="room:2",
                    since={"epoch": last["epoch"], "offset": last["offset"]})
    assert reply["recovered"] is True
    assert [m["data"] for m in messages(back, 20)] == list(range(1, 21))
    request(writer, op="publish", channel="room:2", data=21)
    assert messages(back, 1)[0]["data"] == 21
    back.close()
    writer.close()


def test_beyond_the_history_the_client_is_told_recovered_false(
    cluster: Cluster
) -> None:
    reader = member(cluster, "a")
    request(reader, op="subscribe", channel="room:3")
    writer = member(cluster, "b", "writer")
    request(writer, op="publish", channel="room:3", data=0)
    last = messages(reader, 1)[-1]
    reader.close()
    for n in range(1, 41):  # history_size is 30
        request(writer, op="publish", channel="room:3", data=n)
    back = member(cluster, "c")
    reply = request(back, op="subscribe", channel="room:3",
                    since={"epoch": last["epoch"], "offset": last["offset"]})
    assert reply["recovered"] is False
    notice = messages(back, 1)[0]
    assert notice == {"channel": "room:3", "epoch": last["epoch"], "offset": 41,
                      "recovered": False}
    back.close()
    writer.close()


def test_a_node_whose_subscription_is_killed_still_delivers_everything(
    cluster: Cluster, redis: RedisServer
) -> None:
    """CLIENT KILL TYPE pubsub while messages flow: every subscriber still
    gets every message, in order (repaired from the history)."""
    readers = [member(cluster, name) for name in "abc"]
    for ws in readers:
        request(ws, op="subscribe", channel="room:4")
    writer = member(cluster, "a", "writer")
    for n in range(10):
        request(writer, op="publish", channel="room:4", data=n)
        if n == 4:
            assert redis.command("CLIENT", "KILL", "TYPE", "pubsub") >= 3
    for ws in readers:
        assert [m["data"] for m in messages(ws, 10)] == list(range(10))
        ws.close()
    writer.close()


def test_no_claim_no_access(cluster: Cluster) -> None:
    outsider = member(cluster, "b", "outsider", claims={})
    assert request(outsider, op="subscribe", channel="news")["error"] == "forbidden"
    assert request(outsider, op="publish", channel="room:1",
                   data=1)["error"] == "forbidden"
    reader = member(cluster, "b", "alice")
    assert request(reader, op="subscribe", channel="user:bob")["error"] == "forbidden"
    assert request(reader, op="subscribe", channel="user:alice")["ok"] is True
    assert request(reader, op="publish", channel="news", data=1)["error"] == "forbidden"
    outsider.close()
    reader.close()


def test_server_side_publishing(cluster: Cluster) -> None:
    reader = member(cluster, "c")
    request(reader, op="subscribe", channel="news")
    status, body = cluster.admin(cluster.node("a"), "POST", "/publish",
                                 {"channel": "news", "data": {"breaking": True}})
    assert status == 202, body
    assert json.loads(body)["offset"] >= 1
    assert messages(reader, 1)[0]["data"] == {"breaking": True}
    assert cluster.admin(cluster.node("a"), "POST", "/publish",
                         {"channel": "news", "data": 1}, token=None)[0] == 401
    assert cluster.admin(cluster.node("a"), "POST", "/publish",
                         {"channel": "bad name", "data": 1})[0] == 400
    reader.close()


def test_a_slow_subscriber_is_closed_and_slows_no_one(cluster: Cluster) -> None:
    """A subscriber that stops reading is closed (slow consumer) once its
    queue passes max_write_buffer; the others receive everything."""
    token = cluster.token("sloth", **GRANTS)
    node = cluster.node("b")
    sock = socket.create_connection(("127.0.0.1", node.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    context = ssl.create_default_context(cafile=str(cluster.certs.ca_cert))
    slow = context.wrap_socket(sock, server_hostname="127.0.0.1")
    slow.sendall(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\n"
        f"X-Forwarded-For: {fresh_network()}\r\n\r\n".encode())
    assert slow.recv(4096).startswith(b"HTTP/1.1 101")
    subscribe = json.dumps({"op": "subscribe", "channel": "room:5"}).encode()
    slow.sendall(bytes([0x81, 0x80 | len(subscribe)]) + b"\0\0\0\0" + subscribe)
    fast = member(cluster, "b")
    request(fast, op="subscribe", channel="room:5")
    writer = member(cluster, "a", "writer")
    time.sleep(0.3)
    big = "x" * 4000
    got: list[dict[str, Any]] = []
    for n in range(100):
        request(writer, op="publish", channel="room:5", data={"n": n, "pad": big})
        if n % 10 == 9:  # keeps up: reads what was published so far
            got += messages(fast, n + 1 - len(got))
    assert [m["data"]["n"] for m in got] == list(range(100))
    log = (node.directory / "securews.log").read_text()
    assert "slow_consumer" in log
    slow.close()
    fast.close()
    writer.close()
