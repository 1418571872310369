"""
``securews client URL``: lines typed (or piped) in go out as text
messages, messages received are printed, one per line; the end of input
closes the session with 1000.  Like ``python -m websockets``, so that a
user can talk to a server before writing any code.

Diagnostics go to standard error, messages alone to standard output (a
binary message is shown as its length and hex).  Exit status 0 after a
clean close, 1 when the connection, TLS or the handshake failed or the
session ended uncleanly, 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import stdio
from twisted.internet.error import ConnectError
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from securews.wire.client import ClientError, ClientHandlers, connect_client

__all__ = ["run_client"]

_SHOWN_BYTES = 64


#: Every control character but the tab: a server's text could otherwise
#: drive the terminal (clear it, write the clipboard, fake a line of ours).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """``text`` with its control characters written as escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"),
                        text)


def _shown(message: str | bytes) -> str:
    if isinstance(message, str):
        return _printable(message)
    more = "..." if len(message) > _SHOWN_BYTES else ""
    return f"<binary, {len(message)} bytes: {message[:_SHOWN_BYTES].hex()}{more}>"


class _Input(LineReceiver):
    """Standard input: each line (without its line break) is one message."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, session: _Session) -> None:
        self.session = session

    def lineReceived(self, line: bytes) -> None:
        self.session.send_line(line.rstrip(b"\r").decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.session.input_ended()


class _Session(ClientHandlers):
    def __init__(self, reactor: Any, url: str) -> None:
        self.reactor = reactor
        self.url = url
        self.status = 1
        self._send: Callable[[str | bytes], None] | None = None
        self._close: Callable[[], None] | None = None
        self._backlog: list[str] = []
        self._input_over = False

    def opened(self, send: Callable[[str | bytes], None],
               close: Callable[[], None]) -> None:
        self._send, self._close = send, close
        sys.stderr.write(f"connected to {self.url}\n")
        for line in self._backlog:
            send(line)
        self._backlog.clear()
        if self._input_over:
            close()

    def send_line(self, line: str) -> None:
        if self._send is None:
            self._backlog.append(line)
        else:
            self._send(line)

    def input_ended(self) -> None:
        self._input_over = True
        if self._close is not None:
            self._close()

    def received(self, message: str | bytes) -> None:
        sys.stdout.write(_shown(message) + "\n")
        sys.stdout.flush()

    def closed(self, opened: bool, clean: bool, code: int | None,
               reason: str) -> None:
        if opened:
            sys.stderr.write(
                f"closed: {code}{' ' + _printable(reason) if reason else ''}\n")
            self.status = 0 if clean else 1
        else:
            sys.stderr.write(
                f"securews: error: {self.url}: {_printable(reason) or 'failed'}\n")
            self.status = 1
        self.stop()

    def failed(self, failure: Failure) -> None:
        sys.stderr.write(f"securews: error: {self.url}: cannot connect: "
                         f"{_describe(failure.value)}\n")
        self.status = 1
        self.stop()

    def stop(self) -> None:
        if self.reactor.running:
            self.reactor.stop()


def _describe(error: object) -> str:
    if isinstance(error, ConnectError) and isinstance(error.osError, int):
        return os.strerror(error.osError).lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    text = str(error).strip().rstrip(".")
    return text or type(error).__name__


def run_client(args: argparse.Namespace) -> int:
    """``securews client``: see the module docstring."""
    from twisted.internet import reactor

    token = args.token or os.environ.get("SECUREWS_TOKEN") or None
    session = _Session(reactor, args.url)
    try:
        d = connect_client(reactor, args.url, session, cafile=args.cafile,
                           token=token, origin=args.origin)
    except ClientError as e:
        sys.stderr.write(f"securews: error: {e}\n")
        return 2
    d.addErrback(session.failed)
    stdio.StandardIO(_Input(session))
    reactor.run()
    return session.status
