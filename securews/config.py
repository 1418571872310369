"""
The one immutable settings object, and the only code that reads TOML.

Settings are parsed once, up front, into frozen attrs records.  Every
later component receives the record it needs and never looks at a file
or an environment variable itself, so a configuration that parses is a
configuration the server will run with, and a bad one is refused before
anything listens.

Errors are :class:`ConfigError`: one line naming the file, the key and
what is wrong, never a traceback.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

__all__ = [
    "Config",
    "ConfigError",
    "LimitsSettings",
    "LogSettings",
    "OriginSettings",
    "ServerSettings",
    "TLSSettings",
    "from_mapping",
    "load",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """
    A configuration problem an operator must fix.

    ``str()`` of it is the complete, one-line message for the operator.
    """

    def __init__(self, message: str, *, source: str = "", key: str = "") -> None:
        self.source = source
        self.key = key
        self.problem = message
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, source: str) -> ConfigError:
        """This error, attributed to ``source`` unless it names one already."""
        return self if self.source else ConfigError(self.problem, source=source,
                                                    key=self.key)


def _positive(_inst: object, a: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {value!r}")


def _non_negative(_inst: object, a: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"must not be negative, got {value!r}")


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


def _networks(values: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v) for v in values)


@attrs.frozen
class ServerSettings:
    """``[server]``: where to listen and what to serve."""

    listen: str = attrs.field(default="tcp:8443:interface=127.0.0.1",
                              validator=_non_empty)
    path: str = attrs.field(default="/ws")
    app: str = attrs.field(default="echo", validator=_non_empty)
    max_connections: int = attrs.field(
        default=10000, validator=[_positive, _at_most(1_000_000)])
    trusted_proxies: tuple[str, ...] = attrs.field(default=())
    shutdown_grace: float = attrs.field(
        default=10.0, validator=[_non_negative, _at_most(3600)])

    @path.validator
    def _check_path(self, a: attrs.Attribute[Any], value: str) -> None:
        if not value.startswith("/") or "?" in value or "#" in value:
            raise ValueError(f"must be an absolute path like '/ws', got {value!r}")

    @trusted_proxies.validator
    def _check_proxies(self, a: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        for entry in value:
            try:
                network = ipaddress.ip_network(entry, strict=True)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or CIDR network (with "
                    "no host bits set)"
                ) from None
            if network.prefixlen == 0:
                raise ValueError(f"{entry!r} would trust every address")

    @property
    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        """The parsed ``trusted_proxies``."""
        return _networks(self.trusted_proxies)


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
    handshake_timeout: float = attrs.field(
        default=5.0, validator=[_positive, _at_most(300)])
    close_timeout: float = attrs.field(
        default=2.0, validator=[_positive, _at_most(300)])


@attrs.frozen
class OriginSettings:
    """``[origin]``: the Cross-Site WebSocket Hijacking allow-list."""

    allowed: tuple[str, ...] = ()
    allow_missing: bool = False


@attrs.frozen
class Config:
    """
    Everything securews needs to run, parsed and checked.

    :ivar dev: set only by ``--dev``; relaxes anonymous access and a
        missing Origin, nothing else.
    """

    server: ServerSettings = ServerSettings()
    tls: TLSSettings = TLSSettings()
    log: LogSettings = LogSettings()
    limits: LimitsSettings = LimitsSettings()
    origin: OriginSettings = OriginSettings()
    dev: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.tls.enabled and not self.server.trusted_proxies:
            raise ConfigError(
                "plaintext (enabled = false) is only allowed behind a TLS-"
                "terminating proxy listed in server.trusted_proxies",
                key="tls.enabled",
            )
        if self.tls.enabled and not (self.tls.cert and self.tls.key):
            raise ConfigError(
                "tls.cert and tls.key are required when TLS is enabled",
                key="tls.cert",
            )
        if self.limits.max_frame_size > self.limits.max_message_size:
            raise ConfigError(
                "must not exceed limits.max_message_size",
                key="limits.max_frame_size",
            )
        from securews.origin import OriginError, parse_allow_list

        try:
            parse_allow_list(self.origin.allowed)
        except OriginError as e:
            raise ConfigError(str(e), key="origin.allowed") from None


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "tls": TLSSettings,
    "log": LogSettings,
    "limits": LimitsSettings,
    "origin": OriginSettings,
}

_T = TypeVar("_T")


def _coerce(value: object, annotation: str, key: str, source: str) -> object:
    """Check one TOML value against a field's declared type."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(
            f"expected {expected}, got {type(value).__name__} {value!r}",
            source=source, key=key,
        )

    if annotation == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        return float(value)
    if annotation == "str":
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if annotation == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings")
        return tuple(value)
    raise AssertionError(f"unhandled setting type {annotation}")


def _section(cls: type[_T], table: object, name: str, source: str,
             overrides: Mapping[str, object]) -> _T:
    if not isinstance(table, dict):
        raise ConfigError("must be a table", source=source, key=f"[{name}]")
    fields = {f.name: f for f in attrs.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, object] = {}
    for key, value in table.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(
                f"unknown key (known keys: {known})",
                source=source, key=f"{name}.{key}",
            )
        kwargs[key] = _coerce(value, str(fields[key].type), f"{name}.{key}", source)
    for key, value in overrides.items():
        kwargs[key] = _coerce(value, str(fields[key].type), f"{name}.{key}",
                              "command line")
    try:
        return cls(**kwargs)
    except ValueError as e:
        bad = _failing_key(cls, kwargs)
        where = "command line" if bad in overrides else source
        raise ConfigError(str(e), source=where, key=f"{name}.{bad}") from None


def _failing_key(cls: type[Any], kwargs: Mapping[str, object]) -> str:
    """Find which field's validator rejected ``kwargs``, for the message."""
    for key in kwargs:
        try:
            cls(**{key: kwargs[key]})
        except ValueError:
            return key
    return "?"


def from_mapping(data: Mapping[str, object], *, source: str = "",
                 overrides: Mapping[str, Mapping[str, object]] | None = None,
                 dev: bool = False) -> Config:
    """
    Build a :class:`Config` from parsed TOML.

    :param source: what to call the input in error messages (a file name).
    :param overrides: ``{section: {key: value}}`` from the command line;
        they win over ``data``.
    :raises ConfigError: for any unknown section or key, wrong type or
        out-of-range value.
    """
    overrides = overrides or {}
    for name in data:
        if name not in _SECTIONS:
            known = ", ".join(sorted(_SECTIONS))
            raise ConfigError(f"unknown section (known sections: {known})",
                              source=source, key=f"[{name}]")
    sections = {
        name: _section(cls, data.get(name, {}), name, source,
                       overrides.get(name, {}))
        for name, cls in _SECTIONS.items()
    }
    try:
        return Config(dev=dev, **sections)
    except ConfigError as e:
        raise ConfigError(e.problem, source=source, key=e.key) from None


def load(path: str, *, overrides: Mapping[str, Mapping[str, object]] | None = None,
         dev: bool = False) -> Config:
    """
    Read and check a TOML settings file.

    :raises ConfigError: if the file cannot be read, is not TOML, or holds
        a bad setting.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", source=path) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", source=path) from None
    return from_mapping(data, source=path, overrides=overrides, dev=dev)
