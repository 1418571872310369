"""
The attack suite's hand-driven client: :class:`rawclient.RawClient`
aimed at a :class:`~attacks.harness.Target`, from a chosen source
address, sending the allowed Origin and the target's credentials.
"""

from __future__ import annotations

from typing import Any

from tests.support import rawclient
from tests.support.common import websocket_client_tls
from tests.support.rawclient import RawClient, Response

from .harness import ORIGIN, Target


class Wire(RawClient):
    """One connection to ``target`` from ``source`` (a loopback address)."""

    def __init__(self, target: Target, source: str, *,
                 rcvbuf: int | None = None,
                 proxy_header: bytes | None = None) -> None:
        """
        :param proxy_header: what a PROXY protocol target gets first instead
            of the balancer's header for ``source`` (an attacker playing
            the balancer).
        """
        super().__init__(target.port, websocket_client_tls(target.ca_cert),
                         use_tls=target.tls, source=target.source(source),
                         rcvbuf=rcvbuf)
        self.target = target
        header = target.proxy_header(source) if proxy_header is None else proxy_header
        if header and not self.closed:
            self.sock.sendall(header)

    def upgrade(self, path: str = "/ws", headers: dict[str, str] | None = None,
                origin: str | None = ORIGIN) -> Response:
        """TLS and the WebSocket opening handshake."""
        return self.request(upgrade_request(path, headers, origin))

    def open_session(self, sub: str, extensions: str | None = None,
                     forwarded_for: str | None = None) -> Response:
        """An authenticated WebSocket session (a bearer JWT for ``sub``)."""
        token = self.target.credentials.token(sub)
        headers = {"Authorization": f"Bearer {token}",
                   **self.target.forwarded(forwarded_for)}
        if extensions:
            headers["Sec-WebSocket-Extensions"] = extensions
        response = self.upgrade(headers=headers)
        assert response.status == 101, response
        return response


def upgrade_request(path: str = "/ws", headers: dict[str, str] | None = None,
                    origin: str | None = ORIGIN) -> bytes:
    """:func:`rawclient.upgrade_request`, from the allowed Origin by default."""
    return rawclient.upgrade_request(path, headers, origin)


class Wires:
    """Every hand-driven connection of a test, closed at its end."""

    def __init__(self) -> None:
        self.open: list[Wire] = []

    def __call__(self, target: Target, source: str, **kw: Any) -> Wire:
        wire = Wire(target, source, **kw)
        self.open.append(wire)
        return wire

    def close(self) -> None:
        for wire in self.open:
            wire.close()


