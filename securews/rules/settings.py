"""
The settings sections: one frozen attrs record per TOML table.

Each field carries its default and its validators (lower *and* upper
bounds: an extra zero must not switch a defence off).  Parsing TOML into
these records, and the checks that span sections, live in
:mod:`securews.rules.config`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from securews.rules.origin import AllowList, OriginError, parse_allow_list

__all__ = [
    "AUTH_METHODS",
    "JWT_ALGORITHMS",
    "AdminSettings",
    "AlertsSettings",
    "AuthSettings",
    "CookieSettings",
    "JWTSettings",
    "LimitsSettings",
    "LogSettings",
    "MessagesSettings",
    "OriginSettings",
    "RateLimitSettings",
    "ServerSettings",
    "TLSSettings",
    "TicketSettings",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _positive(_inst: object, a: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {value!r}")


def _non_negative(_inst: object, a: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"must not be negative, got {value!r}")


def _at_least(limit: float) -> Callable[[object, attrs.Attribute[Any], float], None]:
    def check(_inst: object, a: attrs.Attribute[Any], value: float) -> None:
        if value < limit:
            shown = int(limit) if float(limit).is_integer() else limit
            raise ValueError(f"must be at least {shown}, got {value!r}")

    return check


def _at_most(limit: float) -> Callable[[object, attrs.Attribute[Any], float], None]:
    """Upper bounds stop a typo (an extra zero) from disabling a defence."""

    def check(_inst: object, a: attrs.Attribute[Any], value: float) -> None:
        if value > limit:
            shown = int(limit) if float(limit).is_integer() else limit
            raise ValueError(f"must be at most {shown}, got {value!r}")

    return check


def _one_of(*choices: str) -> Callable[[object, attrs.Attribute[Any], str], None]:
    def check(_inst: object, a: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"must be one of {allowed}, got {value!r}")

    return check


def _non_empty(_inst: object, a: attrs.Attribute[Any], value: str) -> None:
    if not value.strip():
        raise ValueError("must not be empty")


def _proxy_network(entry: object) -> IPNetwork:
    if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network):
        network: IPNetwork = entry
        text = str(entry)
    else:
        text = str(entry)
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR network (with "
                             "no host bits set)") from None
    if network.prefixlen == 0:
        raise ValueError(f"{text!r} would trust every address")
    if isinstance(network, ipaddress.IPv6Network) and (
            network.network_address.ipv4_mapped is not None):
        raise ValueError(f"{text!r}: write IPv4-mapped networks as IPv4")
    return network


def _proxy_networks(values: Iterable[object]) -> tuple[IPNetwork, ...]:
    """``trusted_proxies``, parsed once: the networks, checked."""
    return tuple(_proxy_network(v) for v in values)


def _allow_list(value: object) -> AllowList:
    """``origin.allowed``, parsed once into the matcher the handshake uses."""
    if isinstance(value, AllowList):
        return value
    try:
        return parse_allow_list(value)  # type: ignore[arg-type]
    except OriginError as e:
        raise ValueError(str(e)) from None


def _absolute_path(_inst: object, a: attrs.Attribute[Any], value: str) -> None:
    if not value.startswith("/") or "?" in value or "#" in value:
        raise ValueError(f"must be an absolute path like '/ws', got {value!r}")


@attrs.frozen
class ServerSettings:
    """``[server]``: where to listen and what to serve."""

    listen: str = attrs.field(default="tcp:8443:interface=127.0.0.1",
                              validator=_non_empty)
    path: str = attrs.field(default="/ws", validator=_absolute_path)
    app: str = attrs.field(default="echo", validator=_non_empty)
    max_connections: int = attrs.field(
        default=10000, validator=[_positive, _at_most(1_000_000)])
    trusted_proxies: tuple[IPNetwork, ...] = attrs.field(
        default=(), converter=_proxy_networks)
    shutdown_grace: float = attrs.field(
        default=10.0, validator=[_non_negative, _at_most(3600)])
    proxy_protocol: bool = False
    trust_forwarded_for: bool = False


@attrs.frozen
class TLSSettings:
    """``[tls]``: the TLS context securews builds for itself."""

    enabled: bool = True
    cert: str = ""
    key: str = ""
    chain: str = ""
    min_version: str = attrs.field(default="1.2", validator=_one_of("1.2", "1.3"))
    ciphers: str = ""
    client_ca: str = ""


@attrs.frozen
class LogSettings:
    """``[log]``: where log events go and in which format."""

    format: str = attrs.field(default="text", validator=_one_of("text", "json"))
    file: str = attrs.field(default="-", validator=_non_empty)


@attrs.frozen
class LimitsSettings:
    """``[limits]``: bounds on what one client can make the server hold."""

    max_header_bytes: int = attrs.field(
        default=8192, validator=[_positive, _at_most(65536)])
    max_headers: int = attrs.field(default=64, validator=[_positive, _at_most(1024)])
    max_message_size: int = attrs.field(
        default=65536, validator=[_positive, _at_most(128 * 2**20)])
    max_frame_size: int = attrs.field(
        default=65536, validator=[_positive, _at_most(128 * 2**20)])
    compression: bool = False
    handshake_timeout: float = attrs.field(
        default=5.0, validator=[_positive, _at_most(300)])
    close_timeout: float = attrs.field(
        default=2.0, validator=[_positive, _at_most(300)])
    idle_timeout: float = attrs.field(
        default=300.0, validator=[_positive, _at_most(7 * 86400)])
    ping_interval: float = attrs.field(
        default=20.0, validator=[_positive, _at_most(3600)])
    ping_timeout: float = attrs.field(
        default=10.0, validator=[_positive, _at_most(3600)])
    max_write_buffer: int = attrs.field(
        default=1048576, validator=[_positive, _at_most(256 * 2**20)])
    max_fragments: int = attrs.field(
        default=64, validator=[_positive, _at_most(1_000_000)])
    max_lifetime: float = attrs.field(
        default=86400.0, validator=[_non_negative, _at_most(365 * 86400)])
    send_buffer: int = attrs.field(
        default=131072, validator=[_at_least(4096), _at_most(16 * 2**20)])


@attrs.frozen
class OriginSettings:
    """``[origin]``: the Cross-Site WebSocket Hijacking allow-list."""

    allowed: AllowList = attrs.field(default=AllowList(()), converter=_allow_list)
    allow_missing: bool = False


_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUERY_NAME = re.compile(r"[A-Za-z0-9_.~-]+")

#: Authentication methods, in the words of ``auth.methods``.
AUTH_METHODS = ("ticket", "jwt", "cookie", "anonymous")

#: JWT algorithms securews accepts in ``auth.jwt.algorithms``; ``none`` is
#: not among them and never will be.
JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
                  "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def _matches(pattern: re.Pattern[str], what: str) -> Callable[
        [object, attrs.Attribute[Any], str], None]:
    def check(_inst: object, a: attrs.Attribute[Any], value: str) -> None:
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {what}")

    return check


@attrs.frozen
class TicketSettings:
    """``[auth.ticket]``: single-use tickets minted by ``POST issue_path``."""

    ttl: float = attrs.field(default=30.0, validator=[_positive, _at_most(3600)])
    issue_path: str = attrs.field(default="/tickets", validator=_absolute_path)
    bind_ip: bool = True
    max_outstanding: int = attrs.field(default=5, validator=[_positive, _at_most(1000)])


@attrs.frozen
class JWTSettings:
    """``[auth.jwt]``: bearer JWTs in a query parameter or header."""

    algorithms: tuple[str, ...] = attrs.field(default=("RS256",))
    key_file: str = ""
    issuer: str = ""
    audience: str = ""
    leeway: float = attrs.field(default=30.0, validator=[_non_negative, _at_most(300)])
    query_param: str = attrs.field(
        default="token", validator=_matches(_QUERY_NAME, "query parameter name"))
    jwks_url: str = attrs.field(default="")
    jwks_ca: str = ""
    jwks_timeout: float = attrs.field(default=5.0, validator=[_positive, _at_most(60)])
    jwks_refresh: float = attrs.field(default=300.0, validator=_at_most(86400))
    jwks_cooldown: float = attrs.field(default=10.0, validator=_at_most(60))

    @jwks_url.validator
    def _check_jwks_url(self, a: attrs.Attribute[Any], value: str) -> None:
        if value and not value.startswith("https://"):
            raise ValueError("must be an https:// URL (keys fetched in plaintext "
                             "could be anyone's)")

    @jwks_refresh.validator
    def _check_refresh(self, a: attrs.Attribute[Any], value: float) -> None:
        if not value >= 60:  # NaN too
            raise ValueError(f"must be at least 60, got {value!r}")

    @jwks_cooldown.validator
    def _check_cooldown(self, a: attrs.Attribute[Any], value: float) -> None:
        if not value >= 1:  # NaN too
            raise ValueError(f"must be at least 1 (it bounds fetches an unknown "
                             f"kid can cause), got {value!r}")

    @algorithms.validator
    def _check_algorithms(self, a: attrs.Attribute[Any],
                          value: tuple[str, ...]) -> None:
        if not value:
            raise ValueError("must list at least one algorithm")
        for name in value:
            if name.lower() == "none":
                raise ValueError("'none' (unsigned tokens) is never accepted")
            if name not in JWT_ALGORITHMS:
                raise ValueError(
                    f"{name!r} is not one of {', '.join(JWT_ALGORITHMS)}")


@attrs.frozen
class CookieSettings:
    """``[auth.cookie]``: the web application's session cookie."""

    name: str = attrs.field(default="session",
                            validator=_matches(_COOKIE_NAME, "cookie name"))
    mode: str = attrs.field(default="signed", validator=_one_of("signed", "introspect"))
    secret_file: str = ""
    max_age: float = attrs.field(
        default=3600.0, validator=[_positive, _at_most(30 * 86400)])
    introspect_url: str = attrs.field(default="")
    introspect_ca: str = ""
    introspect_cache: float = attrs.field(
        default=30.0, validator=[_non_negative, _at_most(3600)])
    introspect_timeout: float = attrs.field(
        default=2.0, validator=[_positive, _at_most(60)])

    @introspect_url.validator
    def _check_url(self, a: attrs.Attribute[Any], value: str) -> None:
        if value and not value.startswith("https://"):
            raise ValueError("must be an https:// URL (cookies never travel "
                             "in plaintext)")


