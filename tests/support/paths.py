"""Where the repository's files are, for tests that read or run them."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONF", "EXAMPLES", "REPO"]

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
EXAMPLES = REPO / "examples"
