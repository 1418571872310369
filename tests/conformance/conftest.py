"""
The Autobahn Testsuite's summary in pytest's terminal report.

pytest captures what tests print, so a passing conformance run would leave
no trace in the CI log; the summary (cases, behaviours, close behaviours,
wall time) is written by this hook instead, pass or fail.

This package has an ``__init__.py``, so pytest imports this file as
``conformance.conftest`` and it cannot collide with ``tests/conftest.py``
(imported as ``conftest``).
"""

from __future__ import annotations

import pytest
from _pytest.terminal import TerminalReporter

from .suite import ENVIRONMENT, REPORTS


def pytest_terminal_summary(terminalreporter: TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    reports = config.stash.get(REPORTS, [])
    environment = config.stash.get(ENVIRONMENT, None)
    if not reports and environment is None:
        return
    terminalreporter.section("Autobahn Testsuite (RFC 6455/7692 conformance)")
    if environment is not None:
        how = "built" if environment.built else "cached"
        terminalreporter.write_line(
            f"Python 2.7 environment {how} in {environment.seconds:.1f} s: "
            f"{environment.python}")
    for report in reports:
        for line in report.summary():
            terminalreporter.write_line(line)
