"""
Running commands as a user without privileges, as an operator's service
user runs securews: the tests run as root in CI, so there they switch to
``nobody`` with ``setpriv`` (util-linux); as anyone else they run as that
user.  The scratch directory lives outside pytest's root-only tree, owned
by that user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.common import unavailable
from tests.support.processes import clean_env

__all__ = ["NOBODY", "Unprivileged", "unprivileged"]

NOBODY = 65534


class Unprivileged:
    """
    :ivar prefix: what to put before a command to run it unprivileged.
    :ivar home: a scratch directory that user owns (also its ``HOME``).
    """

    def __init__(self, prefix: list[str], home: Path) -> None:
        self.prefix = prefix
        self.home = home

    @property
    def env(self) -> dict[str, str]:
        return {**clean_env(), "HOME": str(self.home),
                "XDG_STATE_HOME": str(self.home / ".state")}

    def run(self, *args: str, timeout: float = 60,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *args], env=self.env, cwd=self.home,
                              text=True, capture_output=True, timeout=timeout,
                              input=stdin, check=False)

    def popen_args(self, *args: str) -> list[str]:
        return [*self.prefix, *args]


@contextmanager
def unprivileged() -> Iterator[Unprivileged]:
    """
    A way to run commands as a user without privileges.  Skips (fails
    under CI) when the tests run as root and cannot switch user, or the
    installed securews is not readable by that user.
    """
    home = Path(tempfile.mkdtemp(prefix="securews-user-"))
    try:
        if os.getuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                unavailable("setpriv (util-linux) is needed to run as a user")
            os.chown(home, NOBODY, NOBODY)
            prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}",
                      "--clear-groups", "--"]
        else:
            prefix = []
        user = Unprivileged(prefix, home)
        probe = user.run(sys.executable, "-c", "import securews, twisted")
        if probe.returncode != 0:
            unavailable("the test virtualenv is not readable by an unprivileged "
                        f"user: {probe.stderr.strip().splitlines()[-1:]}")
        yield user
    finally:
        shutil.rmtree(home, ignore_errors=True)
