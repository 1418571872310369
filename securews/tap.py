"""
``twistd securews``: command-line options and the service maker.

This is the only module that imports the global reactor, and only inside
:func:`makeService`.  Settings errors print one line to stderr and exit
with status 2, before anything listens.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import ClassVar

from twisted.application.service import IService
from twisted.python import usage

from securews.rules.config import Config, ConfigError, load
from securews.service.dev import DEV_LISTEN, default_state_dir, dev_config

__all__ = ["Options", "makeService"]

EXIT_CONFIG = 2

_OVERRIDES = {
    "listen": ("server", "listen"),
    "path": ("server", "path"),
    "app": ("server", "app"),
    "log-format": ("log", "format"),
    "log-file": ("log", "file"),
}


class Options(usage.Options):
    synopsis = "[--config FILE | --dev] [options]"
    longdesc = (
        "Run the securews hardened WebSocket server. Production: "
        "--config /etc/securews/securews.toml. Trying it: --dev (self-signed "
        "certificate, anonymous access; never in production). Flags override "
        "the file."
    )
    optFlags: ClassVar[list[list[str | None]]] = [
        ["dev", None, "development mode: self-signed certificate for localhost, "
         f"{DEV_LISTEN}, echo app, anonymous access, missing Origin allowed. "
         "NOT FOR PRODUCTION."],
    ]
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "TOML settings file (see conf/securews.toml)."],
        ["listen", "l", None, "Override server.listen (a Twisted endpoint: tcp:, "
         "tcp6:, unix: or systemd:)."],
        ["path", None, None, "Override server.path, the WebSocket URL path."],
        ["app", "a", None, "Override server.app: 'echo' or 'package.module:Class'."],
        ["log-format", None, None, "Override log.format: 'text' or 'json'."],
        ["log-file", None, None, "Override log.file ('-' for stdout)."],
        ["state-dir", None, None, "With --dev: where the development certificate "
         "is kept (default $XDG_STATE_HOME/securews)."],
    ]
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["allow-origin"] = []

    def opt_allow_origin(self, origin: str) -> None:
        """Add an allowed Origin (repeatable); overrides origin.allowed."""
        self["allow-origin"].append(origin)

    def postOptions(self) -> None:
        if self["dev"] and self["config"]:
            raise usage.UsageError("--dev and --config cannot be combined")
        if not self["dev"] and not self["config"]:
            raise usage.UsageError(
                "--config FILE is required (or --dev to try securews locally)"
            )
        if self["state-dir"] and not self["dev"]:
            raise usage.UsageError("--state-dir only applies to --dev")

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
            return dev_config(state, now=now, overrides=self.overrides())
        return load(self["config"], overrides=self.overrides())


def makeService(options: Options) -> IService:
    """Build the service, or exit with a one-line error."""
    from twisted.internet import reactor

    from securews.ops.logs import make_observer
    from securews.ops.systemd import Notifier
    from securews.service._service import build_service

    try:
        config = options.settings(datetime.datetime.now(datetime.UTC))
        observer = make_observer(config.log)
        service = build_service(config, reactor, observer=observer,
                                notifier=Notifier())
    except ConfigError as e:
        source = "--dev" if options["dev"] else options["config"]
        sys.stderr.write(f"securews: error: {e.at(source)}\n")
        raise SystemExit(EXIT_CONFIG) from None
    return service
