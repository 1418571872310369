"""
The Autobahn Testsuite's own Python 2.7 environment, built once and cached.

``autobahntestsuite`` (``wstest``) runs on Python 2.7 only, so it can never
share the project's environment.  It gets a virtualenv of its own, made by
``virtualenv<20.22`` (the last line that creates 2.7 environments), which
in turn lives in a throw-away Python 3 venv.  Every package of the 2.7
environment is pinned in ``requirements-py27.txt``.

The result is cached under ``$XDG_CACHE_HOME/securews/autobahntestsuite``
(``~/.cache/...`` by default), keyed by the pins and the interpreter.  A
build happens in a directory of its own under an exclusive lock and is
published by atomically replacing a symlink, so a half-built environment
(a killed run, a full disk) is never reused, two runs never build at once,
and an environment never moves once built (virtualenvs are not
relocatable).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Environment", "Py27Unavailable", "find_python27", "wstest_environment"]

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-py27.txt"
#: The last virtualenv release line that can still create 2.7 environments;
#: 20.21.1 bundles pip 20.3.4, setuptools 44.1.1 and wheel 0.37.1 for 2.7.
VIRTUALENV = "virtualenv==20.21.1"
#: Environment variable naming a Python 2.7 interpreter explicitly.
PYTHON27_VARIABLE = "SECUREWS_PYTHON27"
_PROBE = "import sys, ssl, zlib; sys.stdout.write('%d.%d' % sys.version_info[:2])"


class Py27Unavailable(Exception):
    """No usable Python 2.7 interpreter on this machine."""


@dataclass(frozen=True)
class Environment:
    """The suite's environment and how it was had.

    :ivar python: its ``bin/python``; run ``-m autobahntestsuite.wstest``.
    :ivar built: whether this call built it (else it came from the cache).
    :ivar seconds: how long getting it took.
    """

    python: Path
    built: bool
    seconds: float


def _is_python27(candidate: Path) -> bool:
    """Whether ``candidate`` runs and is a 2.7 with ``ssl`` and ``zlib``."""
    try:
        result = subprocess.run([str(candidate), "-c", _PROBE], capture_output=True,
                                text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout == "2.7"


def _pyenv_roots() -> list[Path]:
    roots: list[Path] = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.strip()
            if out:
                roots.append(Path(out))
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots.append(Path.home() / ".pyenv")
    return roots


def _version(python: Path) -> tuple[int, ...]:
    """``.../versions/2.7.18/bin/python2.7`` -> ``(2, 7, 18)``."""
    return tuple(int(part) for part in re.findall(r"\d+", python.parent.parent.name))


def find_python27() -> Path:
    """
    A Python 2.7 interpreter: ``$SECUREWS_PYTHON27`` if set, else the
    newest 2.7 under ``pyenv root`` (the development and CI machines carry
    CPython 2.7.18 there), else ``python2.7``/``python2`` on ``PATH``
    (pyenv's shims are skipped: they fail unless 2.7 is selected).

    :raises Py27Unavailable: none found, or the named one is not 2.7.
    """
    explicit = os.environ.get(PYTHON27_VARIABLE)
    if explicit:
        if _is_python27(Path(explicit)):
            return Path(explicit)
        raise Py27Unavailable(f"${PYTHON27_VARIABLE}={explicit} is not a working "
                              "Python 2.7 with ssl and zlib")
    candidates: list[Path] = []
    for root in dict.fromkeys(_pyenv_roots()):
        candidates += sorted((root / "versions").glob("2.7*/bin/python2.7"),
                             key=_version, reverse=True)
    for name in ("python2.7", "python2"):
        found = shutil.which(name)
        if found and "/shims/" not in found:
            candidates.append(Path(found))
    for candidate in candidates:
        if _is_python27(candidate):
            return candidate
    raise Py27Unavailable(
        "the Autobahn Testsuite needs Python 2.7 and none was found (looked at "
        f"${PYTHON27_VARIABLE}, pyenv's versions and PATH)")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "securews" / "autobahntestsuite"


def _key(python27: Path) -> str:
    """Changes whenever anything that goes into the environment changes."""
    digest = hashlib.sha256()
    digest.update(REQUIREMENTS.read_bytes())
    digest.update(VIRTUALENV.encode())
    digest.update(str(python27.resolve()).encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _works(env: Path) -> bool:
    """Whether a published environment still runs (its base interpreter may
    have been removed since)."""
    python = env / "bin" / "python"
    try:
        result = subprocess.run(
            [str(python), "-c", "import autobahntestsuite.wstest, wsaccel"],
            capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _run(args: list[str], log: Path) -> None:
    """Run one build step, its output appended to ``log``; raise with the
    log's tail if it fails."""
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_PYTHON_VERSION_WARNING="1", PIP_NO_INPUT="1")
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    with open(log, "a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        try:
            status: int | str = subprocess.run(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=900,
                check=False).returncode
        except subprocess.TimeoutExpired:
            status = "timed out after 900 s"
    if status != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"building the Autobahn Testsuite environment failed "
                           f"({status}; full log {log}):\n{tail}")


def _build(python27: Path, target: Path) -> None:
    log = target / "build.log"
    tools = target / "tools"
    _run([sys.executable, "-m", "venv", str(tools)], log)
    _run([str(tools / "bin" / "python"), "-m", "pip", "install", VIRTUALENV], log)
    env = target / "py27"
    _run([str(tools / "bin" / "python"), "-m", "virtualenv", "--quiet",
          "--no-download", "--no-periodic-update",
          "--app-data", str(target / "virtualenv-app-data"),
          "-p", str(python27), str(env)], log)
    _run([str(env / "bin" / "python"), "-m", "pip", "install",
          "-r", str(REQUIREMENTS)], log)
    if not _works(env):
        raise RuntimeError(f"the built Autobahn Testsuite environment does not "
                           f"import (see {log})")
    shutil.rmtree(tools)
    shutil.rmtree(target / "virtualenv-app-data", ignore_errors=True)


def wstest_environment(python27: Path | None = None) -> Environment:
    """
    The cached 2.7 environment with ``autobahntestsuite`` installed, built
    first if needed.

    :raises Py27Unavailable: no Python 2.7 on this machine.
    :raises RuntimeError: the build failed (the log's tail is in the message).
    """
    began = time.monotonic()
    python27 = find_python27() if python27 is None else python27
    root = cache_root()
    key = _key(python27)
    link = root / f"env-{key}"
    with _locked(root / ".lock"):
        published = link.resolve() if link.is_symlink() else None
        # Builds of this key that are not published failed or were replaced
        # (nobody else is building one: we hold the lock).
        for stale in root.glob(f"build-{key}-*"):
            if stale.resolve() != published:
                shutil.rmtree(stale, ignore_errors=True)
        if published is not None and _works(published / "py27"):
            return Environment(published / "py27" / "bin" / "python", False,
                               time.monotonic() - began)
        target = Path(tempfile.mkdtemp(prefix=f"build-{key}-", dir=root))
        _build(python27, target)
        temporary = root / f".link-{key}-{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target.name)
        os.replace(temporary, link)
        return Environment(target / "py27" / "bin" / "python", True,
                           time.monotonic() - began)
