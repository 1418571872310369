"""
What the benchmarks in ``bench/`` share: CPU placement and accounting,
the throwaway certificate and JWT key, the server child processes, and
the client source addresses.

Not a benchmark itself.  The scripts that import it (``echo_overhead.py``,
``peers.py``) put this directory on ``sys.path`` by being run from it;
importing this module puts the checkout first on ``sys.path`` so that
this checkout's securews is measured, not a copy installed elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import platform
import resource
import selectors
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PATH = "/ws"
#: The Origin every benchmark client sends and securews allows.
ORIGIN = "https://app.bench.example"
JWT_ISSUER = "https://auth.bench.example"
JWT_AUDIENCE = "securews-bench"
#: Where the JWT verification key is, beside the certificate.
JWT_PUBLIC = "jwt-public.pem"
#: Messages of this size and larger are binary, smaller ones text.
BINARY_FROM = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- CPU placement and accounting ---------------------------------------------


def cpu_pair() -> tuple[int, int] | None:
    """``(servers' CPU, client's CPU)``, or ``None`` on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def pin_server() -> None:
    """Pin this (server) process to the first CPU of :func:`cpu_pair`."""
    pair = cpu_pair()
    if pair is not None:
        os.sched_setaffinity(0, {pair[0]})


def pin_client() -> str:
    """Pin this (client) process to the second CPU; say where everything runs."""
    pair = cpu_pair()
    if pair is None:
        return "one CPU only: servers and client share it"
    os.sched_setaffinity(0, {pair[1]})
    return f"servers pinned to CPU {pair[0]}, client to CPU {pair[1]}"


def schedstat(pid: int | str = "self") -> tuple[float, float]:
    """``(on-CPU, waiting for a CPU)`` seconds of all of a process's threads."""
    run = wait = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError), open(path) as f:
            fields = f.read().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


def busy_seconds() -> float:
    """CPU time all CPUs spent busy (including time stolen by the host)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """A process's resident set size (``VmRSS``), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raise_nofile() -> int:
    """Raise this process's open-file soft limit to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def die_with_parent() -> None:
    """Linux ``PR_SET_PDEATHSIG``: SIGTERM this process when its parent ends."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


# -- what is being measured ---------------------------------------------------


def nvx_status() -> str:
    """Whether Autobahn's native (NVX) UTF-8 validator and masker are in use."""
    import autobahn.websocket as ws
    from autobahn.websocket import utf8validator, xormasker

    validator = utf8validator.Utf8Validator.__module__
    masker = xormasker.create_xor_masker.__module__  # type: ignore[attr-defined]
    return (f"HAS_NVX={ws.HAS_NVX} USES_NVX={ws.USES_NVX} "
            f"(AUTOBAHN_USE_NVX={os.environ.get('AUTOBAHN_USE_NVX', '')!r}); "
            f"UTF-8 validator from {validator}, masker from {masker}")


def versions() -> str:
    """Python, both OpenSSLs and the libraries under test, on one line."""
    from importlib.metadata import PackageNotFoundError, version

    from OpenSSL import SSL

    import securews

    found = []
    for name in ("Twisted", "autobahn", "pyOpenSSL", "websockets", "picows"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    return (f"Python {platform.python_version()} ({sys.implementation.name}); "
            f"securews {securews.__version__} from {Path(securews.__file__).parent}; "
            f"{', '.join(found)}; ssl module: {ssl.OPENSSL_VERSION}; "
            f"pyOpenSSL: {openssl}")


# -- credentials ----------------------------------------------------------------


def make_certificate(directory: Path) -> tuple[str, str, str]:
    """
    ``(cert, key, ca)`` PEM paths for 127.0.0.1: a trustme CA and an
    ECDSA P-256 leaf when trustme is installed, else securews's ``--dev``
    self-signed ECDSA P-256 certificate.
    """
    try:
        import trustme
    except ImportError:
        import datetime

        from securews.service.dev import ensure_certificate

        made, made_key = ensure_certificate(
            directory, now=datetime.datetime.now(datetime.UTC))
        return str(made), str(made_key), str(made)
    cert, key, ca = (str(directory / n) for n in ("cert.pem", "key.pem", "ca.pem"))
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    authority.cert_pem.write_to_path(ca)
    return cert, key, ca


def make_jwt(directory: Path, lifetime: float = 3600.0) -> str:
    """
    Make an RSA-2048 key pair, write its public half to ``JWT_PUBLIC`` in
    ``directory`` (for the securews server) and return an RS256 token
    with ``sub``, ``iss``, ``aud``, ``iat`` and ``exp`` signed by the
    private half, as an identity provider would issue it.
    """
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / JWT_PUBLIC).write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    now = int(time.time())
    return jwt.encode({"sub": "bench-user", "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
                       "iat": now, "exp": now + int(lifetime)},
                      private, algorithm="RS256")


# -- client source addresses ----------------------------------------------------


class Addresses:
    """
    Distinct loopback source addresses, 127.1.1.1 upwards (never
    127.0.0.x): every client connection of a run gets its own, as if
    each were a different client machine.  Linux accepts any 127/8
    address on ``lo`` as a source.
    """

    def __init__(self) -> None:
        self.used = 0

    def next(self) -> str:
        i = self.used
        self.used += 1
        hi, rest = divmod(i, 254 * 254)
        if hi >= 254:
            raise RuntimeError("out of loopback source addresses")
        mid, lo = divmod(rest, 254)
        return f"127.{hi + 1}.{mid + 1}.{lo + 1}"


# -- the server processes -------------------------------------------------------


class Server:
    """A ``_servers.py`` child process, listening once constructed."""

    def __init__(self, kind: str, cert: str, key: str, timeout: float = 30.0, *,
                 wait: bool = True) -> None:
        self.kind = kind
        self.timeout = timeout
        self.port = 0
        self.log = Path(cert).parent / f"{kind}.log"
        self.stderr = open(Path(cert).parent / f"{kind}.stderr", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_servers.py"), kind, "0", cert, key],
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Return once the server listens (``port`` set); else stop it and raise."""
        try:
            self.port = self._wait_ready(self.timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"{self.kind}: not ready after {timeout}s"
                                       f"{self.stderr_tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    raise RuntimeError(f"{self.kind}: exited before listening"
                                       f"{self.stderr_tail()}")
                line += chunk
        word, _, rest = line.decode().strip().partition(" ")
        if word != "READY":
            raise RuntimeError(f"{self.kind}: {line.decode().strip()}")
        return int(rest)

    def url(self, query: str = "") -> str:
        return f"wss://127.0.0.1:{self.port}{PATH}{'?' + query if query else ''}"

    def stderr_tail(self) -> str:
        """The end of the server's log and stderr (gone with the temp dir)."""
        self.stderr.seek(0)
        tail = self.stderr.read()[-2000:].decode(errors="replace")
        with contextlib.suppress(OSError):
            tail = self.log.read_text(errors="replace")[-2000:] + tail
        return f"\n{tail}" if tail else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@contextlib.contextmanager
def servers(kinds: list[str], cert: str, key: str) -> Iterator[dict[str, Server]]:
    """Start a server per kind (all at once); stop them all after."""
    started: dict[str, Server] = {}
    try:
        for kind in kinds:
            started[kind] = Server(kind, cert, key, wait=False)
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def label(size: int) -> str:
    kind = "bin" if size >= BINARY_FROM else "txt"
    return f"{size // 1024}K {kind}" if size >= 1024 else f"{size}B {kind}"
