"""
Revocations shared by every node: stored in the engine (new handshakes
with a revoked credential are refused on every node) and announced on a
control stream every node reads (open sessions of it are closed within a
second).

The stream, not pub/sub, carries the announcements: a node reads it from
the last entry it saw, so an announcement made while its connection was
down (or its subscription silently lost) still arrives.  Keys and
entries hold digests of principal ids and token ids, never the ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from securews.cluster.engine import Engine, _protocol, retry_policy
from securews.cluster.scripts import SCRIPTS
from securews.limits.interfaces import IRevocations
from securews.rules.cluster import digest

__all__ = ["ControlFeed", "RedisRevocations", "Revoked"]

_log = Logger(namespace="securews.cluster")

#: Announcements the control stream keeps (about; Redis trims lazily).
STREAM_LENGTH = 10_000
#: How long one blocking read of the stream waits for an entry (ms).
BLOCK_MS = 1000


@attrs.frozen
class Revoked:
    """
    An announcement: ``kind`` (``"principal"`` or ``"jti"``) whose digest
    is ``digest`` was revoked at ``at`` (Unix time, seconds).
    """

    kind: str
    digest: str
    at: float


@implementer(IRevocations)
class RedisRevocations:
    """:class:`IRevocations` in the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def revoke(self, principal: str | None = None, jti: str | None = None, *,
               until: float) -> Deferred[None]:
        if (principal is None) == (jti is None):
            return fail(ValueError("revoke a principal or a token (jti), one"))
        if not math.isfinite(until):
            return fail(ValueError("until must be a finite time"))
        engine = self.engine
        keys = engine.keys
        if principal is not None:
            kind, what = "principal", digest(principal)
            key = keys.revoked_principal(what)
        else:
            assert jti is not None
            kind, what = "jti", digest(jti)
            key = keys.revoked_token(what)
        d = engine.script(SCRIPTS["revoke"], [key, keys.control],
                          [engine.time_arg(), kind, what, int(until * 1000),
                           STREAM_LENGTH])
        return d.addCallback(lambda _: None)

    def revoked(self, principal: str, jti: str | None = None,
                issued_at: float | None = None) -> Deferred[bool]:
        engine = self.engine
        keys = engine.keys
        d = engine.script(
            SCRIPTS["revoked"],
            [keys.revoked_principal(digest(principal)),
             keys.revoked_token(digest(jti or ""))],
            [engine.time_arg(), "" if issued_at is None else int(issued_at * 1000),
             "1" if jti is not None else "0"])
        return d.addCallback(lambda answer: int(answer) == 1)


class ControlFeed:
    """
    Reads the control stream on a connection of its own (a blocking read
    would hold up every other call), from the last entry it saw, and
    hands each announcement to ``deliver``.

    :param endpoint: where the engine is (as the engine's connections).
    :param prepare: what each new connection must do first
        (authenticate, select the database).
    """

    def __init__(self, engine: Engine, endpoint: IStreamClientEndpoint,
                 prepare: Callable[[Any], Deferred[Any]],
                 deliver: Callable[[Revoked], None]) -> None:
        self.engine = engine
        self.deliver = deliver
        self._service = ClientService(
            endpoint, Factory.forProtocol(_protocol),
            retryPolicy=retry_policy(),
            clock=engine.reactor, prepareConnection=prepare)
        self.last_id = "$"
        self._running = False
        self._retry: IDelayedCall | None = None
        self._proto: Any = None

    def start(self) -> None:
        self._running = True
        self._service.startService()
        self._start_from_the_end()

    def stop(self) -> Deferred[None]:
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        d: Deferred[None] = self._service.stopService()
        return d

    def _command(self, *args: object, wait: float) -> Deferred[Any]:
        d: Deferred[Any] = self._service.whenConnected(failAfterFailures=1)

        def send(proto: Any) -> Deferred[Any]:
            self._proto = proto
            answer: Deferred[Any] = proto.execute_command(*args)
            return answer

        d.addCallback(send)
        d.addTimeout(wait, self.engine.reactor)
        return d

    def _start_from_the_end(self) -> None:
        """Only what is announced from now on concerns this node's sessions
        (it has none yet): start after the stream's last entry."""
        d = self._command("XREVRANGE", self.engine.keys.control, "+", "-",
                          "COUNT", 1, wait=self.engine.timeout)

        def found(entries: list[Any] | None) -> None:
            if entries:
                self.last_id = _text(entries[0][0])
            else:
                self.last_id = "0"
            self._read()

        d.addCallbacks(found, self._failed)

    def _read(self) -> None:
        if not self._running:
            return
        d = self._command("XREAD", "COUNT", 100, "BLOCK", BLOCK_MS, "STREAMS",
                          self.engine.keys.control, self.last_id,
                          wait=BLOCK_MS / 1000 + self.engine.timeout)
        d.addCallbacks(self._entries, self._failed)

    def _entries(self, reply: list[Any] | None) -> None:
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                self.last_id = _text(entry_id)
                announcement = _announcement(fields)
                if announcement is not None:
                    try:
                        self.deliver(announcement)
                    except Exception as e:
                        _log.error("a revocation could not be carried out ({error})",
                                   event="revocation", error=type(e).__name__)
        self._read()

    def _failed(self, failure: Failure) -> None:
        """The read stalled or the connection went: start again shortly
        from the last entry seen (nothing is missed)."""
        if not self._running:
            return
        proto = self._proto
        if proto is not None and proto.transport is not None:
            # A stalled read: this connection is given up for a fresh one.
            proto.transport.abortConnection()
        retry = self._start_from_the_end if self.last_id == "$" else self._read
        self._retry = self.engine.reactor.callLater(0.2, retry)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _announcement(fields: list[Any]) -> Revoked | None:
    values = {_text(fields[i]): _text(fields[i + 1])
              for i in range(0, len(fields) - 1, 2)}
    try:
        return Revoked(values["kind"], values["digest"], int(values["at"]) / 1000)
    except (KeyError, ValueError):
        return None
