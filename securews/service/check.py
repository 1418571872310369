"""
Checking a configuration without serving it, like ``nginx -t``:
``securews check`` and ``twistd securews --check`` (and ``twistd``
itself, to name every problem when it refuses to start).

Each step is the very code the server runs at start (the application
import, the endpoint parser, the TLS context with its certificate, key,
match and expiry checks, each authentication method's keys, the message
schema, the admin listener's rules, the log file), run one by one so
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
from securews.ops.logs import log_file_problem
from securews.ops.metrics import Metrics
from securews.rules.config import Config, ConfigError
from securews.rules.validation import build_validator
from securews.service._service import build_service
from securews.service.admin import Readiness, admin_service
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


def _problems(config: Config, reactor: Any, bind: bool) -> list[ConfigError]:
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
    return found


def check_config(config: Config, reactor: Any, *, bind: bool = True,
                 now: datetime.datetime | None = None) -> Report:
    """
    Everything the server would verify at start, and a few warnings.

    :param bind: also bind the TCP listen addresses (``server.listen``,
        ``admin.listen``) and let go: off when the server is running and
        holds them.
    """
    problems = _problems(config, reactor, bind)
    return Report(tuple(problems), tuple(_warnings(config, now or _now())))


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
