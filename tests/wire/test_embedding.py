"""Embedding the factory in a plain Twisted program, as README.rst shows."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from securews.auth.anonymous import AnonymousAuthenticator
from securews.rules.config import ConfigError
from securews.wire.factory import SecureServerFactory
from securews.wire.protocol import SecureServerProtocol
from tests.support.common import CertFiles, websocket_client_tls
from tests.support.paths import EXAMPLES
from tests.support.processes import free_port

EXAMPLE = EXAMPLES / "embed.py"
TOKEN = "embed-example-token-5f1d"


@pytest.fixture
def example(certs: CertFiles, tmp_path: Path) -> Iterator[int]:
    """examples/embed.py running in its own process; yields its port."""
    port = free_port()
    out = tmp_path / "embed.out"
    with open(out, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), str(certs.cert), str(certs.key),
             str(port)], env={**os.environ, "SECUREWS_TOKEN": TOKEN},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(out.read_text()) from None
                time.sleep(0.1)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    assert TOKEN not in out.read_text()


def test_embedded_example_serves_authenticated_clients(
    example: int, certs: CertFiles
) -> None:
    """The README's embedding example authenticates, greets and echoes."""
    context = websocket_client_tls(certs.ca_cert)
    url = f"wss://127.0.0.1:{example}/greet"
    with connect(url, ssl=context,
                 additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert ws.recv(timeout=5) == "hello service"
        ws.send("shout")
        assert ws.recv(timeout=5) == "SHOUT"
    with pytest.raises(InvalidStatus) as info:
        connect(url, ssl=context,
                additional_headers={"Authorization": "Bearer wrong"})
    assert info.value.response.status_code == 401


class Upper(SecureServerProtocol):
    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload.upper(), isBinary)


@pytest_twisted.ensureDeferred
async def test_factory_from_keyword_settings_in_process(
    certs: CertFiles, serve: object
) -> None:
    """Keyword sections build the same checked config as a TOML file."""
    factory = SecureServerFactory(
        protocol=Upper, authenticator=AnonymousAuthenticator(),
        tls={"cert": str(certs.cert), "key": str(certs.key)},
        server={"path": "/up"}, origin={"allow_missing": True},
    )
    assert factory.config.server.path == "/up"
    server = await serve(factory)  # type: ignore[operator]

    def client() -> object:
        context = websocket_client_tls(certs.ca_cert)
        with connect(server.url(), ssl=context) as ws:
            ws.send("abc")
            return ws.recv(timeout=5)

    assert await deferToThread(client) == "ABC"


def test_keyword_settings_are_validated() -> None:
    """A typo in a keyword section is the same ConfigError as in a file."""
    with pytest.raises(ConfigError, match=r"server\.max_conections: unknown key"):
        SecureServerFactory(server={"max_conections": 1},
                            tls={"cert": "c", "key": "k"})
