"""
Checking a configuration without serving it, like ``nginx -t``:
``securews check`` and ``twistd securews --check`` (and ``twistd``
itself, to name every problem when it refuses to start).

Each step is the very code the server runs at start (the application
import, the endpoint parser, the TLS context with its certificate, key,
match and expiry checks, each authentication method's keys, the message
schema, the admin listener's rules and token, the log file, a cluster's
password, CA file and engine), run one by one so
that every problem is reported, not only the first; the TCP addresses are
bound and let go.  When all pass, the whole service is built as ``twistd``
builds it, so a configuration that passes the check cannot fail to build
at start.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import IO, Any

import attrs

from securews.auth.build import method_problems
from securews.cluster.engine import trust_root
from securews.cluster.preflight import check_engine
from securews.ops.logs import log_file_problem
from securews.ops.metrics import Metrics
from securews.rules.config import Config, ConfigError
from securews.rules.validation import build_validator
from securews.service._service import build_service
from securews.service.admin import Readiness, admin_service
from securews.service.admin_actions import read_token
from securews.service.cluster import read_password
from securews.service.listener import ListeningService, try_bind
from securews.wire.apps import load_app
from securews.wire.listening import server_endpoint
from securews.wire.tls import load_credentials

__all__ = ["EXPIRY_WARNING", "Report", "check_config", "print_report"]

#: A certificate expiring sooner than this is worth a warning.
EXPIRY_WARNING = datetime.timedelta(days=30)


@attrs.frozen
class Report:
    """
    :ivar problems: what stops the server from starting, one line each.
    :ivar warnings: what it would start with but an operator should know.
    """

    problems: tuple[ConfigError, ...]
    warnings: tuple[ConfigError, ...]


def _problems(config: Config, reactor: Any, bind: bool,
              warnings: list[ConfigError]) -> list[ConfigError]:
    found: list[ConfigError] = []

    def step(run: Callable[[], object]) -> object:
        try:
            return run()
        except ConfigError as e:
            found.extend(e.problems)
            return None

    step(lambda: load_app(config.server.app))
    endpoint = step(lambda: server_endpoint(reactor, config.server.listen))
    if config.tls.enabled:
        step(lambda: load_credentials(config.tls, now=_now()))
    found.extend(method_problems(config, reactor))
    step(lambda: build_validator(config.messages))
    admin = step(lambda: admin_service(
        config.admin, Metrics(connections=lambda: 0, sessions=lambda: 0,
                              process=False), Readiness(), reactor))
    step(lambda: read_token(config.admin.token_file))
    if config.cluster.enabled:
        found.extend(_cluster(config, warnings))
    problem = log_file_problem(config.log)
    if problem is not None:
        found.append(problem)
    if bind and endpoint is not None:
        step(lambda: try_bind(endpoint,  # type: ignore[arg-type]
                              config.server.listen, "server.listen"))
    if bind and isinstance(admin, ListeningService):
        step(lambda: try_bind(admin.endpoint, admin.description, admin.key))
    if not found:
        # The server's own assembly, so that check and start cannot disagree.
        step(lambda: build_service(config, reactor))
    return found


def _cluster(config: Config, warnings: list[ConfigError]) -> list[ConfigError]:
    """``[cluster]``: the password file, the CA file, then the engine, as
    the node checks it before it listens (one that cannot be reached now
    is a warning: the node would start, refusing handshakes until it can)."""
    settings = config.cluster
    found: list[ConfigError] = []
    password = None
    try:
        password = read_password(settings.password_file)
    except ConfigError as e:
        found.extend(e.problems)
    if settings.engine.tls:
        try:
            trust_root(settings.ca_file)
        except ConfigError as e:
            found.extend(e.problems)
    if found:
        return found
    try:
        facts = check_engine(settings, password)
    except ConfigError as e:
        return list(e.problems)
    if facts is None:
        warnings.append(ConfigError(
            f"{settings.engine}: the engine cannot be reached now; the server "
            "would start and refuse handshakes (503) until it can",
            key="cluster.redis_url"))
    return found


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _warnings(config: Config, now: datetime.datetime) -> list[ConfigError]:
    found = []
    if config.tls.enabled:
        try:
            leaf = load_credentials(config.tls, now=now).leaf
        except ConfigError:
            leaf = None
        if leaf is not None and leaf.not_valid_after_utc - now < EXPIRY_WARNING:
            found.append(ConfigError(
                f"certificate in {config.tls.cert} expires on "
                f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", key="tls.cert"))
    if not (config.origin.allowed.patterns or config.origin.allow_missing
            or config.dev):
        found.append(ConfigError(
            "is empty: every browser page is refused (403); list your web "
            "application's origin, e.g. \"https://app.example.com\"",
            key="origin.allowed"))
    if not config.auth.methods:
        found.append(ConfigError("is empty: every handshake is refused (401)",
                                 key="auth.methods"))
    if config.admin.token_file and not config.admin.listen:
        found.append(ConfigError(
            "is set but admin.listen is empty: POST /revoke and /publish are "
            "not served", key="admin.token_file"))
    return found


def check_config(config: Config, reactor: Any, *, bind: bool = True,
                 now: datetime.datetime | None = None) -> Report:
    """
    Everything the server would verify at start, and a few warnings.

    A cluster's engine is asked (``INFO``) as the node would at start.

    :param bind: also bind the TCP listen addresses (``server.listen``,
        ``admin.listen``) and let go: off when the server is running and
        holds them.
    """
    warnings: list[ConfigError] = []
    problems = _problems(config, reactor, bind, warnings)
    return Report(tuple(problems),
                  tuple(_warnings(config, now or _now()) + warnings))


def print_report(report: Report, source: str, *, out: IO[str],
                 err: IO[str]) -> int:
    """
    Print ``report`` (problems and warnings one line each on ``err``, the
    verdict on ``out``).

    :returns: the exit status: 0 when the server would start, else 2.
    """
    for warning in report.warnings:
        err.write(f"securews: warning: {warning.at(source)}\n")
    for problem in report.problems:
        err.write(f"securews: error: {problem.at(source)}\n")
    if report.problems:
        return 2
    out.write(f"securews: {source}: OK\n")
    return 0
