"""
The PROXY protocol (versions 1 and 2) in front of securews's TLS layer.

With ``server.proxy_protocol = true`` a TCP load balancer (HAProxy
``send-proxy-v2``, an AWS NLB, nginx ``stream`` with ``proxy_protocol
on``) tells securews who the client is in a header sent before anything
else, the TLS ClientHello included.  So this layer sits outside TLS::

    TCP -> ProxyProtocolWrapper -> TLSMemoryBIOProtocol -> SecureServerProtocol

and the rules are:

* The TCP peer must be in ``server.trusted_proxies``; any other peer is
  dropped as it connects, before a byte is read (whoever can open a TCP
  connection could otherwise claim any address).
* Every connection must start with a complete, valid header (read by
  :mod:`securews.rules.proxy_header`) within ``limits.handshake_timeout``:
  no header (a bare ClientHello), a malformed or oversized one, or none
  in time, and the connection is dropped, with no answer.  Header bytes
  are never logged.
* Only then is the wrapped protocol connected, and its ``getPeer()`` is
  the address the header carries: the client address securews uses for
  limits and logs.  A v2 ``LOCAL`` header (the proxy's own health check),
  a v1 ``UNKNOWN`` one, and families other than TCP over IPv4/IPv6 (v2
  ``UNSPEC``, ``UNIX``, ``DGRAM``) leave the proxy's own address in place.
* A ``unix:`` listener has no peer address to match against
  ``trusted_proxies``, so with this layer every connection on it is
  dropped: use a TCP listener.

Twisted's own ``HAProxyWrappingFactory`` is not used: it connects the wrapped protocol
before the header is read (so ``connectionMade`` would see the proxy's
address), drops a header split before its 8th or 16th byte, bounds a v2
header only at 64 KiB and has no timeout.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet import address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from securews.rules.peer import peer_is_trusted
from securews.rules.proxy_header import (
    BadProxyHeader,
    CarriedAddress,
    ProxyHeader,
    read_header,
)

__all__ = [
    "ProxyProtocolFactory",
    "ProxyProtocolWrapper",
    "proxied_by",
    "proxy_header",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _twisted_address(carried: CarriedAddress | None
                     ) -> address.IPv4Address | address.IPv6Address | None:
    """A carried address as the ``IAddress`` a transport's ``getPeer`` gives."""
    if carried is None:
        return None
    kind = address.IPv4Address if carried.version == 4 else address.IPv6Address
    return kind("TCP", carried.host, carried.port)


def _proxy_layer(transport: object) -> ProxyProtocolWrapper | None:
    for _ in range(8):
        if isinstance(transport, ProxyProtocolWrapper):
            return transport
        # The instance attribute only: ProtocolWrapper.__getattr__ would
        # hand back the next transport's attributes.
        transport = getattr(transport, "__dict__", {}).get("transport")
        if transport is None:
            return None
    return None


def proxied_by(transport: object) -> IAddress | None:
    """
    The TCP peer (a trusted proxy) that vouched for this connection's
    client address in a PROXY header, looking through wrapping transports
    (TLS) below ``transport``.

    :returns: ``None`` when the connection did not come through
        :class:`ProxyProtocolWrapper`.
    """
    layer = _proxy_layer(transport)
    return None if layer is None else layer.proxy_peer


def proxy_header(transport: object) -> ProxyHeader | None:
    """
    The PROXY header this connection began with, looking through wrapping
    transports (TLS) below ``transport``; ``None`` without the PROXY layer.
    """
    layer = _proxy_layer(transport)
    return None if layer is None else layer.header


