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
