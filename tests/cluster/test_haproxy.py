"""
conf/haproxy-cluster.cfg for real: HAProxy (TLS passthrough, PROXY v2,
readiness checks) in front of three nodes sharing one Redis.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
import trustme
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.cluster.harness import ORIGIN, Cluster, eventually, running_cluster
from tests.support.common import write_cert
from tests.support.paths import CONF
from tests.support.processes import free_port
from tests.support.redis import running_redis
from tests.wire.test_proxy import check, rewrite, tool


def test_the_cluster_example_is_valid() -> None:
    """conf/haproxy-cluster.cfg passes haproxy -c as shipped, and keeps its
    promises: passthrough, PROXY v2, readiness checks on /readyz."""
    check(tool("haproxy"), "-c", "-f", str(CONF / "haproxy-cluster.cfg"))
    text = (CONF / "haproxy-cluster.cfg").read_text()
    assert "mode tcp" in text
    assert "mode http" not in text
    assert "send-proxy-v2" in text
    assert "uri /readyz" in text


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory,
            ca: trustme.CA) -> Iterator[tuple[Cluster, int]]:
    haproxy = tool("haproxy")
    directory = tmp_path_factory.mktemp("haproxy-cluster")
    certs = write_cert(ca, directory / "tls")
    with running_redis(directory / "redis") as redis, running_cluster(
            directory, redis, certs,
            server={"proxy_protocol": True, "trust_forwarded_for": False,
                    "trusted_proxies": ["127.0.0.1"]},
            # Every client here is 127.0.0.1: room for the tests' handshakes.
            ratelimit={"connect_rate": 100.0, "connect_burst": 100}) as cluster:
        port = free_port()
        servers = "".join(
            f"    server ws{i} 127.0.0.1:{node.port} port {node.admin_port}\n"
            for i, node in enumerate(cluster.nodes, 1))
        config = directory / "haproxy.cfg"
        config.write_text(rewrite((CONF / "haproxy-cluster.cfg").read_text(), {
            "bind :::443 v4v6": f"bind 127.0.0.1:{port}",
            "    server ws1 10.0.0.11:8443\n    server ws2 10.0.0.12:8443\n"
            "    server ws3 10.0.0.13:8443\n": servers,
            "log /dev/log local0": "log stderr format raw local0",
            "maxconn 60000": "maxconn 1000",
            "inter 2s fall 2 rise 2": "inter 200ms fall 2 rise 1",
        }))
        log = directory / "haproxy.log"
        with log.open("wb") as out:
            process = subprocess.Popen([haproxy, "-db", "-f", str(config)],
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT)
        try:
            yield cluster, port
        finally:
            process.terminate()
            process.wait(10)


def through(cluster: Cluster, port: int, token: str) -> int:
    url = f"wss://127.0.0.1:{port}/ws?token={token}"
    try:
        with connect(url, ssl=cluster.context, origin=ORIGIN,  # type: ignore[arg-type]
                     open_timeout=10) as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"
    except InvalidStatus as e:
        return int(e.response.status_code)
    return 101


def test_clients_reach_every_node_through_haproxy(
    proxied: tuple[Cluster, int]
) -> None:
    cluster, port = proxied

    def served() -> bool:
        try:
            return through(cluster, port, cluster.token("una")) == 101
        except OSError:  # HAProxy not listening yet, or no node checked yet
            return False

    eventually(served, 10, "HAProxy has found the nodes ready")
    for _ in range(9):
        assert through(cluster, port, cluster.token("una")) == 101
    nodes = {node.name for node in cluster.nodes
             if "accepted 101 from 127.0.0.1" in (node.directory
                                                  / "securews.log").read_text()}
    assert nodes == {"a", "b", "c"}


def test_the_per_client_cap_holds_whichever_node_haproxy_picks(
    proxied: tuple[Cluster, int]
) -> None:
    """Every client here is 127.0.0.1, as the PROXY header tells each node:
    connections_per_ip (3) holds across the three."""
    cluster, port = proxied
    url = f"wss://127.0.0.1:{port}/ws?token="
    held = [connect(url + cluster.token("victor"), ssl=cluster.context,
                    origin=ORIGIN, open_timeout=10, legacy=True)  # type: ignore[arg-type]
            for _ in range(3)]
    try:
        assert through(cluster, port, cluster.token("victor")) == 429
    finally:
        for ws in held:
            ws.close()


def test_a_node_that_is_not_ready_is_taken_out_of_the_pool(
    proxied: tuple[Cluster, int]
) -> None:
    """Node C killed: HAProxy's /readyz checks take it out; every client
    still gets a session, on A or B."""
    cluster, port = proxied
    cluster.kill(cluster.node("c"))
    time.sleep(0.6)  # three check intervals
    statuses = [through(cluster, port, cluster.token(f"wendy-{n}")) for n in range(6)]
    assert statuses == [101] * 6
