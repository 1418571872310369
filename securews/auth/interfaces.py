"""
What an authenticator is, and what it is given and returns.

There are real alternatives here (anonymous for development, tickets,
JWTs, cookies, client certificates, an embedder's own scheme), so the
contract is a ``zope.interface`` and everything an authenticator may use
arrives in one immutable :class:`HandshakeRequest`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, Interface

from securews.rules.head import RequestHead

__all__ = [
    "AmbiguousCredentials",
    "AuthenticationFailed",
    "HandshakeRequest",
    "IAuthenticator",
    "ITicketStore",
    "Principal",
    "TicketRejected",
    "decided",
]


class AuthenticationFailed(Exception):
    """
    A credential for this method was presented and is not valid.

    Raise it (or fail the Deferred with it) to deny the handshake at once
    with 401; the next method is not tried.  ``reason`` is a fixed
    category for logs and metrics (``"expired"``, ``"bad_signature"``,
    ...), never the credential or text derived from it.
    """

    def __init__(self, reason: str, method: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.method = method


def decided(decide: Callable[[], Principal | None]) -> Deferred[Principal | None]:
    """
    Run a synchronous authenticator core as :meth:`IAuthenticator.authenticate`
    expects: its principal (or ``None``) as a fired Deferred, an
    :class:`AuthenticationFailed` as a failed one.
    """
    try:
        return succeed(decide())
    except AuthenticationFailed:
        return fail()


class AmbiguousCredentials(AuthenticationFailed):
    """
    The request carries two credentials of the client's own choosing (see
    :mod:`securews.auth.credentials`): refused with 400, whichever of them
    would have worked.
    """

    def __init__(self) -> None:
        super().__init__("ambiguous_credentials")


class TicketRejected(AuthenticationFailed):
    """A ticket was unknown, reused, expired, or bound elsewhere."""


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


#: Asks again whether a principal's credential is still good: a Deferred
#: firing with the principal as it stands now (with a new ``expires_at``),
#: or failing (:class:`AuthenticationFailed`, or any error) when it is not.
Renewal = Callable[[], "Deferred[Principal]"]


@attrs.frozen
class Principal:
    """
    Who is on the other end of a session.

    :ivar id: a stable identifier (``sub`` claim, user id, certificate
        subject).
    :ivar method: which authenticator vouched for it (``"jwt"``, ...).
    :ivar claims: read-only extra facts the authenticator established.
    :ivar expires_at: when the credential stops being valid (Unix time,
        as the reactor's clock tells it), or ``None`` when it does not
        expire by itself.  An open session is closed (4401 "credential
        expired") at that moment, unless ``renew`` vouches for it again;
        an application can tell its client to fetch a fresh credential
        beforehand.
    :ivar renew: how to check the credential again when ``expires_at``
        comes (an introspected cookie is asked about again); ``None``
        when it cannot be renewed in place.  Never part of the repr.
    """

    id: str
    method: str
    claims: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    expires_at: float | None = None
    renew: Renewal | None = attrs.field(default=None, repr=False, eq=False)


@attrs.frozen
class HandshakeRequest:
    """
    Everything known about a handshake when it is authenticated.

    :ivar head: the parsed request head; it holds credentials, so never
        log it.
    :ivar client: the client's IP address: the TCP peer, or the address
        a trusted proxy reported.
    :ivar origin: the ``Origin`` header, already checked, or ``None``.
    :ivar tls_client_subject: the verified client-certificate subject as
        ``((name, value), ...)`` when mutual TLS is on, else ``None``.
    """

    head: RequestHead
    client: str
    origin: str | None
    tls_client_subject: tuple[tuple[str, str], ...] | None = None


class IAuthenticator(Interface):
    """Decides who a handshake belongs to, before the upgrade."""

    method = Attribute("Short name of the method, used in logs and principals.")

    def authenticate(request: HandshakeRequest) -> Deferred[Principal | None]:
        """
        Authenticate a handshake.

        :returns: a Deferred firing with the principal, or with ``None``
            when the request carries no credential for this method (the
            next method is tried).  It fails with
            :class:`AuthenticationFailed` when a credential is present but
            invalid (401).  Any other failure denies the handshake too
            (500, fail closed); its text is never shown nor logged.
            Each call returns a Deferred of its own (a Deferred has one
            consumer: securews chains onto it).
        """


class ITicketStore(Interface):
    """
    Where single-use tickets live between the POST that mints one and the
    handshake that spends it.

    Implementations store only a digest of each ticket, consume a ticket
    atomically (the first redemption wins), and bound their memory.
    """

    def issue(principal: Principal, origin: str | None,
              client: str) -> Deferred[str]:
        """
        Mint a ticket for ``principal``, bound to ``origin`` and ``client``.

        :returns: a Deferred firing with the ticket text (shown once, to
            the client), or failing with :class:`TicketRejected`
            (``"too_many"``) when the principal holds too many.
        """

    def redeem(ticket: str, origin: str | None, client: str) -> Deferred[Principal]:
        """
        Spend a ticket.

        :returns: a Deferred firing with the principal it was minted for,
            or failing with :class:`TicketRejected` (``"bad_ticket"``,
            ``"expired"``, ``"reused"``, ``"wrong_origin"``,
            ``"wrong_client"``).
        """
