"""
Loading ``server.app``: a built-in application or the operator's own.

``server.app`` is either a built-in name (``"echo"``) or
``"package.module:ProtocolClass"`` naming a
:class:`~securews.wire.protocol.SecureServerProtocol` subclass.
"""

from __future__ import annotations

import importlib
import re

from securews.rules.config import ConfigError
from securews.wire.protocol import SecureServerProtocol

__all__ = ["BUILTIN", "load_app"]

#: The built-in applications, by name; imported only when named (the
#: apps package sits above this layer).
BUILTIN = {"echo": "securews.apps.echo:EchoProtocol",
           "channels": "securews.apps.channels:ChannelsProtocol"}
_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def load_app(spec: str) -> type[SecureServerProtocol]:
    """
    Resolve ``server.app``.

    :raises ConfigError: if the module cannot be imported or the name is
        not a ``SecureServerProtocol`` subclass.
    """
    target = BUILTIN.get(spec, spec)
    if not _SPEC.fullmatch(target):
        raise ConfigError(
            f"{spec!r} is neither a built-in app ({', '.join(BUILTIN)}) nor "
            "'package.module:ProtocolClass'", key="server.app",
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r}: {e}",
                          key="server.app") from None
    app = getattr(module, attr, None)
    if not (isinstance(app, type) and issubclass(app, SecureServerProtocol)):
        raise ConfigError(
            f"{target!r} is not a securews.SecureServerProtocol subclass",
            key="server.app",
        )
    return app
