"""
What channels deliver: fan-out of one channel to ``--subscribers``
sessions (1,000) at a fixed publish rate, on two nodes sharing one Redis
and on one node in memory, from one run: messages delivered per second,
publish-to-delivery latency (p50, p99), and the CPU the nodes (and Redis)
spend per delivered message.  Every message is checked: each subscriber
must get each one once, in offset order; what is missing, repeated or
closed is printed, never averaged away.

Run (about a minute and a half; needs ``redis-server``)::

    python bench/channels.py [--subscribers 1000] [--rate 10] [--seconds 8]
                             [--slice 2] [--clients 2]

Each node is a real ``twistd -n securews`` serving ``server.app =
"channels"`` (JWT RS256 in the query carrying a ``channels`` claim, the
Origin allow-list, ``[messages] format = "json"``, the per-client limits
raised so that 1,000 sessions from one address are legal but still
charged; ``max_write_buffer`` and every other ``[limits]`` and
``[channels]`` default kept) on loopback with a throwaway certificate;
Redis is a private ``redis-server`` (no persistence).  Subscribers are
``websockets`` asyncio clients spread over ``--clients`` processes, so
that reading is not the clients' limit (``cli%`` shows their CPU), each
subscriber on the kind's nodes in turn.  The publisher is this process,
once as a WebSocket session whose claim grants publishing (on the first
node; each publish waits for its reply) and once as a trusted backend's
``POST /publish`` on the admin listener (bearer token, kept-alive):
``--rate`` messages a second, each carrying its send time
(``time.monotonic``, one clock for every process on Linux), so that a
subscriber knows each message's latency.

Both kinds' nodes and subscribers stay up through the run; the four rows
(kind x publisher) take turns publishing in ``--slice`` second slices,
``--seconds`` each, so that whatever else the machine does falls on all
of them alike, and each slice waits for its last delivery.  Delivered per
second is a row's deliveries over its publishing time, or until its last
delivery when that came later (the nodes did not keep up).  ``other%`` is
the rest of the machine's CPU use meanwhile, from ``/proc/stat``.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import multiprocessing
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import jwt
import trustme
from _harness import busy_seconds
from _subscribers import CHANNEL, client_process
from cluster import (
    ORIGIN,
    TWISTD,
    cpu_seconds,
    free_port,
    percentile,
    start_redis,
    wait_listening,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.sync.client import connect as connect_sync
from websockets.typing import Origin

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
#: Seconds the last messages of a phase get to arrive.
DRAIN = 10.0


def node_config(directory: Path, name: str, port: int, admin_port: int,
                files: dict[str, Path], redis_port: int | None) -> Path:
    cluster = (f'[cluster]\nredis_url = "redis://127.0.0.1:{redis_port}/0"\n'
               f'node_id = "{name}"\n') if redis_port else ""
    text = f"""
