"""
Turning ``server.listen`` and a factory into something that listens.

Only plain stream endpoints are accepted (``tcp:``, ``tcp6:``, ``unix:``
and ``systemd:`` for socket activation).  TLS is never configured through
the endpoint string (``ssl:`` would bypass securews's context), and
Autobahn's ``autobahn:`` prefix, which tunnels raw TCP over WebSocket, is
refused outright.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint

from securews._twisted import SecureTLSFactory
from securews.rules.config import ConfigError
from securews.wire.factory import SecureServerFactory
from securews.wire.proxy import ProxyProtocolFactory
from securews.wire.tls import ServerTLSContext, server_context

__all__ = ["ALLOWED_ENDPOINTS", "listening_factory", "server_endpoint"]

ALLOWED_ENDPOINTS = ("tcp", "tcp6", "unix", "systemd")


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """
    Parse ``server.listen``.

    :raises ConfigError: for a prefix securews does not allow or a string
        Twisted cannot parse.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("ssl", "tls", "txtls"):
        raise ConfigError(
            f"{description!r}: TLS comes from the [tls] section; use a tcp: "
            "endpoint here", key="server.listen",
        )
    if kind not in ALLOWED_ENDPOINTS:
        raise ConfigError(
            f"{description!r}: endpoint type {kind!r} is not allowed (use one "
            f"of {', '.join(ALLOWED_ENDPOINTS)})", key="server.listen",
        )
    try:
        return serverFromString(reactor, description)  # type: ignore[no-any-return]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        detail = str(e) or type(e).__name__
        if kind == "systemd" and isinstance(e, AttributeError):
            detail = "unknown domain (use INET or INET6)"
        elif kind == "systemd" and isinstance(e, IndexError | KeyError):
            detail = ("no such inherited socket (is the service socket-activated, "
                      "with LISTEN_FDS and LISTEN_FDNAMES set?)")
        raise ConfigError(f"{description!r}: {detail}", key="server.listen") from None


def listening_factory(factory: SecureServerFactory,
                      context: ServerTLSContext | None = None) -> IProtocolFactory:
    """
    Wrap ``factory`` in securews's TLS layer, ready for ``endpoint.listen``;
    with ``server.proxy_protocol``, wrap that in the PROXY protocol layer,
    which reads the header before TLS starts (TCP -> PROXY -> TLS ->
    WebSocket; see :mod:`securews.wire.proxy`).

    :param context: a prepared TLS context; by default one is built from
        ``factory.config.tls``.
    :returns: the TLS-wrapped factory, or ``factory`` itself when TLS is
        disabled (allowed only behind ``server.trusted_proxies``, which the
        protocol then enforces per connection); either one inside a
        :class:`~securews.wire.proxy.ProxyProtocolFactory` when
        ``server.proxy_protocol`` is on.
    """
    config = factory.config
    wrapped: IProtocolFactory = factory
    if config.tls.enabled:
        if context is None:
            context = server_context(config.tls)
        wrapped = SecureTLSFactory(context, False, factory)
    if not config.server.proxy_protocol:
        return wrapped

    return ProxyProtocolFactory(
        wrapped, trusted=config.server.trusted_proxies, clock=factory.clock,
        timeout=config.limits.handshake_timeout,
        on_drop=factory.policy.dropped, on_accept=factory.policy.accepted,
    )