@attrs.frozen
class AuthSettings:
    """``[auth]``: which methods authenticate a handshake, in order."""

    methods: tuple[str, ...] = attrs.field(default=("ticket", "jwt", "cookie"))
    ticket: TicketSettings = TicketSettings()
    jwt: JWTSettings = JWTSettings()
    cookie: CookieSettings = CookieSettings()

    @methods.validator
    def _check_methods(self, a: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        for name in value:
            if name not in AUTH_METHODS:
                raise ValueError(f"{name!r} is not one of {', '.join(AUTH_METHODS)}")
        if len(set(value)) != len(value):
            raise ValueError("lists a method twice")


@attrs.frozen
class RateLimitSettings:
    """``[ratelimit]``: per-client connection limits."""

    connections_per_ip: int = attrs.field(
        default=20, validator=[_positive, _at_most(100_000)])
    sessions_per_principal: int = attrs.field(
        default=20, validator=[_positive, _at_most(1_000_000)])
    connect_rate: float = attrs.field(
        default=5.0, validator=[_positive, _at_most(100_000)])
    connect_burst: int = attrs.field(
        default=20, validator=[_positive, _at_most(1_000_000)])
    ipv6_prefix: int = attrs.field(default=64)
    messages_per_second: float = attrs.field(
        default=50.0, validator=[_positive, _at_most(1_000_000)])
    message_burst: int = attrs.field(
        default=100, validator=[_positive, _at_most(10_000_000)])
    bytes_per_second: float = attrs.field(
        default=1048576.0, validator=[_positive, _at_most(2**34)])
    bytes_burst: int = attrs.field(
        default=2097152, validator=[_positive, _at_most(2**34)])

    @ipv6_prefix.validator
    def _check_prefix(self, a: attrs.Attribute[Any], value: int) -> None:
        if not 32 <= value <= 128:
            raise ValueError(f"must be between 32 and 128, got {value}")


@attrs.frozen
class MessagesSettings:
    """``[messages]``: what a valid client message is."""

    allow_binary: bool = True
    format: str = attrs.field(default="any", validator=_one_of("any", "json"))
    max_json_depth: int = attrs.field(default=32, validator=[_positive, _at_most(1000)])
    schema: str = ""


_HOST_NAME = re.compile(r"(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)"
                        r"(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


@attrs.frozen
class AdminSettings:
    """``[admin]``: the plain-HTTP metrics and health listener."""

    listen: str = ""
    allow_non_loopback: bool = False
    hosts: tuple[str, ...] = attrs.field(default=())
    #: The bearer token of the endpoints that change state (``POST
    #: /revoke``); without it they do not exist.
    token_file: str = ""

    @hosts.validator
    def _check_hosts(self, a: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        for name in value:
            if not _HOST_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a lower-case host name (no port, "
                                 "no scheme)")


@attrs.frozen
class AlertsSettings:
    """``[alerts]``: traffic-spike warnings, counted per window, whole server."""

    window: float = attrs.field(default=10.0, validator=[_positive, _at_most(3600)])
    connect_attempts: int = attrs.field(default=500, validator=_positive)
    auth_failures: int = attrs.field(default=50, validator=_positive)
    denials: int = attrs.field(default=200, validator=_positive)
