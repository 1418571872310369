"""
A real headless Chromium, driven over the DevTools protocol with the
``websockets`` test client (no WebDriver, no Selenium): Debian's
``chromium`` package is all it needs, and ``.ci/run`` installs it.

Without a browser, :func:`chromium` skips on a developer machine and
fails under CI (:func:`tests.support.common.unavailable`).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.sync.client import ClientConnection, connect

from tests.support.common import unavailable

__all__ = ["Browser", "DevToolsError", "chromium", "spki_hash"]

_NAMES = ("chromium", "chromium-browser", "google-chrome")
_START_DEADLINE = 30.0


def spki_hash(cert_pem: bytes) -> str:
    """What ``--ignore-certificate-errors-spki-list`` takes: the base64
    SHA-256 of the certificate's public key, which Chromium then trusts
    (as a user who accepted the certificate would)."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


class DevToolsError(AssertionError):
    """A DevTools command answered with an error."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {error}")
        self.error = error

    @property
    def navigating(self) -> bool:
        """The tab has no page to run JavaScript in yet (it is between two
        documents, e.g. while the first one loads): worth asking again."""
        return "execution context" in str(self.error.get("message", ""))


class Browser:
    """One Chromium process and a DevTools connection to it."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def command(self, method: str, params: dict[str, Any] | None = None, *,
                session: str | None = None, timeout: float = 20) -> dict[str, Any]:
        """Send one command and return its result (events are skipped)."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method,
                                   "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer to {method} within {timeout} s")
            reply = json.loads(self._socket.recv(timeout=left))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise DevToolsError(method, reply["error"])
                result: dict[str, Any] = reply.get("result", {})
                return result

    def open(self, url: str) -> str:
        """A new tab on ``url``; returns its DevTools session."""
        target = self.command("Target.createTarget", {"url": url})["targetId"]
        session: str = self.command("Target.attachToTarget", {
            "targetId": target, "flatten": True})["sessionId"]
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of a JavaScript expression in the tab."""
        result = self.command("Runtime.evaluate", {
            "expression": expression, "returnByValue": True}, session=session)
        return result.get("result", {}).get("value")

    def wait_for(self, session: str, expression: str, expected: object,
                 timeout: float = 20) -> None:
        """Until ``expression`` is ``expected`` (polled, also while the tab
        is between documents; the deadline only bounds a failure)."""
        deadline = time.monotonic() + timeout
        while (value := self._poll(session, expression)) != expected:
            if time.monotonic() > deadline:
                text = self.evaluate(session, "document.body && "
                                              "document.body.innerText")
                raise AssertionError(f"{expression} is {value!r}, not {expected!r};"
                                     f" the page shows: {text!r}")
            time.sleep(0.1)

    def _poll(self, session: str, expression: str) -> Any:
        try:
            return self.evaluate(session, expression)
        except DevToolsError as e:
            if not e.navigating:
                raise
            return e


def _executable() -> str:
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    unavailable("no Chromium: install Debian's chromium package (.ci/run does)")


@contextmanager
def chromium(profile: Path, *flags: str) -> Iterator[Browser]:
    """A headless Chromium with a fresh profile in ``profile``."""
    executable = _executable()
    profile.mkdir(parents=True, exist_ok=True)
    args = [executable, "--headless", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-sync",
            f"--user-data-dir={profile}", "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1", *flags, "about:blank"]
    if os.getuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses root
    log = profile / "chromium.log"
    with open(log, "w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + _START_DEADLINE
        while not (active.exists() and len(active.read_text().split()) == 2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Chromium did not start:\n{log.read_text()}")
            time.sleep(0.05)
        port, path = active.read_text().split()
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=2**24) as socket:
            yield Browser(socket)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
