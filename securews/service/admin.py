"""
The admin listener: ``[admin] listen``, plain HTTP, separate from the
public port.

Three read-only pages: ``GET /metrics`` (the Prometheus text format of
:class:`~securews.ops.metrics.Metrics`), ``GET /healthz`` (the process is
alive: always 200) and ``GET /readyz`` (200 while the public listener is
listening, the cluster's engine (if any) is up and the server is not
draining, else 503).  ``HEAD`` works too; any other method is 405 and
any other path 404, with fixed bodies that echo nothing from the
request.  With ``admin.token_file``, the endpoints that change state
(:mod:`securews.service.admin_actions`) exist too, behind its token.

The pages have no authentication, so the listener refuses to start on
anything but loopback (``127.0.0.0/8``, ``::1``) or a ``unix:`` socket
unless ``admin.allow_non_loopback`` is set.  Which interface an endpoint
binds is read from the endpoint Twisted parsed, not from the string, so
that a positional interface (``tcp:9100:0.0.0.0``) and escaped IPv6
colons count exactly as Twisted reads them; a ``tcp:`` endpoint without
an interface binds every interface, and a ``systemd:`` socket's cannot
be known: both are refused unless allowed.

A page in a browser could still read them after DNS rebinding (its own
host name made to resolve to the admin address), so requests whose
``Host`` does not name the listener are answered 421 (400 without a
``Host``): see :func:`host_allowed`.
"""

from __future__ import annotations

import ipaddress
import re
from io import BytesIO
from typing import Any

import attrs
from twisted.application.service import IService
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from securews._twisted import endpoint_interface
from securews.ops.metrics import CONTENT_TYPE, Metrics
from securews.rules.config import ConfigError
from securews.rules.settings import AdminSettings
from securews.service.listener import ListeningService
from securews.wire.listening import server_endpoint

__all__ = ["AdminResource", "Readiness", "admin_service", "host_allowed",
           "non_loopback"]

_log = Logger(namespace="securews.admin")
_TEXT = b"text/plain; charset=utf-8"
_METHODS = (b"GET", b"HEAD")
#: Seconds an admin HTTP connection may stay idle.
_TIMEOUT = 30


@attrs.define
class Readiness:
    """
    What ``/readyz`` reports.

    :ivar listening: the public listener is listening.
    :ivar draining: the server is stopping (sessions are being closed).
    :ivar cluster: the node's membership of a cluster (its ``ready``: the
        engine is up and this node's places are written), if any.
    """

    listening: bool = False
    draining: bool = False
    cluster: Any = None

    @property
    def engine_up(self) -> bool:
        return self.cluster is None or bool(self.cluster.ready)

    @property
    def ready(self) -> bool:
        """Listening, the engine up, and not draining."""
        return self.listening and not self.draining and self.engine_up


def _reply(request: Request, status: int, body: bytes,
           content_type: bytes = _TEXT) -> bytes:
    request.setResponseCode(status)
    headers = request.responseHeaders
    headers.removeHeader(b"server")
    headers.setRawHeaders(b"content-type", [content_type])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    headers.setRawHeaders(b"x-content-type-options", [b"nosniff"])
    if request.method == b"HEAD":
        headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
        return b""
    return body


def _not_found(request: Request) -> bytes:
    return _reply(request, 404, b"404 Not Found\n")


