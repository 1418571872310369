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

import tomllib
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import attrs

from securews.rules.channels import ChannelsSettings
from securews.rules.cluster import ClusterSettings
from securews.rules.settings import (
    AdminSettings,
    AlertsSettings,
    AuthSettings,
    CookieSettings,
    JWTSettings,
    LimitsSettings,
    LogSettings,
    MessagesSettings,
    OriginSettings,
    RateLimitSettings,
    ServerSettings,
    TicketSettings,
    TLSSettings,
)

__all__ = [
    "AdminSettings",
    "AlertsSettings",
    "AuthSettings",
    "Config",
    "ConfigError",
    "ConfigErrors",
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
    "from_mapping",
    "load",
]


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

    @property
    def problems(self) -> tuple[ConfigError, ...]:
        """Every problem this error stands for, one line each."""
        return (self,)


class ConfigErrors(ConfigError):
    """
    Several problems found at once (every bad key of a file, not only the
    first), so that an operator fixes them in one round.  ``str()`` is the
    first; :attr:`problems` holds them all.
    """

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.problem, source=first.source, key=first.key)
        self._problems = tuple(p for e in problems for p in e.problems)

    @property
    def problems(self) -> tuple[ConfigError, ...]:
        return self._problems

    def at(self, source: str) -> ConfigErrors:
        return ConfigErrors([p.at(source) for p in self._problems])

    @classmethod
    def of(cls, problems: list[ConfigError]) -> ConfigError:
        """One error for ``problems`` (not empty): itself when alone."""
        return problems[0] if len(problems) == 1 else cls(problems)



@attrs.frozen
class Config:
    """
    Everything securews needs to run, parsed and checked.

    :ivar dev: set only by ``--dev``; relaxes anonymous access and a
        missing Origin, and serves the development page at ``/``; nothing
        else (its loopback Origins are in ``origin.allowed``).
    """

    server: ServerSettings = attrs.field(factory=ServerSettings)
    tls: TLSSettings = attrs.field(factory=TLSSettings)
    log: LogSettings = attrs.field(factory=LogSettings)
    limits: LimitsSettings = attrs.field(factory=LimitsSettings)
    origin: OriginSettings = attrs.field(factory=OriginSettings)
    auth: AuthSettings = attrs.field(factory=AuthSettings)
    ratelimit: RateLimitSettings = attrs.field(factory=RateLimitSettings)
    messages: MessagesSettings = attrs.field(factory=MessagesSettings)
    admin: AdminSettings = attrs.field(factory=AdminSettings)
    alerts: AlertsSettings = attrs.field(factory=AlertsSettings)
    cluster: ClusterSettings = attrs.field(factory=ClusterSettings)
    channels: ChannelsSettings = attrs.field(factory=ChannelsSettings)
    dev: bool = False

    def __attrs_post_init__(self) -> None:
        problems = list(self._conflicts())
        if problems:
            raise ConfigErrors.of(problems)

    def _conflicts(self) -> Iterator[ConfigError]:
        """Settings that are fine alone and wrong together."""
        if not self.tls.enabled and not self.server.trusted_proxies:
            yield ConfigError(
                "plaintext (enabled = false) is only allowed behind a TLS-"
                "terminating proxy listed in server.trusted_proxies",
                key="tls.enabled",
            )
        if not self.tls.enabled and self.tls.client_ca:
            yield ConfigError(
                "needs TLS (enabled = true): behind a TLS-terminating proxy "
                "no client certificate reaches securews, so none would be "
                "required", key="tls.client_ca")
        if self.tls.enabled and not (self.tls.cert and self.tls.key):
            yield ConfigError(
                "tls.cert and tls.key are required when TLS is enabled",
                key="tls.cert",
            )
        if self.ratelimit.bytes_burst < self.limits.max_message_size:
            yield ConfigError(
                "must be at least limits.max_message_size, or a message of the "
                "largest allowed size could never be accepted",
                key="ratelimit.bytes_burst")
        if self.limits.max_fragments > self.ratelimit.message_burst:
            yield ConfigError(
                "must not exceed ratelimit.message_burst: every frame costs a "
                "token, so a message of max_fragments frames could never be "
                "accepted", key="limits.max_fragments")
        if self.server.proxy_protocol and not self.server.trusted_proxies:
            yield ConfigError("needs server.trusted_proxies: PROXY headers are "
                              "believed only from them", key="server.proxy_protocol")
        if self.server.trust_forwarded_for and not self.server.trusted_proxies:
            yield ConfigError("needs server.trusted_proxies: X-Forwarded-For is "
                              "believed only from them",
                              key="server.trust_forwarded_for")
        if self.server.trust_forwarded_for and self.server.proxy_protocol:
            yield ConfigError(
                "cannot be combined with server.proxy_protocol: the PROXY header "
                "is then the only source of the client address",
                key="server.trust_forwarded_for")
        if self.limits.max_frame_size > self.limits.max_message_size:
            yield ConfigError(
                "must not exceed limits.max_message_size",
                key="limits.max_frame_size",
            )
        if "anonymous" in self.auth.methods and not self.dev:
            yield ConfigError("'anonymous' is only allowed with --dev",
                              key="auth.methods")
        if self.auth.ticket.issue_path == self.server.path:
            yield ConfigError("must differ from server.path",
                              key="auth.ticket.issue_path")
        if self.server.app == "channels" and self.messages.format != "json":
            yield ConfigError('the channels app speaks JSON: set format = "json"',
                              key="messages.format")
        if self.cluster.ca_file and not (
                self.cluster.enabled and self.cluster.engine.tls):
            yield ConfigError("is for rediss:// engines only", key="cluster.ca_file")
        if "ticket" in self.auth.methods and not (
                {"jwt", "cookie"} & set(self.auth.methods)):
            yield ConfigError(
                "'ticket' needs 'jwt' or 'cookie' too: they authenticate the "
                "POST that mints a ticket", key="auth.methods")

    @property
    def reads_forwarded_for(self) -> bool:
        """
        Whether ``X-Forwarded-For`` from a trusted proxy names the client:
        only when that proxy terminated TLS in front of securews (plaintext,
        or ``server.trust_forwarded_for`` for a proxy that re-encrypts).
        When securews terminates TLS itself, only the end client can have
        written the header; after a PROXY header, that header is the only
        source of the client address.
        """
        server = self.server
        return not server.proxy_protocol and (
            not self.tls.enabled or server.trust_forwarded_for)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "tls": TLSSettings,
    "log": LogSettings,
    "limits": LimitsSettings,
    "origin": OriginSettings,
    "auth": AuthSettings,
    "ratelimit": RateLimitSettings,
    "messages": MessagesSettings,
    "admin": AdminSettings,
    "alerts": AlertsSettings,
    "cluster": ClusterSettings,
    "channels": ChannelsSettings,
}

