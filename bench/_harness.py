"""
What the benchmarks in ``bench/`` share: CPU placement (chosen once,
servers pinned by CPU number, affinity read back from the kernel) and
accounting, the client's event loop, the throwaway certificate and JWT
key, the server child processes, and the client source addresses.

Not a benchmark itself.  The scripts that import it (``echo_overhead.py``,
``peers.py``, ``idle_audit.py``) put this directory on ``sys.path`` by
being run from it;
importing this module puts the checkout first on ``sys.path`` so that
this checkout's securews is measured, not a copy installed elsewhere.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


#: ``(servers' CPU, client's CPU)``, decided once from the affinity this
#: process started with (:func:`plan_cpus`), before anything is pinned.
_PLAN: tuple[int, int] | None = None
_PLANNED = False


def plan_cpus() -> tuple[int, int] | None:
    """
    ``(servers' CPU, client's CPU)``: the first two CPUs this process may
    run on when first called, or ``None`` with a single CPU.  Decided once,
    so that pinning the client later does not change where servers go.
    """
    global _PLAN, _PLANNED
    if not _PLANNED:
        cpus = sorted(os.sched_getaffinity(0))
        _PLAN = (cpus[0], cpus[1]) if len(cpus) >= 2 else None
        _PLANNED = True
    return _PLAN


def pin_server(cpu: int | None) -> None:
    """Pin this (server) process to ``cpu``, the one the parent chose."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def pin_client() -> None:
    """Pin this (client) process to the client's CPU of :func:`plan_cpus`.

    Call it after the servers have started: they are pinned explicitly,
    never by inheritance, but a server started before the plan would see
    only the client's CPU."""
    plan = plan_cpus()
    if plan is not None:
        os.sched_setaffinity(0, {plan[1]})


def affinity(pid: int) -> set[int]:
    """The CPUs a process's threads may run on, read back from the kernel
    (the union over its threads; all of them, not just the main one)."""
    cpus: set[int] = set()
    for task in glob.glob(f"/proc/{pid}/task/*"):
        with contextlib.suppress(OSError, ValueError):
            cpus |= os.sched_getaffinity(int(task.rsplit("/", 1)[1]))
    return cpus or os.sched_getaffinity(pid)


def _cpus(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def placement(servers: dict[str, int], clients: dict[str, int]) -> tuple[str, bool]:
    """
    Where every process actually may run, read back with
    ``os.sched_getaffinity`` (per thread), one line, and whether servers
    and clients share no CPU.

    :param servers: name -> pid of each server process.
    :param clients: name -> pid of each client (load generator) process.
    """
    server_cpus: set[int] = set()
    client_cpus: set[int] = set()
    parts = []
    for name, pid in servers.items():
        cpus = affinity(pid)
        server_cpus |= cpus
        parts.append(f"{name} (pid {pid}) CPU {_cpus(cpus)}")
    for name, pid in clients.items():
        cpus = affinity(pid)
        client_cpus |= cpus
        parts.append(f"client {name} (pid {pid}) CPU {_cpus(cpus)}")
    apart = not (server_cpus & client_cpus)
    verdict = ("servers and client on separate CPUs" if apart else
               "WARNING: servers and client share CPU "
               f"{_cpus(server_cpus & client_cpus)}")
    return f"affinity read back: {'; '.join(parts)}: {verdict}", apart


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The client's event loop: ``"uvloop"``, ``"asyncio"`` (the default
    loop) or ``"auto"`` (uvloop when installed)."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def loop_name() -> str:
    """The running loop, as the run prints it."""
    loop = asyncio.get_running_loop()
    module = type(loop).__module__.split(".")[0]
    if module == "uvloop":
        import uvloop

        return f"uvloop {uvloop.__version__}"
    return f"asyncio's {type(loop).__name__}"


def schedstat(pid: int | str = "self") -> tuple[float, float]:
    """``(on-CPU, waiting for a CPU)`` seconds of all of a process's threads."""
    run = wait = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError), open(path) as f:
            fields = f.read().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


def kernel_seconds(pid: int) -> float:
    """CPU time a process (all its threads) spent in the kernel (``stime``),
    in clock ticks' resolution."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[12]) / CLK_TCK


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
    return jwt.encode(token_claims(lifetime), private, algorithm="RS256")


def token_claims(lifetime: float = 3600.0) -> dict[str, Any]:
    """The claims of the benchmark's token, issued now."""
    now = int(time.time())
    return {"sub": "bench-user", "iss": JWT_ISSUER, "aud": JWT_AUDIENCE,
            "iat": now, "exp": now + int(lifetime)}


def unchecked_authenticator(claims: dict[str, Any]) -> Any:
    """
    securews's credential check taken out: an authenticator answering
    every request with the principal a token with ``claims`` gives (same
    id, claims and expiry), without reading the token, so that every
    step after it (revocation, per-principal places, the log line) still
    runs.  What a connection costs with and without it is what verifying
    the JWT costs.  It keeps nothing per request, unlike
    ``securews.testing``'s ``FixedAuthenticator``.
    """
    from twisted.internet.defer import succeed
    from zope.interface import implementer

    from securews.auth.interfaces import IAuthenticator, Principal

    principal = Principal(id=claims["sub"], method="jwt", claims=claims,
                          expires_at=float(claims["exp"]))

    @implementer(IAuthenticator)
    class Unchecked:
        method = "jwt"

        def authenticate(self, request: Any) -> Any:
            return succeed(principal)

    return Unchecked()


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
    """
    A ``_servers.py`` child process, listening once constructed.

    :param pin: pin it to the servers' CPU of :func:`plan_cpus` (else it
        may run anywhere).
    :param wrapper: a command the server runs under (``valgrind ...``).
    """

    def __init__(self, kind: str, cert: str, key: str, timeout: float = 30.0, *,
                 wait: bool = True, pin: bool = True,
                 wrapper: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.timeout = timeout
        self.port = 0
        self.log = Path(cert).parent / f"{kind}.log"
        self.stderr = open(Path(cert).parent / f"{kind}.stderr", "w+b")  # noqa: SIM115
        plan = plan_cpus()
        self.cpu = plan[0] if pin and plan is not None else None
        self.proc = subprocess.Popen(
            [*(wrapper or []), sys.executable, str(HERE / "_servers.py"), kind, "0",
             cert, key, "" if self.cpu is None else str(self.cpu)],
            stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
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
        word, _, rest = self.read_line(timeout, "listening").partition(" ")
        if word != "READY":
            raise RuntimeError(f"{self.kind}: {word} {rest}")
        return int(rest)

    def read_line(self, timeout: float, what: str) -> str:
        """The server's next line on stdout, within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"{self.kind}: not {what} after {timeout}s"
                                       f"{self.stderr_tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    raise RuntimeError(f"{self.kind}: exited before {what}"
                                       f"{self.stderr_tail()}")
                line += chunk
        return line.decode().strip()

    def mark(self, timeout: float = 60.0) -> int:
        """Make the server call its marker (``_servers.install_marker``);
        return once it has, with the number of marks so far."""
        self.proc.send_signal(signal.SIGUSR1)
        word, _, rest = self.read_line(timeout, "marked").partition(" ")
        if word != "MARKED":
            raise RuntimeError(f"{self.kind}: {word} {rest}")
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
