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
* Every connection must start with a complete, valid header within
  ``limits.handshake_timeout``: no header (a bare ClientHello), a
  malformed one, one longer than :data:`MAX_V1_HEADER` /
  :data:`MAX_V2_HEADER` bytes, or none in time, and the connection is
  dropped, with no answer.  Header bytes are never logged.
* Only then is the wrapped protocol connected, and its ``getPeer()`` is
  the address the header carries: the client address securews uses for
  limits and logs.  A v2 ``LOCAL`` header (the proxy's own health check),
  a v1 ``UNKNOWN`` one, and families other than TCP over IPv4/IPv6 (v2
  ``UNSPEC``, ``UNIX``, ``DGRAM``) leave the proxy's own address in place.
* A ``unix:`` listener has no peer address to match against
  ``trusted_proxies``, so with this layer every connection on it is
  dropped: use a TCP listener.

Decoding reuses Twisted's parsers (``twisted.protocols.haproxy``); framing,
bounds and checks of what they return are here.  Twisted's own
``HAProxyWrappingFactory`` is not used: it connects the wrapped protocol
before the header is read (so ``connectionMade`` would see the proxy's
address), drops a header split before its 8th or 16th byte, bounds a v2
header only at 64 KiB and has no timeout.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

import attrs
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
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from securews.rules.peer import peer_is_trusted

__all__ = [
    "MAX_V1_HEADER",
    "MAX_V2_HEADER",
    "BadProxyHeader",
    "ProxyHeader",
    "ProxyProtocolFactory",
    "ProxyProtocolWrapper",
    "proxied_by",
    "proxy_header",
    "read_header",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CarriedAddress = address.IPv4Address | address.IPv6Address

#: The longest v1 header, CRLF included (the specification's bound).
MAX_V1_HEADER = 107
#: The longest v2 header securews reads, TLVs included: the 16-byte fixed
#: part, 216 bytes of UNIX addresses at most, and room for TLVs (ALPN,
#: authority, unique ID, a cloud provider's endpoint ID).
MAX_V2_HEADER = 1024

_V1_SIGNATURE = b"PROXY "
_V2_SIGNATURE = V2Parser.PREFIX
_CRLF = b"\r\n"


class BadProxyHeader(ValueError):
    """
    The connection does not start with an acceptable PROXY header.

    :ivar reason: a fixed category for logs: ``missing`` (no PROXY
        signature), ``too_long`` or ``malformed``.  The header itself is
        never part of the exception.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class ProxyHeader:
    """
    A complete, valid PROXY header.

    :ivar version: 1 or 2.
    :ivar source: the client's address, or ``None`` to keep the proxy's own
        (v2 ``LOCAL``, v1 ``UNKNOWN``, families other than TCP/IP).
    :ivar destination: the address the client connected to, or ``None``.
    :ivar size: how many bytes the header took; what follows belongs to
        the wrapped protocol.
    """

    version: int
    source: CarriedAddress | None
    destination: CarriedAddress | None
    size: int


def _carried(value: IAddress | None, exact: bool) -> CarriedAddress | None:
    """
    A TCP/IP address from Twisted's parsers, checked and in canonical form
    (compressed IPv6; IPv4-mapped IPv6 as IPv4, as :mod:`client_address`
    compares them).

    :param exact: the family must match the address text (v1, whose text
        Twisted does not check).
    :raises BadProxyHeader: for an address that does not parse or does not
        match its family.
    """
    if not isinstance(value, address.IPv4Address | address.IPv6Address):
        return None
    if value.type != "TCP":
        return None
    try:
        ip = ipaddress.ip_address(value.host)
    except ValueError:
        raise BadProxyHeader("malformed") from None
    want = 4 if isinstance(value, address.IPv4Address) else 6
    if exact and (ip.version != want or getattr(ip, "scope_id", None)):
        raise BadProxyHeader("malformed")
    if not 0 <= value.port <= 65535:
        raise BadProxyHeader("malformed")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address.IPv4Address("TCP", str(ip.ipv4_mapped), value.port)
    if isinstance(ip, ipaddress.IPv4Address):
        return address.IPv4Address("TCP", str(ip), value.port)
    return address.IPv6Address("TCP", str(ip), value.port)


def _read_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(_CRLF, 0, MAX_V1_HEADER)
    if end < 0:
        if len(data) >= MAX_V1_HEADER:
            raise BadProxyHeader("too_long")
        return None
    line = data[:end]
    if not all(0x20 <= c < 0x7F for c in line):
        raise BadProxyHeader("malformed")
    fields = line.split(b" ")
    if fields[1] == V1Parser.UNKNOWN_PROTO:
        # "PROXY UNKNOWN" and anything after it up to CRLF, as the
        # specification allows (Twisted's parser wants more fields).
        return ProxyHeader(1, None, None, end + 2)
    if len(fields) != 6 or not all(f.isdigit() and len(f) <= 5 for f in fields[4:]):
        raise BadProxyHeader("malformed")
    try:
        info = V1Parser.parse(line)
    except (InvalidProxyHeader, ValueError):
        raise BadProxyHeader("malformed") from None
    return ProxyHeader(1, _carried(info.source, exact=True),
                       _carried(info.destination, exact=True), end + 2)


def _read_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    if data[12] & 0xF0 != 0x20:
        raise BadProxyHeader("malformed")
    size = 16 + int(struct.unpack("!H", data[14:16])[0])
    if size > MAX_V2_HEADER:
        raise BadProxyHeader("too_long")
    if len(data) < size:
        return None
    try:
        info = V2Parser.parse(data[:size])
    except (InvalidProxyHeader, ValueError, KeyError, IndexError, struct.error):
        raise BadProxyHeader("malformed") from None
    return ProxyHeader(2, _carried(info.source, exact=False),
                       _carried(info.destination, exact=False), size)


def read_header(data: bytes) -> ProxyHeader | None:
    """
    Read a PROXY header (v1 or v2) from the start of a connection.

    Pure: call it again with more bytes appended until it decides.

    :param data: every byte received so far.
    :returns: the header once complete, or ``None`` while ``data`` is a
        valid beginning of one (never beyond :data:`MAX_V1_HEADER` or
        :data:`MAX_V2_HEADER` bytes).
    :raises BadProxyHeader: as soon as ``data`` cannot begin an acceptable
        header.
    """
    for signature, read in ((_V1_SIGNATURE, _read_v1), (_V2_SIGNATURE, _read_v2)):
        common = min(len(data), len(signature))
        if common and data[:common] == signature[:common]:
            return read(data) if len(data) >= len(signature) else None
    if not data:
        return None
    raise BadProxyHeader("missing")


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

    # -- transport for the wrapped protocol ---------------------------------

    def getPeer(self) -> IAddress:
        if self.header is not None and self.header.source is not None:
            return self.header.source
        return self.transport.getPeer()  # type: ignore[union-attr]

    def getHost(self) -> IAddress:
        if self.header is not None and self.header.destination is not None:
            return self.header.destination
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
