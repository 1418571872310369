"""
The well-behaved client every end-to-end attack runs beside: it must be
served before, during and after the attack.  Shared by
test_session_e2e.py and the attack suite (tests/attacks/).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from websockets.sync.client import ClientConnection

__all__ = ["Bystander"]


class Bystander:
    """
    One message every ``period`` s on ``ws`` (the ``n``-th is
    ``message(n)``), each echoed, in a thread for as long as the attack
    runs; any failure is kept for :meth:`finish`.
    """

    def __init__(self, ws: ClientConnection, *, period: float,
                 message: Callable[[int], str]) -> None:
        self.ws = ws
        self.period = period
        self.message = message
        self.errors: list[str] = []
        self.started = self.completed = 0
        self.checked_during = 0
        self._lock = threading.Condition()
        self.echo()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def echo(self) -> None:
        with self._lock:
            self.started += 1
            n = self.started
        message = self.message(n)
        self.ws.send(message)
        got = self.ws.recv(timeout=5)
        if got != message:
            self.errors.append(f"sent {message!r}, got {got!r}")
        with self._lock:
            self.completed += 1
            self._lock.notify_all()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.echo()
            except Exception as e:
                self.errors.append(repr(e))
                with self._lock:
                    self._lock.notify_all()
                return

    def during(self, timeout: float = 5) -> None:
        """Wait for an echo that began after this call to come back."""
        with self._lock:
            wanted = self.started + 1
            ok = self._lock.wait_for(
                lambda: self.completed >= wanted or bool(self.errors), timeout)
        assert not self.errors, self.errors
        assert ok, f"no echo within {timeout} s during the attack"
        self.checked_during += 1

    def finish(self) -> None:
        """Stop, then check that every echo came back, one more included."""
        self.stop()
        assert not self._thread.is_alive()
        assert not self.errors, self.errors
        self.echo()
        assert not self.errors, self.errors

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