class ProxyProtocolWrapper(ProtocolWrapper):
    """
    Reads the PROXY header, then connects the wrapped protocol with itself
    as transport, its ``getPeer()`` the carried client address.
    """

    header: ProxyHeader | None = None
    #: The real TCP peer, once a valid header has been read from it.
    proxy_peer: IAddress | None = None
    _buffer = b""
    _timer: IDelayedCall | None = None
    _dropped = False

    @property
    def _settings(self) -> ProxyProtocolFactory:
        return cast(ProxyProtocolFactory, self.factory)

    def makeConnection(self, transport: Any) -> None:
        # Unlike ProtocolWrapper, the wrapped protocol is connected only
        # once the header has been read.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        settings = self._settings
        settings.registerProtocol(self)  # type: ignore[no-untyped-call]
        if settings.on_accept is not None:
            settings.on_accept()
        if not peer_is_trusted(self._host(), settings.trusted):
            self._drop("untrusted_proxy")
            return
        self._timer = settings.clock.callLater(settings.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.header is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._dropped:
            return
        self._buffer += data
        try:
            header = read_header(self._buffer)
        except BadProxyHeader as e:
            self._refuse(f"proxy_header_{e.reason}")
            return
        if header is None:
            return
        self._cancel_timer()
        rest, self._buffer = self._buffer[header.size:], b""
        self.proxy_peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.header = header
        self.wrappedProtocol.makeConnection(cast(ITransport, self))
        if rest and not self.disconnecting:
            self.wrappedProtocol.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self._buffer = b""
        self._settings.unregisterProtocol(self)  # type: ignore[no-untyped-call]
        if self.header is not None:
            self.wrappedProtocol.connectionLost(reason)
            # As Twisted's ProtocolWrapper does: the two would keep each
            # other alive for the cyclic garbage collector.
            self.wrappedProtocol = None  # type: ignore[assignment]

    # -- transport for the wrapped protocol ---------------------------------

    def getPeer(self) -> IAddress:
        if self.header is not None:
            carried = _twisted_address(self.header.source)
            if carried is not None:
                return carried
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> IAddress:
        if self.header is not None:
            carried = _twisted_address(self.header.destination)
            if carried is not None:
                return carried
        return self.transport.getHost()  # type: ignore[union-attr]

    def abortConnection(self) -> None:
        self.disconnecting = 1
        self.transport.abortConnection()  # type: ignore[union-attr]

    # -- dropping --------------------------------------------------------------

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse("proxy_header_timeout")

    def _refuse(self, reason: str) -> None:
        self._drop(reason)

    def _host(self) -> str:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        return getattr(peer, "host", "") or "local"

    def _drop(self, reason: str) -> None:
        """Abort, and report it: the caller counts and logs in aggregate (one
        line per connection would let any client flood the log)."""
        self._dropped = True
        self._buffer = b""
        self._cancel_timer()
        if self._settings.on_drop is not None:
            self._settings.on_drop(reason, self._host())
        self.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class ProxyProtocolFactory(WrappingFactory[ProxyProtocolWrapper]):
    """
    Wraps a server factory (securews's TLS factory, or the securews factory
    itself when TLS is terminated upstream) so that every connection first
    presents a PROXY header from a trusted proxy.

    :param wrapped: the factory whose protocols see the client address.
    :param trusted: the proxies' networks (``ServerSettings.trusted_proxies``).
    :param clock: for the header timeout.
    :param timeout: seconds a trusted peer has to send a complete header.
    :param on_drop: called once for every connection this layer drops, with
        the reason (``untrusted_proxy``, ``proxy_header_missing``,
        ``proxy_header_malformed``, ``proxy_header_too_long`` or
        ``proxy_header_timeout``) and the TCP peer's address.  Nothing
        is logged here, per connection.
    :param on_accept: called for every TCP connection accepted, before
        anything is read.
    """

    protocol = ProxyProtocolWrapper
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, *, trusted: Sequence[IPNetwork],
                 clock: IReactorTime, timeout: float,
                 on_drop: Callable[[str, str], None] | None = None,
                 on_accept: Callable[[], None] | None = None) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be greater than 0, got {timeout!r}")
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.trusted = tuple(trusted)
        self.clock = clock
        self.timeout = timeout
        self.on_drop = on_drop
        self.on_accept = on_accept

    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> ProxyProtocolWrapper | None:
        wrapped: IProtocol | None = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        return ProxyProtocolWrapper(self, wrapped)
