"""
Authenticators from settings: ``auth.methods`` in order, each built from
its own section, every key file read (and checked) once at startup.

A method that is listed but not configured is a startup error, never a
method that silently lets nobody (or everybody) in.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface.verify import verifyObject

from securews.auth.anonymous import AnonymousAuthenticator, DenyAllAuthenticator
from securews.auth.chain import ChainAuthenticator
from securews.auth.credentials import explicit_credentials
from securews.auth.interfaces import IAuthenticator, ITicketStore
from securews.auth.tickets import InMemoryTicketStore, TicketAuthenticator, TicketBook
from securews.rules.config import Config, ConfigError

if TYPE_CHECKING:
    from securews.auth.jwks import JWKSKeys

__all__ = ["Authentication", "build_authentication", "method_problems"]


@attrs.frozen
class Authentication:
    """
    :ivar handshake: authenticates WebSocket handshakes.
    :ivar ticket_store: where tickets live, when ``ticket`` is a method.
    :ivar ticket_issuer: authenticates ``POST issue_path`` (the methods
        other than ``ticket``), when ``ticket`` is a method.
    :ivar jwks: the JWT keys of ``auth.jwt.jwks_url``, to be refreshed
        while the server runs.
    """

    handshake: IAuthenticator
    ticket_store: ITicketStore | None = None
    ticket_issuer: IAuthenticator | None = None
    jwks: JWKSKeys | None = None


def _cookie(config: Config, reactor: Any) -> IAuthenticator:
    settings = config.auth.cookie
    if settings.mode == "introspect":
        from securews.auth.introspect import IntrospectingCookieAuthenticator

        return IntrospectingCookieAuthenticator(settings, reactor)
    from securews.auth.cookie import SignedCookieAuthenticator, load_cookie_secret

    return SignedCookieAuthenticator(settings, load_cookie_secret(settings), reactor)


def _jwt(config: Config, reactor: Any) -> IAuthenticator:
    from securews.auth.jwks import jwt_key_source
    from securews.auth.jwt import JWTAuthenticator

    return JWTAuthenticator(config.auth.jwt, jwt_key_source(config.auth.jwt, reactor),
                            reactor)


def _jwks(authenticators: list[IAuthenticator]) -> JWKSKeys | None:
    """The refreshed JWKS among ``authenticators``' keys, if any."""
    from securews.auth.jwks import JWKSKeys

    keys = [getattr(a, "key", None) for a in authenticators]
    return next((k for k in keys if isinstance(k, JWKSKeys)), None)


def build_authentication(config: Config, reactor: Any, *,
                         ticket_store: ITicketStore | None = None) -> Authentication:
    """
    Build what ``config.auth`` asks for.

    :param reactor: the reactor; also the clock for expiry checks.
    :param ticket_store: a shared store (e.g. for several processes);
        by default tickets live in this process's memory.
    :raises ConfigError: for a listed method whose key or secret file is
        missing or unusable, or whose JWKS URL gives no usable key now.
    """
    methods = config.auth.methods
    if not methods:
        return Authentication(DenyAllAuthenticator())
    builders = {"jwt": _jwt, "cookie": _cookie}
    others: list[IAuthenticator] = []
    for name in methods:
        if name == "anonymous":
            others.append(AnonymousAuthenticator())
        elif name != "ticket":
            others.append(builders[name](config, reactor))
    for authenticator in others:
        verifyObject(IAuthenticator, authenticator)
    jwks = _jwks(others) if "jwt" in methods else None
    explicit = functools.partial(
        explicit_credentials,
        ticket_param="ticket" if "ticket" in methods else None,
        token_param=config.auth.jwt.query_param if "jwt" in methods else None)
    if "ticket" not in methods:
        return Authentication(ChainAuthenticator(others, explicit=explicit),
                              jwks=jwks)
    if ticket_store is None:
        settings = config.auth.ticket
        ticket_store = InMemoryTicketStore(
            TicketBook(ttl=settings.ttl, max_outstanding=settings.max_outstanding,
                       bind_ip=settings.bind_ip), reactor)
    ordered = [TicketAuthenticator(ticket_store, clock=reactor) if name == "ticket"
               else others.pop(0) for name in methods if name]
    return Authentication(
        ChainAuthenticator(ordered, explicit=explicit), ticket_store,
        ChainAuthenticator([m for m in ordered if m.method != "ticket"],
                           explicit=explicit), jwks,
    )


def method_problems(config: Config, reactor: Any) -> list[ConfigError]:
    """
    Build each method of ``auth.methods`` on its own, as
    :func:`build_authentication` does, and return every problem rather
    than the first (``securews check``).
    """
    builders = {"jwt": _jwt, "cookie": _cookie}
    problems: list[ConfigError] = []
    for name in config.auth.methods:
        if name in builders:
            try:
                builders[name](config, reactor)
            except ConfigError as e:
                problems.extend(e.problems)
    return problems
