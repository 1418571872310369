"""The built-in ``echo`` application: every message back to its sender."""

from __future__ import annotations

from securews.wire.protocol import SecureServerProtocol

__all__ = ["EchoProtocol"]


class EchoProtocol(SecureServerProtocol):
    """Sends each validated message back, text as text, binary as binary."""

    def onValidatedMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)
