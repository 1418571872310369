"""
The cluster when things go wrong: the engine hangs, restarts without its
data, a node's announcement connection is cut, a node is killed.  Fail
closed (503, never a 101 without the engine), recover by itself, never
under-count.  These nodes have a cluster of their own: the faults would
disturb other tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.cluster.harness import Cluster, eventually, fresh_network, running_cluster
from tests.support.common import write_cert
from tests.support.redis import RedisServer, restart, running_redis

LEASE = 6.0


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("outage-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA,
            redis: RedisServer) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("outage-cluster")
    certs = write_cert(ca, directory / "tls")
    with running_cluster(directory, redis, certs,
                         cluster={"lease": LEASE}) as running:
        yield running


def refusal(cluster: Cluster, name: str, **kwargs: object) -> tuple[int, str | None]:
    """The status of a refused handshake and its Retry-After."""
    try:
        cluster.open(cluster.node(name), **kwargs).close()  # type: ignore[arg-type]
    except InvalidStatus as e:
        return e.response.status_code, e.response.headers.get("Retry-After")
    return 101, None


def test_a_revocation_reaches_a_node_whose_feed_connection_was_cut(
    cluster: Cluster
) -> None:
    """
    Node C's connection reading the announcements is killed, and the
    revocation is made at that moment: C still closes the session (it
    reads the stream from the last entry it saw, not a pub/sub it might
    have missed).
    """
    ws = cluster.open(cluster.node("c"), token=cluster.token("mallory"),
                      network=fresh_network())
    clients = cluster.redis.command("CLIENT", "LIST").decode().splitlines()
    feed = [line.split()[0].split("=")[1] for line in clients
            if "name=securews-c-feed" in line]
    assert feed, clients
    assert cluster.redis.command("CLIENT", "KILL", "ID", feed[0]) == 1
    status, _ = cluster.admin(cluster.node("a"), "POST", "/revoke",
                              {"principal": "mallory"})
    assert status == 200
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


def test_a_hung_engine_is_503_at_once_and_sessions_stay(cluster: Cluster) -> None:
    """
    Redis under SIGSTOP: every node answers new handshakes 503 with
    Retry-After within its engine deadline (never a wait until
    handshake_timeout, never a 101), reports not ready, and keeps its
    established sessions; SIGCONT brings service back within 2 s.
    """
    token = cluster.token("niaj")
    session = cluster.open(cluster.node("a"), token=token, network=fresh_network())
    cluster.redis.pause()
    try:
        for name in "abc":
            began = time.monotonic()
            status, retry_after = refusal(cluster, name, token=token,
                                          network=fresh_network())
            assert (status, retry_after) == (503, "1"), name
            assert time.monotonic() - began < 5, "waited for the handshake timeout"
        assert not any(cluster.ready(node) for node in cluster.nodes)
        session.send("still up")
        assert session.recv(timeout=5) == "still up"
    finally:
        cluster.redis.resume()
    eventually(lambda: all(cluster.ready(node) for node in cluster.nodes), 2.0,
               "every node ready again after SIGCONT")
    assert cluster.status(cluster.node("b"), token=token,
                          network=fresh_network()) == 101
    session.close()
    for node in cluster.nodes:
        # The outage is logged once when it starts and once when it ends,
        # not once per refused request.
        log = (node.directory / "securews.log").read_text()
        assert log.count('"event":"engine_down"') == 1, node.name
        assert log.count('"event":"engine_up"') == 2, node.name  # start, back


def test_a_node_that_cannot_renew_closes_its_sessions_before_they_lapse(
    cluster: Cluster
) -> None:
    """
    The engine hangs for longer than half a lease: each node closes its
    sessions, 1013 "try again later", before its places lapse (lease), so
    no other node ever admits on the strength of a share that vanished
    while its sessions lived on.
    """
    session = cluster.open(cluster.node("b"), token=cluster.token("olivia"),
                           network=fresh_network())
    cluster.redis.pause()
    began = time.monotonic()
    try:
        with pytest.raises(ConnectionClosed) as closed:
            session.recv(timeout=LEASE + 2)
        assert time.monotonic() - began < LEASE
    finally:
        cluster.redis.resume()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013,
                                                                "try again later")
    eventually(lambda: all(cluster.ready(node) for node in cluster.nodes), 3.0,
               "every node ready again")


def test_an_engine_restart_without_its_data_is_detected_and_counts_reasserted(
    cluster: Cluster
) -> None:
    """
    SHUTDOWN NOSAVE and a restart: the nodes notice (a new epoch), write
    again the places their sessions hold, and only then are ready: the
    per-network cap still holds for sessions opened before the restart.
    """
    network = fresh_network()
    token = cluster.token("peggy")
    sessions = [cluster.open(cluster.node(name), token=token, network=network)
                for name in "abc"]
    restart(cluster.redis)

    def noticed(name: str) -> bool:
        node = cluster.node(name)
        return ("lost its data" in (node.directory / "securews.log").read_text()
                and cluster.ready(node))

    # Ready again only once reasserted: then the cap holds at once.
    eventually(lambda: all(noticed(name) for name in "abc"), 5.0,
               "every node noticed the lost data and is ready again")
    assert cluster.status(cluster.node("a"), token=token, network=network) == 429
    for ws in sessions:
        ws.close()


def test_an_engine_that_may_evict_again_is_refused_until_set_back(
    cluster: Cluster
) -> None:
    """
    ``CONFIG SET maxmemory-policy allkeys-lru`` while the nodes run (an
    evicted limit key would silently lift a limit): each node notices at
    its next renewal, logs it once and answers 503; set back, service
    returns by itself.
    """
    token = cluster.token("quentin")
    cluster.redis.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    try:
        eventually(lambda: not any(cluster.ready(node) for node in cluster.nodes),
                   LEASE / 3 + 2, "every node noticed the eviction policy")
        assert refusal(cluster, "a", token=token, network=fresh_network()) == (503, "1")
    finally:
        cluster.redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    eventually(lambda: all(cluster.ready(node) for node in cluster.nodes), 5.0,
               "every node ready again")
    assert cluster.status(cluster.node("a"), token=token,
                          network=fresh_network()) == 101
    for node in cluster.nodes:
        log = (node.directory / "securews.log").read_text()
        assert log.count('"event":"engine_misconfigured"') == 1, node.name


def test_a_killed_nodes_places_lapse_after_the_lease_and_not_before(
    cluster: Cluster
) -> None:
    """
    kill -9 of the node holding a network's every place: the other nodes
    keep counting them until the node's lease lapses, never earlier, and
    admit again once it has.  (Last in this module: it kills node C.)
    """
    network = fresh_network()
    token = cluster.token("rupert")
    held = [cluster.open(cluster.node("c"), token=token, network=network)
            for _ in range(3)]
    cluster.kill(cluster.node("c"))
    killed = time.monotonic()
    while time.monotonic() - killed < LEASE - 1.5:
        assert cluster.status(cluster.node("a"), token=token, network=network) == 429
        time.sleep(0.5)
    eventually(lambda: cluster.status(cluster.node("b"), token=token,
                                      network=network) == 101,
               LEASE + 3 - (time.monotonic() - killed),
               "the killed node's places lapse with its lease")
    for ws in held:
        ws.close_socket()
