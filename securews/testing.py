"""
Helpers for testing securews and applications built on it.

Public API, like ``treq.testing``: embedders can use these in their own
test suites.
"""

from __future__ import annotations

from collections.abc import Mapping

from securews.rules.config import Config, from_mapping

__all__ = ["make_config"]


def make_config(*, dev: bool = False,
                **sections: Mapping[str, object]) -> Config:
    """
    Build a checked :class:`~securews.rules.config.Config` from keyword
    sections, e.g. ``make_config(tls={"cert": c, "key": k},
    origin={"allowed": ["https://app.example"]})``.

    The same validation as a TOML file applies.  With ``dev=True`` and no
    ``auth`` section, authentication is anonymous, as under ``--dev``.
    """
    if dev and "auth" not in sections:
        sections = {**sections, "auth": {"methods": ["anonymous"]}}
    return from_mapping(sections, source="make_config()", dev=dev)