class _Page(Resource):
    """A fixed path answering GET and HEAD only."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def render(self, request: Request) -> bytes:
        if request.postpath:
            return _not_found(request)
        if request.method not in _METHODS:
            request.responseHeaders.setRawHeaders(b"allow", [b"GET, HEAD"])
            return _reply(request, 405, b"405 Method Not Allowed\n")
        status, body, content_type = self.answer()
        return _reply(request, status, body, content_type)

    def answer(self) -> tuple[int, bytes, bytes]:
        raise NotImplementedError


class _Metrics(_Page):
    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def answer(self) -> tuple[int, bytes, bytes]:
        return 200, self._metrics.exposition(), CONTENT_TYPE.encode("ascii")


class _Health(_Page):
    def answer(self) -> tuple[int, bytes, bytes]:
        return 200, b"ok\n", _TEXT


class _Ready(_Page):
    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def answer(self) -> tuple[int, bytes, bytes]:
        state = self._readiness
        if state.ready:
            return 200, b"ready\n", _TEXT
        if state.draining:
            return 503, b"draining\n", _TEXT
        if not state.listening:
            return 503, b"not listening\n", _TEXT
        return 503, b"engine unavailable\n", _TEXT


class AdminResource(Resource):
    """``/metrics``, ``/healthz`` and ``/readyz``; everything else is 404."""

    def __init__(self, metrics: Metrics, readiness: Readiness,
                 actions: dict[bytes, Resource] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.putChild(b"metrics", _Metrics(metrics))
        self.putChild(b"healthz", _Health())
        self.putChild(b"readyz", _Ready(readiness))
        for name, resource in (actions or {}).items():
            self.putChild(name, resource)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return _not_found(request)


class _NotFound(_Page):
    """Every path under an unknown one."""

    def render(self, request: Request) -> bytes:
        return _not_found(request)


#: RFC 9110 ``Host``: ``[v6]`` or a name or IPv4 address, then an optional
#: port of digits; nothing else.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::[0-9]{1,5})?")


class _Misdirected(_Page):
    """A ``Host`` that does not name this listener (DNS rebinding)."""

    def render(self, request: Request) -> bytes:
        body = _reply(request, 421, b"421 Misdirected Request\n")
        # Twisted knows no phrase for 421.
        request.setResponseCode(421, b"Misdirected Request")
        return body


class _NoHost(_Page):
    def render(self, request: Request) -> bytes:
        return _reply(request, 400, b"400 Bad Request\n")


def host_allowed(header: bytes | None, names: frozenset[str] | None) -> bool | None:
    """
    Whether a ``Host`` header names the admin listener.

    A browser page cannot read these pages from another origin, but after
    DNS rebinding (its own name resolving to 127.0.0.1) it is the same
    origin to the browser: the only trace is ``Host``, which then carries
    the page's name.  So only an IP literal (a rebinding page has a name,
    never an IP, in its URL), ``localhost`` and ``admin.hosts`` are
    answered.

    :param names: the allowed names; ``None`` allows every ``Host`` (a
        ``unix:`` socket, which no browser can reach).
    :returns: ``None`` for a missing or malformed header, else whether it
        is allowed.  The port is not looked at.
    """
    if header is None:
        return None
    try:
        text = header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    match = _HOST.fullmatch(text)
    if match is None:
        return None
    host = match.group("v6") or match.group("name")
    if names is None:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host in names
    return True


_TOO_LARGE = (b"HTTP/1.1 413 Content Too Large\r\n"
              b"Content-Type: application/json\r\nCache-Control: no-store\r\n"
              b"Content-Length: 29\r\nConnection: close\r\n\r\n"
              b'{"error": "body too large"}\r\n')
#: After a 413, how long and how much more of the body is read and thrown
#: away, so that the client reads the answer instead of a reset.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1 << 20


class _BoundedRequest(Request):
    """
    A request whose body is refused as it arrives once it passes the
    site's ``max_body``: twisted.web itself reads any body whole (to a
    temporary file past 100 kB) before a resource sees it, so without this
    anyone who can reach the listener could make it write gigabytes to
    disk, token or not.  An announced length over the bound is refused
    with the head; a chunked body when its sum passes it.
    """

    _refused = False
    _received = 0

    @property
    def _site(self) -> _QuietSite:
        site: _QuietSite = self.channel.site  # type: ignore[attr-defined]
        return site

    @property
    def _transport(self) -> Any:
        return self.channel.transport

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._site.max_body:
            self.content = BytesIO()
            self._refuse()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._refused:
            if self._received > _LINGER_BYTES:
                self._transport.abortConnection()
            return
        if self._received > self._site.max_body:
            self._refuse()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def _refuse(self) -> None:
        """413, then the write side is closed and what still comes is read
        and dropped for a moment (a close with unread bytes would be a
        reset, which can destroy the answer before the client reads it)."""
        self._refused = True
        self._received = 0
        transport = self._transport
        transport.write(_TOO_LARGE)
        transport.loseWriteConnection()
        self._site.reactor.callLater(_LINGER_SECONDS, transport.abortConnection)

    def process(self) -> None:
        if not self._refused:
            super().process()  # type: ignore[no-untyped-call]


class _QuietSite(Site):
    """No access log line per request, no factory start/stop lines; only
    ``Host`` values that name the listener are answered; bodies are bounded
    (``max_body``)."""

    noisy = False
    requestFactory = _BoundedRequest

    def __init__(self, resource: Resource, reactor: Any,
                 hosts: frozenset[str] | None = frozenset({"localhost"}),
                 max_body: int = 0) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            resource, reactor=reactor, timeout=_TIMEOUT,
            parsePOSTFormSubmission=False)
        self.displayTracebacks = False
        self._hosts = hosts
        self.reactor = reactor
        self.max_body = max_body

    def getResourceFor(self, request: Request) -> Resource:
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        allowed = host_allowed(hosts[0] if len(hosts) == 1 else None, self._hosts)
        if allowed is None:
            return _NoHost()
        if not allowed:
            return _Misdirected()
        resource: Resource = super().getResourceFor(request)  # type: ignore[no-untyped-call]
        return resource

    def log(self, request: HTTPRequest) -> None:
        pass

    def logPrefix(self) -> str:
        """Names the listener in Twisted's "... starting on PORT" line."""
        return "securews admin"


