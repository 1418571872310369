"""
What a channel broker is: the node's way to publish to a channel and to
receive a channel's messages, whoever published them (this node or
another), in order, with a bounded history to recover from.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from securews.rules.channels import History, Position

__all__ = ["IBroker", "Listener"]

#: Receives a channel's messages as ``(channel, position, data)``: in
#: offset order and each once; a position whose ``data`` is ``None`` says
#: that the messages up to it are lost (the broker could not recover
#: them): subscribers are told ``recovered: false``.
Listener = Callable[[str, Position, str | None], None]


class IBroker(Interface):
    """Channels for every node of a cluster (or one node, in memory)."""

    history_size = Attribute("Messages a channel's history keeps.")

    def publish(channel: str, data: str) -> Deferred[Position]:
        """
        Append ``data`` (JSON text) to ``channel``'s history and deliver it
        to every listener, on every node.

        :returns: its position.
        """

    def listen(channel: str, listener: Listener) -> Deferred[None]:
        """
        Deliver ``channel``'s messages to ``listener`` from now on; fires
        once the broker receives them (a subscription in place).
        """

    def unlisten(channel: str, listener: Listener) -> None:
        """Stop delivering ``channel`` to ``listener``."""

    def history(channel: str, after: int) -> Deferred[History]:
        """The channel's position and the kept messages after ``after``."""

    def ready() -> bool:
        """Whether deliveries are flowing (a cluster's subscription is
        alive and was probed lately)."""