#: Tables inside tables: ``[auth.jwt]`` and friends.
_NESTED: dict[str, type[Any]] = {
    "TicketSettings": TicketSettings,
    "JWTSettings": JWTSettings,
    "CookieSettings": CookieSettings,
}

_T = TypeVar("_T")
#: Settings written as a list of strings (parsed by their field's converter).
_LISTS_OF_TEXT = ("tuple[str, ...]", "tuple[IPNetwork, ...]", "AllowList")


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
    if annotation in _LISTS_OF_TEXT:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings")
        return tuple(value)
    raise AssertionError(f"unhandled setting type {annotation}")


def _section(cls: type[_T], table: object, name: str, source: str,
             overrides: Mapping[str, object]) -> _T:
    """
    One table as ``cls``.

    :raises ConfigError: every problem of the table (:class:`ConfigErrors`
        when there are several).
    """
    if not isinstance(table, dict):
        raise ConfigError("must be a table", source=source, key=f"[{name}]")
    fields = {f.name: f for f in attrs.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, object] = {}
    problems: list[ConfigError] = []
    for key, value in table.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(ConfigError(
                f"unknown key (known keys: {known})",
                source=source, key=f"{name}.{_shown(key)}",
            ))
            continue
        annotation = str(fields[key].type)
        try:
            if annotation in _NESTED:
                kwargs[key] = _section(_NESTED[annotation], value, f"{name}.{key}",
                                       source, {})
            else:
                kwargs[key] = _coerce(value, annotation, f"{name}.{key}", source)
        except ConfigError as e:
            problems.append(e)
    for key, value in overrides.items():
        try:
            kwargs[key] = _coerce(value, str(fields[key].type), f"{name}.{key}",
                                  "command line")
        except ConfigError as e:
            problems.append(e)
    try:
        if not problems:
            return cls(**kwargs)
        failing = _failing_keys(cls, kwargs)
    except ValueError as e:
        failing = _failing_keys(cls, kwargs) or {"?": str(e)}
    problems += [ConfigError(why, source="command line" if bad in overrides else source,
                             key=f"{name}.{bad}") for bad, why in failing.items()]
    raise ConfigErrors.of(problems)


def _shown(name: str) -> str:
    """A key as written, or quoted when it holds a line break or other
    control character (the message stays one line)."""
    return name if name.isprintable() else repr(name)


def _failing_keys(cls: type[Any], kwargs: Mapping[str, object]) -> dict[str, str]:
    """Which fields' validators reject ``kwargs``, and why, for the messages."""
    failing = {}
    for key in kwargs:
        try:
            cls(**{key: kwargs[key]})
        except ValueError as e:
            failing[key] = str(e)
    return failing


def from_mapping(data: Mapping[str, object], *, source: str = "",
                 overrides: Mapping[str, Mapping[str, object]] | None = None,
                 dev: bool = False) -> Config:
    """
    Build a :class:`Config` from parsed TOML.

    :param source: what to call the input in error messages (a file name).
    :param overrides: ``{section: {key: value}}`` from the command line;
        they win over ``data``.
    :raises ConfigError: for any unknown section or key, wrong type or
        out-of-range value; :class:`ConfigErrors` naming each when there
        are several.
    """
    overrides = overrides or {}
    problems: list[ConfigError] = []
    for name in data:
        if name not in _SECTIONS:
            known = ", ".join(sorted(_SECTIONS))
            problems.append(ConfigError(f"unknown section (known sections: {known})",
                                        source=source, key=f"[{_shown(name)}]"))
    sections = {}
    for name, cls in _SECTIONS.items():
        try:
            sections[name] = _section(cls, data.get(name, {}), name, source,
                                      overrides.get(name, {}))
        except ConfigError as e:
            problems.append(e)
    if problems:
        raise ConfigErrors.of(problems)
    try:
        return Config(dev=dev, **sections)
    except ConfigError as e:
        raise ConfigErrors.of([ConfigError(p.problem, source=source, key=p.key)
                               for p in e.problems]) from None


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
