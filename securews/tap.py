"""
``twistd securews``: command-line options and the service maker.

This is the only module that imports the global reactor, and only inside
:func:`makeService`.  Whatever stops the server before it serves (a bad
flag, a bad setting, an address it cannot listen on) is one line on
standard error, naming what and where, and exit status 2, which
``conf/securews.service`` tells systemd not to restart on: never a
traceback, never twistd's whole usage text.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import attrs
from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from securews.rules.config import Config, ConfigError, load
from securews.service.dev import DEV_LISTEN, default_state_dir, dev_config

__all__ = ["Options", "makeService"]

EXIT_CONFIG = 2
EXIT_USAGE = 2

_OVERRIDES = {
    "listen": ("server", "listen"),
    "path": ("server", "path"),
    "app": ("server", "app"),
    "log-format": ("log", "format"),
    "log-file": ("log", "file"),
}


def _fail(problems: Sequence[ConfigError], source: str) -> NoReturn:
    # The process's own standard error: once twistd has started logging,
    # sys.stderr is redirected into the log.
    err = sys.__stderr__ or sys.stderr
    for problem in problems:
        err.write(f"securews: error: {problem.at(source)}\n")
    err.flush()
    raise SystemExit(EXIT_CONFIG)


class Options(usage.Options):
    synopsis = "[--config FILE | --dev] [options]"
    longdesc = (
        "Run the securews hardened WebSocket server. Production: "
        "--config /etc/securews/securews.toml. Trying it: --dev (self-signed "
        "certificate, anonymous access, a test page at https://127.0.0.1:8443/; "
        "never in production). Flags override the file. Exit status 2: a bad "
        "flag or setting, or an address the server cannot listen on."
    )
    optFlags: ClassVar[list[list[str | None]]] = [
        ["dev", None, "development mode: self-signed certificate for localhost, "
         f"{DEV_LISTEN}, echo app, anonymous access, missing Origin and pages "
         "from localhost/127.0.0.1/[::1] (any port) allowed, a test page at /. "
         "NOT FOR PRODUCTION."],
        ["check", None, "check the settings (files, keys, certificates, that the "
         "address can be bound) as `securews check` does, print every problem, "
         "and exit: 0 when the server would start, 2 otherwise."],
    ]
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "TOML settings file (see conf/securews.toml)."],
        ["listen", "l", None, "Override server.listen (a Twisted endpoint: tcp:, "
         "tcp6:, unix: or systemd:)."],
        ["path", None, None, "Override server.path, the WebSocket URL path."],
        ["app", "a", None, "Override server.app: 'echo' or 'package.module:Class'."],
        ["log-format", None, None, "Override log.format: 'text' or 'json'."],
        ["log-file", None, None, "Override log.file ('-' for stdout; a file is "
         "required when twistd runs as a daemon, without -n)."],
        ["state-dir", None, None, "With --dev: where the development certificate "
         "is kept (default $XDG_STATE_HOME/securews)."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["allow-origin"] = []

    def opt_allow_origin(self, origin: str) -> None:
        """Add an allowed Origin (repeatable); overrides origin.allowed."""
        self["allow-origin"].append(origin)

    def opt_version(self) -> NoReturn:
        """Print the versions of securews, Twisted, Autobahn and OpenSSL."""
        from securews.ops.versions import versions

        for name, version in versions():
            sys.stdout.write(f"{name} {version}\n")
        raise SystemExit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """One line and a hint for a bad command line, exit 2, rather than
        twistd's whole usage text and exit 1."""
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            sys.stderr.write(f"securews: error: {e} (see: twistd securews --help)\n")
            raise SystemExit(EXIT_USAGE) from None

    def postOptions(self) -> None:
        if self["dev"] and self["config"]:
            raise usage.UsageError("--dev and --config cannot be combined")
        if not self["dev"] and not self["config"]:
            raise usage.UsageError(
                "--config FILE is required (or --dev to try securews locally)"
            )
        if self["state-dir"] and not self["dev"]:
            raise usage.UsageError("--state-dir only applies to --dev")

    @property
    def source(self) -> str:
        """What error messages call the settings."""
        return "--dev" if self["dev"] else str(self["config"])

    @property
    def daemon(self) -> bool:
        """twistd was told to run in the background (no ``-n``)."""
        parent: Any = self.parent
        return parent is not None and not (parent["nodaemon"] or parent["debug"])

    def overrides(self) -> dict[str, dict[str, object]]:
        """The command-line settings, as ``{section: {key: value}}``."""
        result: dict[str, dict[str, object]] = {}
        for flag, (section, key) in _OVERRIDES.items():
            if self[flag] is not None:
                result.setdefault(section, {})[key] = self[flag]
        if self["allow-origin"]:
            result.setdefault("origin", {})["allowed"] = list(self["allow-origin"])
        return result

    def settings(self, now: datetime.datetime) -> Config:
        """Parse the settings this command line asks for."""
        if self["dev"]:
            state_dir = self["state-dir"]
            state = Path(state_dir) if state_dir else default_state_dir()
            config = dev_config(state, now=now, overrides=self.overrides())
        else:
            config = load(self["config"], overrides=self.overrides())
        return self._log_target(config)

    def _log_target(self, config: Config) -> Config:
        """
        Where the log goes.  twistd's own ``--logfile`` stands in for
        ``log.file = "-"``; a daemon has no standard output, so without a
        file it refuses to start rather than log nowhere.
        """
        if config.log.file != "-":
            return config
        parent: Any = self.parent
        logfile = parent["logfile"] if parent is not None else None
        if logfile and logfile != "-":
            return attrs.evolve(config, log=attrs.evolve(config.log, file=logfile))
        if self.daemon:
            raise ConfigError(
                '"-" (standard output) is closed when twistd runs as a daemon: '
                "set log.file or --log-file FILE, or run in the foreground "
                "(twistd -n, as systemd does)", key="log.file")
        return config


