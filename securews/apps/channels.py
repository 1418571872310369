"""
The built-in ``channels`` application (``server.app = "channels"``):
authorised publish/subscribe over JSON, across every node of a cluster,
with bounded history and recovery.  The protocol is
:mod:`securews.rules.channels`'s; README shows it in a table.

A request that is not the protocol's (an unknown ``op`` or field, a wrong
type, a channel name that is not valid) closes the session 1007; a
request that is refused (a channel the principal's claim does not grant,
too many subscriptions, the engine unavailable) gets an error reply, and
``channels.max_violations`` forbidden requests close it 1008.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from securews.channels.membership import Joined, Refused
from securews.rules.channels import (
    Invalid,
    Position,
    Publish,
    Subscribe,
    parse_request,
    reply_frame,
)
from securews.rules.codes import Close, CloseCode
from securews.wire.protocol import SecureServerProtocol

__all__ = ["ChannelsProtocol"]

_NOT_THE_PROTOCOL = Close(CloseCode.INVALID_PAYLOAD, "invalid message", "bad_request")
_BINARY = Close(CloseCode.UNSUPPORTED_DATA, "binary messages not accepted", "binary")
_VIOLATIONS = Close(CloseCode.POLICY_VIOLATION, "policy violation", "forbidden")


class ChannelsProtocol(SecureServerProtocol):
    """Subscribe, unsubscribe and publish requests; messages pushed."""

    _violations = 0

    def onSessionOpen(self) -> None:
        self.join_channels()

    def onValidatedMessage(self, payload: bytes, isBinary: bool,
                           document: Any = None) -> None:
        if isBinary:
            self.end_session(_BINARY)
            return
        request = parse_request(document)
        if isinstance(request, Invalid):
            self.end_session(_NOT_THE_PROTOCOL)
            return
        channels = self.join_channels()
        rid = request.id
        if isinstance(request, Subscribe):
            def joined(outcome: Joined) -> None:
                fields: dict[str, Any] = {
                    "ok": True, "channel": request.channel,
                    "epoch": outcome.position.epoch,
                    "offset": outcome.position.offset}
                if outcome.recovered is not None:
                    fields["recovered"] = outcome.recovered
                self._send_text(reply_frame(rid, **fields))

            d = channels.subscribe(request.channel, request.since, before=joined)
            d.addErrback(self._refused, rid)
        elif isinstance(request, Publish):
            published = channels.publish(request.channel, request.data)

            def done(position: Position) -> None:
                self._send_text(reply_frame(rid, ok=True, channel=request.channel,
                                            epoch=position.epoch,
                                            offset=position.offset))

            published.addCallbacks(done, self._refused, errbackArgs=(rid,))
        elif channels.unsubscribe(request.channel):
            self._send_text(reply_frame(rid, ok=True, channel=request.channel))
        else:
            self._send_text(reply_frame(rid, error="not_subscribed"))

    def _refused(self, failure: Failure, rid: object) -> None:
        reason = failure.value.reason if failure.check(Refused) else "unavailable"  # type: ignore[union-attr]
        self._send_text(reply_frame(rid, error=reason))
        if reason == "forbidden":
            self._violations += 1
            if self._violations >= self.policy.config.channels.max_violations:
                self.end_session(_VIOLATIONS)
