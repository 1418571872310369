"""
Run the Autobahn Testsuite's ``fuzzingclient`` against ``twistd securews``
with every defence on, and read its report.

The server is the installed ``twistd -n securews --config ...`` in a
subprocess, as an operator runs it: ``wss://`` with a real certificate,
an Origin allow-list (the suite is told to send an allowed ``Origin``, so
``allow_missing`` stays off), RS256 JWT authentication with the token in
the query string, short handshake, idle, ping and close timeouts, a
write-queue limit, and size and rate limits raised only as far as the
suite's own traffic needs (see :func:`server_config`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .py27env import Environment
from .report import AGENT, Report

__all__ = [
    "CI_COMPRESSION_CASES",
    "CI_RUNS",
    "ENVIRONMENT",
    "FULL_RUN",
    "REPORTS",
    "Run",
    "run_suite",
]

TWISTD = str(Path(sys.executable).parent / "twistd")
ORIGIN = "https://app.conformance.test"
ISSUER = "https://issuer.conformance.test"
AUDIENCE = "securews-conformance"


@dataclass(frozen=True)
class Run:
    """One fuzzingclient run: which cases, compression on or off."""

    name: str
    compression: bool
    cases: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    #: How many cases the patterns select (a typo must not pass quietly).
    case_count: int | None = None
    #: Bound on the whole run (wstest itself has none).
    timeout: float = 900


#: With compression, CI runs three cases of each group that answers a
#: different deflate offer (12.1/12.3: the default offer on JSON and on
#: German text; 13.1/13.3/13.5/13.7: no parameters, client_max_window_bits
#: 9 with and without context takeover, and a list of three offers):
#: 1000 messages of 16 octets, of 8 KiB (twice the server's 4 KiB window)
#: and of 8 KiB sent in 256-octet fragments; and one large case, 12.1.17:
#: 1000 messages of 128 KiB in 4 KiB fragments.  Each case is 1000 round
#: trips; the other sizes of these groups (up to 1000 x 128 KiB, or 128
#: KiB in 256-octet fragments) take about 15 minutes and are left to the
#: release run.
CI_COMPRESSION_CASES = (*(f"{group}.{size}"
                          for group in ("12.1", "12.3", "13.1", "13.3", "13.5",
                                        "13.7")
                          for size in (1, 6, 11)),
                        "12.1.17")
#: What CI runs: every case but 12.* and 13.* (which need compression)
#: with compression off, then the cases above with compression on.
CI_RUNS = (
    Run("no compression", compression=False, cases=("*",),
        exclude=("12.*", "13.*"), case_count=301, timeout=600),
    Run("compression", compression=True, cases=CI_COMPRESSION_CASES,
        case_count=len(CI_COMPRESSION_CASES), timeout=600),
)
#: The release run: all 517 cases with compression on.
FULL_RUN = Run("full, compression", compression=True, cases=("*",),
               case_count=517, timeout=7200)


# -- the server ----------------------------------------------------------------


def server_config(directory: Path, compression: bool, token_lifetime: float
                  ) -> tuple[Path, str]:
    """
    Write certificates, a JWT key and ``securews.toml``; return the config
    file and a token for it.

    Every defence is on.  Timeouts are short, so they are exercised while
    the cases run: a ping every 2 s (the suite answers it; it does not
    count it as a received frame), 10 s idle, 600 s lifetime (the longest
    case takes about a minute).  Limits are raised only as far as the
    suite's largest case needs:

    * ``max_message_size``/``max_frame_size`` 16 MiB: 9.1.6 and 9.2.6 send
      one 16 MiB frame.  ``max_fragments`` 65537: 9.3.1/9.4.1 send 4 MiB in
      64-octet fragments, and the suite's Autobahn 0.10.9 ends a message
      whose size is a multiple of the fragment size with an extra empty
      final frame.  ``max_write_buffer`` 32 MiB: the echo of a 16 MiB
      message is queued whole.
    * Per session (each case is one connection): ``message_burst`` 70000
      (every frame costs a token: 9.3.1/9.4.1 send the 65537 frames above
      back to back; 9.7.x/9.8.x send 1000 messages, 12.x/13.x up to 1000
      messages of 32 fragments), ``bytes_burst`` 128 MiB (12.x.18/13.x.18
      echo 1000 x 128 KiB = 125 MiB); the refill rates stay modest, so no
      case depends on how fast the machine is.
    * Per client: ``connect_burst`` 400 at 20 per second: the suite opens
      one connection per case, all from 127.0.0.1, and runs the 301 cases
      outside 12.x/13.x in well under a minute (about 150 of them within
      seconds).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))

    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = directory / "jwt-public.pem"
    public.write_bytes(signing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    now = int(time.time())
    token = jwt.encode({"sub": "autobahn-testsuite", "iss": ISSUER, "aud": AUDIENCE,
                        "iat": now, "exp": now + int(token_lifetime)},
                       signing, algorithm="RS256")

    config = directory / "securews.toml"
    config.write_text(f"""\
[server]
listen = "tcp:0:interface=127.0.0.1"
path = "/ws"
app = "echo"

[tls]
cert = "{cert}"
key = "{key}"

[log]
format = "json"

[limits]
max_message_size = 16777216
max_frame_size = 16777216
max_fragments = 65537
max_write_buffer = 33554432
compression = {"true" if compression else "false"}
handshake_timeout = 5
close_timeout = 2
idle_timeout = 10
ping_interval = 2
ping_timeout = 5
max_lifetime = 600

[origin]
allowed = ["{ORIGIN}"]
allow_missing = false

[auth]
methods = ["jwt"]

[auth.jwt]
algorithms = ["RS256"]
key_file = "{public}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
query_param = "token"

[ratelimit]
connections_per_ip = 20
connect_rate = 20
connect_burst = 400
messages_per_second = 100
message_burst = 70000
bytes_per_second = 16777216
bytes_burst = 134217728
""")
    return config, token


class Server:
    """A ``twistd -n securews`` child process, its output in a file."""

    def __init__(self, config: Path, directory: Path) -> None:
        self.output = directory / "twistd.out"
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                            "WATCHDOG_PID")}
        with open(self.output, "w") as out:
            self.process = subprocess.Popen(
                [TWISTD, "--nodaemon", "--pidfile=", "securews", "--config",
                 str(config)], cwd=directory, env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for_url(self, timeout: float = 30) -> str:
        """The ``wss://`` URL the server logs once it listens."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(r"securews listening on (wss://[^\s\"]+)", self.text())
            if found:
                return found.group(1)
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"securews did not start:\n{self.text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def events(self) -> tuple[Counter[str], Counter[str]]:
        """From the server's JSON log: handshakes by outcome and method,
        and the server's own reasons for closing sessions."""
        handshakes: Counter[str] = Counter()
        closes: Counter[str] = Counter()
        for line in self.text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "handshake":
                handshakes[f"{event.get('outcome')} {event.get('status')} "
                           f"{event.get('method') or event.get('reason')}"] += 1
            elif event.get("event") == "session_closed":
                closes[str(event.get("reason"))] += 1
        return handshakes, closes


@contextmanager
def running_server(directory: Path, compression: bool,
                   token_lifetime: float) -> Iterator[tuple[Server, str]]:
    """A started server and the URL (token included) the suite connects to."""
    config, token = server_config(directory, compression, token_lifetime)
    server = Server(config, directory)
    try:
        url = server.wait_for_url()
        yield server, f"{url}?token={token}"
    finally:
        server.stop()


#: Where the tests leave their reports for the terminal summary (conftest).
REPORTS = pytest.StashKey[list[Report]]()
#: ... and how the suite's environment was had.
ENVIRONMENT = pytest.StashKey[Environment]()


def run_suite(run: Run, python27: Path, directory: Path,
              token_lifetime: float | None = None) -> Report:
    """
    Start securews, run the fuzzingclient against it, return its report.

    :param python27: the ``bin/python`` of the suite's environment.
    :raises RuntimeError: the suite did not finish or wrote no report.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lifetime = run.timeout + 600 if token_lifetime is None else token_lifetime
    reports = directory / "reports"
    with running_server(directory, run.compression, lifetime) as (server, url):
        spec = directory / "fuzzingclient.json"
        spec.write_text(json.dumps({
            "outdir": str(reports),
            "servers": [{"agent": AGENT, "url": url, "origin": ORIGIN}],
            "cases": list(run.cases),
            "exclude-cases": list(run.exclude),
            "exclude-agent-cases": {},
        }, indent=2))
        began = time.monotonic()
        with open(directory / "wstest.out", "w") as out:
            try:
                result = subprocess.run(
                    [str(python27), "-m", "autobahntestsuite.wstest",
                     "-m", "fuzzingclient", "-s", str(spec)],
                    cwd=directory, stdout=out, stderr=subprocess.STDOUT,
                    timeout=run.timeout, check=False)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"the Autobahn Testsuite ({run.name}) did not "
                                   f"finish in {run.timeout:.0f} s; see "
                                   f"{directory / 'wstest.out'}") from None
        wall_time = time.monotonic() - began
        if result.returncode != 0 or not (reports / "index.json").exists():
            raise RuntimeError(f"wstest exited {result.returncode} without a report; "
                               f"see {directory / 'wstest.out'}")
        report = Report.read(run.name, reports, wall_time, directory)
        server.stop()
        report.handshakes, report.server_closes = server.events()
    return report