class _Started(MultiService):
    """
    The server, and the one-line exit when it cannot listen: a bind
    failure shows only when twistd starts the services, after
    :func:`makeService` returned.
    """

    def __init__(self, server: IService, observer: ILogObserver,
                 source: str, daemon: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._observer = observer
        self._source = source
        self._daemon = daemon
        server.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        """Hand ``[log]``'s observer to twistd's application."""
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._observer)

    def _guarded(self, start: Any) -> None:
        try:
            start()
        except ConfigError as e:
            if self._daemon:
                # Standard error is gone: twistd reports the exception's
                # last line to the waiting parent.
                raise
            _fail(e.problems, self._source)

    def privilegedStartService(self) -> None:
        self._guarded(super().privilegedStartService)

    def startService(self) -> None:
        self._guarded(super().startService)


def _check(options: Options, config: Config, reactor: Any) -> NoReturn:
    from securews.service.check import check_config, print_report

    report = check_config(config, reactor)
    raise SystemExit(print_report(report, options.source, out=sys.stdout,
                                  err=sys.stderr))


def makeService(options: Options) -> IService:
    """Build the service, or exit with one line per problem."""
    from twisted.internet import reactor

    from securews.ops.logs import make_observer
    from securews.ops.systemd import Notifier
    from securews.service._service import SecureWebSocketService, build_service
    from securews.service.check import check_config
    from securews.service.listener import ListenError, ListeningService, try_bind

    config: Config | None = None
    try:
        config = options.settings(datetime.datetime.now(datetime.UTC))
        if options["check"]:
            _check(options, config, reactor)
        observer = make_observer(config.log)
        service = build_service(config, reactor, observer=None,
                                notifier=Notifier())
        # Bind now and let go, as `securews check` does: a port in use is
        # one line here, before twistd writes its pid file or daemonizes.
        assert isinstance(service, SecureWebSocketService)
        for listener in (service.listener, service.admin):
            if isinstance(listener, ListeningService):
                try_bind(listener.endpoint, listener.description, listener.key)
    except ConfigError as e:
        problems = e.problems
        if config is not None and not isinstance(e, ListenError):
            # Name every problem, not only the one that stopped the build.
            problems = check_config(config, reactor, bind=False).problems or problems
        _fail(problems, options.source)
    return _Started(service, observer, options.source, options.daemon)
