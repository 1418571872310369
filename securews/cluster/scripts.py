"""
The Lua scripts every multi-step operation on the engine runs as (one
script: atomic, one round trip, the engine's clock).  Their sources are
``securews/cluster/lua/*.lua``, each prefixed with ``_prelude.lua``.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

import attrs

__all__ = ["SCRIPTS", "Script"]

_NAMES = ("place_acquire", "place_release", "place_count", "renew", "rate_take",
          "claim", "vouch", "revoked", "revoke", "ticket_issue", "ticket_redeem",
          "publish", "history", "unregister")


@attrs.frozen
class Script:
    name: str
    source: str

    @property
    def sha(self) -> str:
        """What ``EVALSHA`` calls it by."""
        return hashlib.sha1(self.source.encode("utf-8"),
                            usedforsecurity=False).hexdigest()


def _load() -> dict[str, Script]:
    folder = files("securews.cluster") / "lua"
    prelude = (folder / "_prelude.lua").read_text("utf-8")
    return {name: Script(name, prelude + "\n" + (folder / f"{name}.lua").read_text(
        "utf-8")) for name in _NAMES}


#: Every script, by name.
SCRIPTS: dict[str, Script] = _load()
