"""
What a cluster costs a handshake: handshakes per second and handshake
latency (p50, p99) for one node in memory, one node on Redis and three
nodes on Redis, side by side, from one run.

Run (about a minute; needs ``redis-server``)::

    python bench/cluster.py [--seconds 8] [--connectors 16]

Each node is a real ``twistd -n securews`` (JWT RS256 in the query, the
Origin allow-list, every limit raised so that this load is legal but
still charged) on loopback with a throwaway certificate; Redis is a
private ``redis-server`` (no persistence).  The client is this process:
``--connectors`` asyncio loops, each opening a wss connection with a
fresh token, waiting for the 101 (the handshake's latency: TCP connect to
open), closing, and again, spread over the kind's nodes in turn.  Kinds
take turns in ``--slice`` second slices, so that whatever else the
machine does falls on all of them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect

ORIGIN = "https://bench.example"
TWISTD = str(Path(sys.executable).parent / "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench/cluster.py needs redis-server (Debian package redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--maxmemory-policy", "noeviction",
         "--dir", str(directory)], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return process, port
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.05)


def node_config(directory: Path, port: int, cert: Path, key: Path, public: Path,
                redis_port: int | None, name: str) -> Path:
    cluster = (f'[cluster]\nredis_url = "redis://127.0.0.1:{redis_port}/0"\n'
               f'node_id = "{name}"\n') if redis_port else ""
    text = f"""
[server]
listen = "tcp:{port}:interface=127.0.0.1"
[tls]
cert = "{cert}"
key = "{key}"
[origin]
allowed = ["{ORIGIN}"]
[auth]
methods = ["jwt"]
[auth.jwt]
key_file = "{public}"
[ratelimit]
connections_per_ip = 100000
sessions_per_principal = 1000000
connect_rate = 100000.0
connect_burst = 1000000
[log]
file = "{directory / (name + '.log')}"
{cluster}"""
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"a node did not start (port {port})")
            time.sleep(0.05)


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time of processes ``pids`` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


async def slice_of_load(ports: list[int], context: ssl.SSLContext, tokens: list[str],
                        seconds: float, latencies: list[float]) -> int:
    """Handshakes for ``seconds``, one loop per token; how many succeeded."""
    end = time.monotonic() + seconds
    done = 0

    async def connector(index: int) -> None:
        nonlocal done
        turn = index
        token = tokens[index]
        while time.monotonic() < end:
            port = ports[turn % len(ports)]
            turn += 1
            began = time.monotonic()
            async with connect(f"wss://127.0.0.1:{port}/ws?token={token}",
                               ssl=context, origin=ORIGIN,  # type: ignore[arg-type]
                               open_timeout=10):
                latencies.append(time.monotonic() - began)
                done += 1

    await asyncio.gather(*(connector(i) for i in range(len(tokens))))
    return done


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="measured seconds per kind (8)")
    parser.add_argument("--slice", type=float, default=1.0,
                        help="seconds a kind runs per turn (1)")
    parser.add_argument("--connectors", type=int, default=16,
                        help="concurrent connection loops (16)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cert, key, ca_file = (directory / n for n in ("cert.pem", "key.pem", "ca.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        ca.cert_pem.write_to_path(str(ca_file))
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = directory / "public.pem"
        public.write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo))
        redis, redis_port = start_redis(directory)
        processes: list[subprocess.Popen[bytes]] = [redis]
        kinds: dict[str, list[int]] = {}
        pids: dict[str, list[int]] = {}
        try:
            plan = {"1 node, memory": (1, None), "1 node, Redis": (1, redis_port),
                    "3 nodes, Redis": (3, redis_port)}
            for kind, (count, engine) in plan.items():
                ports = []
                for n in range(count):
                    port = free_port()
                    name = f"{kind.split(',')[0][0]}{'r' if engine else 'm'}{n}"
                    config = node_config(directory, port, cert, key, public,
                                         engine, name)
                    process = subprocess.Popen(
                        [TWISTD, "--nodaemon", "--pidfile=", "securews", "--config",
                         str(config)], stdout=subprocess.DEVNULL,
                        stderr=subprocess.STDOUT, start_new_session=True)
                    processes.append(process)
                    wait_listening(port, process)
                    ports.append(port)
                    pids.setdefault(kind, []).append(process.pid)
                kinds[kind] = ports
            time.sleep(1.0)  # the engines up
            context = ssl.create_default_context(cafile=str(ca_file))
            # Minted once: the client's CPU goes to the handshakes.
            now = int(time.time())
            tokens = [jwt.encode({"sub": f"user-{n}", "iat": now - 1,
                                  "exp": now + 3600}, private, algorithm="RS256")
                      for n in range(args.connectors)]
            results: dict[str, tuple[int, float, list[float]]] = {
                kind: (0, 0.0, []) for kind in kinds}
            server_cpu = dict.fromkeys(kinds, 0.0)
            redis_cpu = dict.fromkeys(kinds, 0.0)
            loop = asyncio.new_event_loop()
            for ports in kinds.values():  # warm up
                loop.run_until_complete(slice_of_load(ports, context, tokens, 0.5, []))
            rounds = max(1, int(args.seconds / args.slice))
            for r in range(rounds):
                order = list(kinds)
                order = order[r % len(order):] + order[:r % len(order)]
                for kind in order:
                    count, elapsed, latencies = results[kind]
                    cpu_before = cpu_seconds(pids[kind])
                    redis_before = cpu_seconds([redis.pid])
                    began = time.monotonic()
                    count += loop.run_until_complete(slice_of_load(
                        kinds[kind], context, tokens, args.slice, latencies))
                    results[kind] = (count, elapsed + time.monotonic() - began,
                                     latencies)
                    server_cpu[kind] += cpu_seconds(pids[kind]) - cpu_before
                    redis_cpu[kind] += cpu_seconds([redis.pid]) - redis_before
            print(f"{'kind':<16} {'handshakes/s':>12} {'ratio':>6} {'p50 ms':>7} "
                  f"{'p99 ms':>7} {'node CPU ms/hs':>15} {'Redis CPU ms/hs':>16}")
            base = None
            for kind, (count, elapsed, latencies) in results.items():
                rate = count / elapsed
                base = base or rate
                p50 = statistics.median(latencies) * 1e3
                p99 = percentile(latencies, 0.99) * 1e3
                print(f"{kind:<16} {rate:>12.0f} {rate / base:>6.2f} {p50:>7.1f} "
                      f"{p99:>7.1f} {server_cpu[kind] / count * 1e3:>15.2f} "
                      f"{redis_cpu[kind] / count * 1e3:>16.3f}")
            print(f"(client: {args.connectors} connections at a time from this "
                  f"process; {os.cpu_count()} CPUs shared by the nodes, Redis and "
                  "the client: rates are indicative, CPU per handshake steadier)")
        finally:
            for process in processes:
                if process.poll() is None:
                    if process is redis:
                        process.terminate()
                    else:
                        os.killpg(process.pid, signal.SIGTERM)
                    process.wait(10)


if __name__ == "__main__":
    main()