[server]
listen = "tcp:{port}:interface=127.0.0.1"
app = "channels"
[tls]
cert = "{files['cert']}"
key = "{files['key']}"
[origin]
allowed = ["{ORIGIN}"]
[auth]
methods = ["jwt"]
[auth.jwt]
key_file = "{files['public']}"
[messages]
format = "json"
[ratelimit]
connections_per_ip = 100000
sessions_per_principal = 1000000
connect_rate = 100000.0
connect_burst = 1000000
messages_per_second = 100000.0
message_burst = 100000
[admin]
listen = "tcp:{admin_port}:interface=127.0.0.1"
token_file = "{files['admin']}"
[log]
file = "{directory / (name + '.log')}"
{cluster}"""
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


# -- the publishers --------------------------------------------------------------


class WebSocketPublisher:
    """A session whose claim grants publishing: each publish waits for its
    reply (the engine's position), as a page would."""

    def __init__(self, port: int, token: str, context: ssl.SSLContext) -> None:
        self.ws = connect_sync(f"wss://127.0.0.1:{port}/ws?token={token}",
                               ssl=context, origin=Origin(ORIGIN),
                               open_timeout=30, compression=None, legacy=True)
        self.sent = 0

    def publish(self, data: dict[str, Any]) -> bool:
        self.sent += 1
        self.ws.send(json.dumps({"op": "publish", "channel": CHANNEL, "data": data,
                                 "id": self.sent}))
        return json.loads(self.ws.recv(timeout=10)).get("ok") is True

    def close(self) -> None:
        self.ws.close()


class AdminPublisher:
    """A trusted backend: ``POST /publish`` on a kept-alive connection."""

    def __init__(self, admin_port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", admin_port,
                                                     timeout=10)

    def publish(self, data: dict[str, Any]) -> bool:
        self.connection.request(
            "POST", "/publish", json.dumps({"channel": CHANNEL, "data": data}),
            {"Authorization": f"Bearer {ADMIN_TOKEN}",
             "Content-Type": "application/json"})
        response = self.connection.getresponse()
        response.read()
        return response.status == 202

    def close(self) -> None:
        self.connection.close()


def publish_for(publisher: WebSocketPublisher | AdminPublisher, rate: float,
                seconds: float) -> tuple[int, int, float]:
    """Publish at ``rate`` for ``seconds`` (no catching up in bursts when
    late); the messages accepted, refused, and when the first was sent."""
    accepted = refused = 0
    began = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = began + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if publisher.publish({"t": time.monotonic(), "n": n}):
            accepted += 1
        else:
            refused += 1
    return accepted, refused, began


# -- the run -----------------------------------------------------------------------

Publisher = WebSocketPublisher | AdminPublisher


def ask(pipes: list[Connection], command: str, argument: Any = None) -> list[Any]:
    for pipe in pipes:
        pipe.send((command, argument))
    return [pipe.recv() for pipe in pipes]


def wait_ready(admin_port: int, process: subprocess.Popen[bytes]) -> None:
    """Until ``/readyz`` says 200 (a Redis node: its subscription heard)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"a node was not ready (admin port {admin_port})")
        time.sleep(0.1)


class Row:
    """One kind and one publisher: what its slices added up to."""

    def __init__(self, kind: str, label: str, publisher: Publisher,
                 node_pids: list[int], subscribers: int) -> None:
        self.kind, self.label, self.publisher = kind, label, publisher
        self.node_pids, self.subscribers = node_pids, subscribers
        self.published = self.refused = self.expected = self.delivered = 0
        self.gaps = self.repeats = self.lost_notices = 0
        self.elapsed = self.node_cpu = self.redis_cpu = 0.0
        self.client_cpu = self.other_cpu = 0.0
        self.latencies = array("d")

    def slice(self, pipes: list[Connection], rate: float, seconds: float,
              every_pid: list[int], redis_pid: int) -> None:
        """
        Publish for ``seconds``, wait for every delivery, and add up what
        it cost.

        :param every_pid: every node's process and Redis's.
        """
        ask(pipes, "take")  # start afresh
        nodes, redis = cpu_seconds(self.node_pids), cpu_seconds([redis_pid])
        ours, machine = cpu_seconds(every_pid), busy_seconds()
        me = time.process_time()
        accepted, refused, began = publish_for(self.publisher, rate, seconds)
        expected = accepted * self.subscribers
        deadline = time.monotonic() + DRAIN
        while sum(ask(pipes, "count")) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        reports = ask(pipes, "take")
        clients = sum(r["cpu"] for r in reports)
        # The publishing window, or longer when the last delivery came after it.
        elapsed = max([seconds] + [r["last"] - began for r in reports])
        self.node_cpu += cpu_seconds(self.node_pids) - nodes
        self.redis_cpu += cpu_seconds([redis_pid]) - redis
        self.client_cpu += clients
        self.other_cpu += max(0.0, (busy_seconds() - machine)
                              - (cpu_seconds(every_pid) - ours) - clients
                              - (time.process_time() - me))
        self.elapsed += elapsed
        self.published += accepted
        self.refused += refused
        self.expected += expected
        for report in reports:
            self.latencies.frombytes(report["latencies"])
            self.delivered += report["delivered"]
            self.gaps += report["gaps"]
            self.repeats += report["repeats"]
            self.lost_notices += report["lost_notices"]

    def line(self, rate: float) -> str:
        ms = sorted(self.latencies)
        p50 = ms[len(ms) // 2] * 1e3 if ms else float("nan")
        p99 = percentile(ms, 0.99) * 1e3 if ms else float("nan")
        per = max(self.delivered, 1)
        redis = self.redis_cpu / per * 1e6 if "Redis" in self.kind else 0.0
        return (f"{self.kind:<15} {self.label:<13} {rate * self.subscribers:>8.0f} "
                f"{self.delivered / self.elapsed:>11.0f} {p50:>7.1f} {p99:>7.1f} "
                f"{self.node_cpu / per * 1e6:>8.1f} {redis:>9.2f} "
                f"{self.client_cpu / self.elapsed * 100:>5.0f} "
                f"{self.other_cpu / self.elapsed * 100:>6.0f}")

    def problems(self) -> list[str]:
        found = []
        for what, value in (("publishes refused", self.refused),
                            ("deliveries missing", self.expected - self.delivered),
                            ("offset gaps", self.gaps), ("repeats", self.repeats),
                            ("recovered:false notices", self.lost_notices)):
            if value:
                found.append(f"{self.kind}, {self.label}: {value} {what}")
        return found


def start_node(directory: Path, name: str, files: dict[str, Path],
               redis_port: int | None) -> tuple[subprocess.Popen[bytes], int, int]:
    port, admin_port = free_port(), free_port()
    config = node_config(directory, name, port, admin_port, files, redis_port)
    process = subprocess.Popen(
        [TWISTD, "--nodaemon", "--pidfile=", "securews", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    wait_listening(port, process)
    wait_ready(admin_port, process)
    return process, port, admin_port


def credentials(directory: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """A certificate, a JWT key pair, an admin token; a subscriber's and a
    publisher's token."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    files = {n: directory / f"{n}.pem" for n in ("cert", "key", "ca", "public")}
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["public"].write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    files["admin"] = directory / "admin-token"
    files["admin"].write_text(ADMIN_TOKEN + "\n")
    now = int(time.time())
    tokens = {role: jwt.encode({"sub": f"bench-{role}", "iat": now - 1,
                                "exp": now + 3600, "channels": grants},
                               private, algorithm="RS256")
              for role, grants in (("sub", {"sub": [CHANNEL], "pub": []}),
                                   ("pub", {"sub": [], "pub": [CHANNEL]}))}
    return files, tokens


def run(args: argparse.Namespace, directory: Path, files: dict[str, Path],
        tokens: dict[str, str], pipes: list[Connection]) -> None:
    redis, redis_port = start_redis(directory)
    context = ssl.create_default_context(cafile=str(files["ca"]))
    processes: list[subprocess.Popen[bytes]] = []
    rows: list[Row] = []
    try:
        for kind, prefix, count, engine in (("2 nodes, Redis", "redis", 2, redis_port),
                                            ("1 node, memory", "memory", 1, None)):
            nodes = [start_node(directory, f"{prefix}{n}", files, engine)
                     for n in range(count)]
            processes += [process for process, _, _ in nodes]
            urls = [f"wss://127.0.0.1:{nodes[i % count][1]}/ws?token={tokens['sub']}"
                    for i in range(args.subscribers)]
            for n, pipe in enumerate(pipes):
                pipe.send(("open", (kind, urls[n::len(pipes)])))
            answers = [pipe.recv() for pipe in pipes]
            subscribers = sum(a[0] for a in answers)
            print(f"{kind}: {subscribers} subscribers in "
                  f"{max(a[1] for a in answers):.1f} s", flush=True)
            pids = [process.pid for process, _, _ in nodes]
            rows.append(Row(kind, "WebSocket", WebSocketPublisher(
                nodes[0][1], tokens["pub"], context), pids, subscribers))
            rows.append(Row(kind, "POST /publish", AdminPublisher(nodes[0][2]),
                            pids, subscribers))
        every_pid = [process.pid for process in processes] + [redis.pid]
        for row in rows:  # warm up
            publish_for(row.publisher, args.rate, 1.0)
        time.sleep(1.0)
        rounds = max(1, round(args.seconds / args.slice))
        for r in range(rounds):
            for row in rows[r % len(rows):] + rows[:r % len(rows)]:
                row.slice(pipes, args.rate, args.seconds / rounds, every_pid,
                          redis.pid)
        for row in rows:
            row.publisher.close()
        closes = collections.Counter[str]()
        for answer in ask(pipes, "close"):
            closes.update(answer)
        print(f"{'kind':<15} {'publisher':<13} {'offered':>8} {'delivered/s':>11} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'node us':>8} {'Redis us':>9} "
              f"{'cli%':>5} {'other%':>6}")
        for row in rows:
            print(row.line(args.rate))
        print(f"(offered: {args.rate:g} publishes/s x subscribers; node us and "
              "Redis us: CPU microseconds per delivered message; cli%: the "
              f"{len(pipes)} subscriber processes' CPU, other%: the rest of the "
              f"machine's, % of one CPU; {os.cpu_count()} CPUs shared by the "
              f"nodes, Redis, the clients and the publisher; rows took turns in "
              f"{args.seconds / rounds:g} s slices, {args.seconds:g} s each)")
        problems = [p for row in rows for p in row.problems()]
        problems += [f"{n} sessions: {why}" for why, n in closes.items()]
        print("every message delivered once, in order, to every subscriber"
              if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(15)
        redis.terminate()
        redis.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000,
                        help="sessions subscribed to the channel, per kind (1000)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="publishes per second (10)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="publishing seconds per row (8)")
    parser.add_argument("--slice", type=float, default=2.0,
                        help="seconds a row publishes per turn (2)")
    parser.add_argument("--clients", type=int, default=2,
                        help="subscriber client processes (2)")
    args = parser.parse_args()

    spawn = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    with tempfile.TemporaryDirectory() as tmp:
        files, tokens = credentials(Path(tmp))
        for _ in range(args.clients):
            ours, theirs = spawn.Pipe()
            spawn.Process(target=client_process, args=(theirs, str(files["ca"])),
                          daemon=True).start()
            pipes.append(ours)
        try:
            run(args, Path(tmp), files, tokens, pipes)
        finally:
            for pipe in pipes:
                pipe.send(("exit", None))


if __name__ == "__main__":
    main()
