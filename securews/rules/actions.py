"""
What admission (:mod:`securews.rules.admission`) is given, the actions it
asks its driver to carry out, and what the driver sends back for each.

Frozen values, no behaviour: the driver (:mod:`securews.policy`) matches
on their types.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any, Literal, Protocol

import attrs

from securews.rules.counters import Lease
from securews.rules.head import Refusal, RequestHead
from securews.rules.origin import AllowList
from securews.rules.peer import IPNetwork, Peer

__all__ = [
    "FINAL",
    "UNAVAILABLE",
    "Accept",
    "Action",
    "AdmissionRules",
    "Answer",
    "Arrival",
    "Authenticate",
    "Authenticated",
    "CheckRevoked",
    "Claim",
    "Claimed",
    "Counter",
    "Credential",
    "Denied",
    "DropUnread",
    "HeadRead",
    "Hold",
    "IssueTicket",
    "ReadBody",
    "ReadHead",
    "Refuse",
    "Release",
    "Settled",
    "Steps",
    "TakeToken",
    "TicketRefused",
    "Unavailable",
    "Upgrade",
    "Vouch",
    "Vouched",
]

Counter = Literal["pending", "client", "capacity", "principal"]

#: Every answer of a backend that could not answer (fail closed).
UNAVAILABLE = Refusal(503, "unavailable", (("Retry-After", "1"),))


class Credential(Protocol):
    """What admission reads of a principal (:class:`securews.auth.Principal`)."""

    @property
    def id(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def expires_at(self) -> float | None: ...
    @property
    def claims(self) -> Mapping[str, Any]: ...


class Unavailable(Exception):
    """Thrown into :func:`admission` when a limiter or store failed to
    answer: the engine is down or slow."""


# -- what admission is given ---------------------------------------------------


@attrs.frozen
class AdmissionRules:
    """
    The settings admission reads, once per server.

    :ivar tls: securews terminates TLS itself.
    :ivar trusted: the trusted proxies' networks.
    :ivar reads_forwarded_for: a trusted proxy in front terminated TLS
        (``Config.reads_forwarded_for``).
    :ivar ticket_path: where tickets are minted, or ``None`` when the
        ticket endpoint is off.
    :ivar shared_rate: a cluster-wide connect-rate limiter stands behind
        this node's own (step 6).
    :ivar dev_page: development mode's page, the whole response to
        ``GET /`` (:mod:`securews.rules.devpage`); ``None`` otherwise.
    """

    websocket_path: str
    ticket_path: str | None
    ticket_ttl: float
    tls: bool
    trusted: tuple[IPNetwork, ...]
    reads_forwarded_for: bool
    ipv6_prefix: int
    max_header_bytes: int
    max_headers: int
    origins: AllowList
    allow_missing_origin: bool
    shared_rate: bool = False
    dev_page: bytes | None = None


@attrs.frozen
class Arrival:
    """
    A connection as it is accepted.

    :ivar host: the transport's peer address (behind a PROXY header, the
        address it carried, else the proxy's).
    :ivar proxy_header: the connection began with a PROXY header, which
        the PROXY layer already checked came from a trusted proxy.
    :ivar carried: that header named a client.
    """

    host: str
    proxy_header: bool = False
    carried: bool = False


# -- actions: what the driver does, and what it sends back ---------------------


@attrs.frozen
class Settled:
    """
    Who the client is, as far as is known (sent back: nothing).

    :ivar attempt: the client is known for good and this connection is
        one of its attempts (for alerts).  Not so for a peer dropped at
        once, nor for a proxy, whose client the request head will name.
    """

    peer: Peer
    attempt: bool = True


@attrs.frozen
class TakeToken:
    """
    One connect token for ``key`` from this node's own limiter (a cluster's
    is taken with :class:`Claim`); sent back: a
    :class:`~securews.limits.interfaces.RateVerdict` (``admitted``,
    ``retry_after``).
    """

    key: str


@attrs.frozen
class Hold:
    """A place in ``counter`` for ``key``, held until the connection ends
    (sent back: whether it was given)."""

    counter: Counter
    key: str


@attrs.frozen
class Release:
    """Give back the place held in ``counter`` now (sent back: nothing)."""

    counter: Counter


@attrs.frozen
class ReadHead:
    """Wait for more of the request; sent back: every byte received so far."""


@attrs.frozen
class HeadRead:
    """The request head is complete (sent back: nothing)."""

    head: RequestHead


@attrs.frozen
class ReadBody:
    """
    As :class:`ReadHead`, while a request body is incomplete.

    :ivar end: where the body ends in the bytes received.
    """

    end: int


@attrs.frozen
class Upgrade:
    """
    Let the WebSocket implementation check the upgrade request (RFC 6455:
    key, version, extensions).  Sent back: the subprotocols the client
    offered; when the request is not a valid upgrade, the driver answers
    400 ``bad_handshake`` itself and nothing is sent back.
    """

    head: RequestHead


@attrs.frozen
class Authenticate:
    """
    Authenticate the request, by the handshake's authenticators or, for
    the ticket endpoint (``issuer``), by the ticket issuer's.  Sent back:
    :class:`Authenticated` or :class:`Denied`.
    """

    head: RequestHead
    client: str
    origin: str | None
    issuer: bool = False


@attrs.frozen
class Authenticated:
    """
    :ivar now: the time the principal was established, by the server's
        clock (for the expiry check).
    """

    principal: Credential
    now: float


@attrs.frozen
class Denied:
    """An authenticator said no; ``method`` is whose no it was, if known."""

    refusal: Refusal
    method: str | None = None


@attrs.frozen
class CheckRevoked:
    """Whether the principal's credential was revoked, without taking a
    place (the ticket endpoint); sent back: a bool."""

    principal: Credential


@attrs.frozen
class Claim:
    """
    One of the client's concurrent-connection places, taken with (``rate``,
    in a cluster) a token of its connect rate across the nodes, in one go.
    Sent back: :class:`Claimed`.
    """

    key: str
    rate: bool = False


@attrs.frozen
class Claimed:
    """
    :ivar lease: the place, held by the driver until the connection ends;
        ``None`` when the client holds ``connections_per_ip`` already.
    :ivar retry_after: when the connect rate refused: seconds until it
        would admit (no place is taken then).
    """

    lease: Lease | None
    retry_after: float | None = None


@attrs.frozen
class Vouch:
    """
    Whether the principal's credential was revoked and, if not, one of
    its session places, in one go.  Sent back: :class:`Vouched`.
    """

    principal: Credential


@attrs.frozen
class Vouched:
    """
    :ivar revoked: the credential was revoked (no place is taken then).
    :ivar lease: the place, or ``None`` when refused.
    """

    revoked: bool
    lease: Lease | None


@attrs.frozen
class IssueTicket:
    """Mint a ticket; sent back: its text, or :class:`TicketRefused`."""

    principal: Credential
    origin: str | None
    client: str


@attrs.frozen
class TicketRefused:
    """The ticket store declined: ``too_many`` tickets outstanding, or
    ``server_busy``."""

    reason: str


@attrs.frozen
class DropUnread:
    """End the connection without a word: nothing was read from it (not to
    be confused with a session's :class:`securews.rules.session.Drop`)."""

    reason: str


@attrs.frozen
class Refuse:
    """
    Answer with the refusal and close.

    :ivar summarised: a flood's answer: counted and logged in aggregate,
        not one line per request.
    :ivar method: the authentication method the refusal concerns.
    """

    refusal: Refusal
    summarised: bool = False
    method: str | None = None


@attrs.frozen
class Answer:
    """Send a complete response that is not a refusal (a ticket, a CORS
    preflight, the development page), then close.

    :ivar principal: whom it was for (a ticket's), for the log line.
    """

    response: bytes
    outcome: str
    status: int
    principal: Credential | None = None


@attrs.frozen
class Accept:
    """Complete the upgrade: 101 for ``principal``."""

    principal: Credential


Action = (Settled | TakeToken | Hold | Release | ReadHead | HeadRead | ReadBody
          | Claim | Upgrade | Authenticate | Vouch | CheckRevoked | IssueTicket
          | DropUnread
          | Refuse | Answer | Accept)
#: The actions after which the generator is over.
FINAL = (DropUnread, Refuse, Answer, Accept)
Steps = Generator[Action, Any, None]
