"""README.rst is what users read first: it must render (PyPI shows it too)."""

from __future__ import annotations

import docutils.core
import docutils.utils

from tests.support.paths import REPO

README = REPO / "README.rst"


def test_readme_is_valid_restructuredtext() -> None:
    """No warning or error from docutils: every table and literal block parses."""
    docutils.core.publish_doctree(
        README.read_text(encoding="utf-8"),
        settings_overrides={"halt_level": docutils.utils.Reporter.WARNING_LEVEL,
                            "report_level": docutils.utils.Reporter.WARNING_LEVEL})


def test_every_setting_is_in_the_configuration_reference() -> None:
    """Each key of each section is named in README (as ``key``,
    ``section.key`` or ``sub.key``): an operator finds every setting."""
    import attrs

    from securews.rules.config import _NESTED, _SECTIONS

    text = README.read_text(encoding="utf-8")
    missing = []

    def walk(cls: type, section: str, prefix: str) -> None:
        for field in attrs.fields(cls):
            annotation = str(field.type)
            if annotation in _NESTED:
                walk(_NESTED[annotation], f"{section}.{field.name}", field.name)
                continue
            names = {f"``{field.name}``", f"``{section}.{field.name}``"}
            if prefix:
                names.add(f"``{prefix}.{field.name}``")
            if not any(name in text for name in names):
                missing.append(f"{section}.{field.name}")

    for section, cls in _SECTIONS.items():
        walk(cls, section, "")
    assert missing == []