def non_loopback(endpoint: IStreamServerEndpoint) -> str | None:
    """
    Where ``endpoint`` listens, when that is not loopback only.

    :returns: ``None`` for a loopback address or a ``unix:`` socket, else
        a description of the interface for an error message.
    """
    if isinstance(endpoint, UNIXServerEndpoint):
        return None
    if not isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return "a socket whose interface cannot be known"
    interface = endpoint_interface(endpoint)
    if interface is None:
        return "an interface that cannot be known"
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        return f"interface {interface!r}" if interface else "every interface"
    if address.is_loopback:
        return None
    return f"interface {interface}"


def admin_service(settings: AdminSettings, metrics: Metrics, readiness: Readiness,
                  reactor: Any, actions: dict[bytes, Resource] | None = None
                  ) -> IService | None:
    """
    The admin listener for ``[admin]``, not yet started.

    :returns: ``None`` when ``admin.listen`` is empty.
    :raises ConfigError: (key ``admin.listen``) for an endpoint securews
        does not allow, or one that is not loopback without
        ``admin.allow_non_loopback``.
    """
    if not settings.listen:
        return None
    try:
        endpoint = server_endpoint(reactor, settings.listen)
    except ConfigError as e:
        raise ConfigError(e.problem, key="admin.listen") from None
    where = non_loopback(endpoint)
    if where is not None:
        if not settings.allow_non_loopback:
            raise ConfigError(
                f"{settings.listen!r} listens on {where}, not loopback: the admin "
                "pages have no authentication. Use interface=127.0.0.1 (or ::1, "
                "or a unix: socket), or set admin.allow_non_loopback = true",
                key="admin.listen",
            )
        _log.warn("admin listener {listen} is reachable beyond loopback "
                  "(admin.allow_non_loopback)", event="startup",
                  listen=settings.listen)
    hosts = (None if isinstance(endpoint, UNIXServerEndpoint)
             else frozenset({"localhost", *settings.hosts}))
    max_body = max((getattr(action, "max_body", 0)
                    for action in (actions or {}).values()), default=0)
    site = _QuietSite(AdminResource(metrics, readiness, actions), reactor, hosts,
                      max_body)
    service = ListeningService(endpoint, site, description=settings.listen,
                               key="admin.listen")
    return service
