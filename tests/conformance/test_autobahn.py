"""
RFC 6455/7692 conformance: the Autobahn Testsuite's fuzzingclient against
``twistd -n securews`` with every defence on (see suite.py).

The pass criterion: no case FAILED, every close behaviour OK or
INFORMATIONAL, and every NON-STRICT or UNIMPLEMENTED case explained in
EXPECTED.md, which must not list a case that behaves otherwise now.
Bare Autobahn passes every case, so anything else is securews's doing.

The suite needs Python 2.7 (found through pyenv, see py27env.py); without
it these tests skip locally and fail under CI.  The release run, all 517
cases with compression, is ``python -m tests.conformance --full``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.support.common import unavailable

from .py27env import (
    PYTHON27_VARIABLE,
    Py27Unavailable,
    find_python27,
    wstest_environment,
)
from .report import EXPECTED_FILE, CaseResult, Expected, judge, parse_expected
from .suite import CI_RUNS, ENVIRONMENT, FULL_RUN, REPORTS, Run, run_suite


@pytest.fixture(scope="module")
def wstest_python(pytestconfig: pytest.Config) -> Path:
    """The suite's Python 2.7 (built into the cache on first use)."""
    try:
        environment = wstest_environment()
    except Py27Unavailable as e:
        unavailable(str(e))
    pytestconfig.stash[ENVIRONMENT] = environment
    return environment.python


@pytest.mark.parametrize("run", CI_RUNS, ids=lambda run: run.name.replace(" ", "-"))
def test_autobahn_testsuite_passes(run: Run, wstest_python: Path, tmp_path: Path,
                                   pytestconfig: pytest.Config) -> None:
    """The fuzzingclient's report: every selected case ran, none failed,
    and every case that is not OK is explained in EXPECTED.md."""
    expected = parse_expected(EXPECTED_FILE.read_text())
    report = run_suite(run, wstest_python, tmp_path)
    pytestconfig.stash.setdefault(REPORTS, []).append(report)
    assert len(report.cases) == run.case_count, sorted(report.cases)
    problems = judge(report.cases.values(), expected)
    assert not problems, "\n".join(problems)


# -- the verdict itself ----------------------------------------------------------


def case(name: str, behavior: str = "OK", close: str = "OK",
         code: int | None = 1000) -> CaseResult:
    return CaseResult(case=name, behavior=behavior, behavior_close=close,
                      remote_close_code=code, duration_ms=1,
                      result=f"result of {name}", result_close="close result")


def test_a_clean_run_has_no_problem() -> None:
    """OK and INFORMATIONAL cases with OK or INFORMATIONAL closes pass."""
    cases = [case("1.1.1"), case("7.1.6", "INFORMATIONAL", "INFORMATIONAL")]
    assert judge(cases, {}) == []


def test_a_failed_case_is_a_problem_even_if_listed() -> None:
    """FAILED can never be explained away."""
    listed = {"5.1": Expected("5.1", "NON-STRICT", "why")}
    problems = judge([case("5.1", "FAILED", code=1002)], listed)
    assert problems == ["5.1 FAILED: result of 5.1"]


@pytest.mark.parametrize("behavior", ["NON-STRICT", "UNIMPLEMENTED"])
def test_unexplained_behaviours_need_an_entry(behavior: str) -> None:
    """NON-STRICT and UNIMPLEMENTED pass only with a matching entry."""
    assert judge([case("6.4.1", behavior)], {}) == [
        f"6.4.1 is {behavior} and EXPECTED.md does not say why: result of 6.4.1"]
    assert judge([case("6.4.1", behavior)],
                 {"6.4.1": Expected("6.4.1", behavior, "why")}) == []
    other = "UNIMPLEMENTED" if behavior == "NON-STRICT" else "NON-STRICT"
    assert judge([case("6.4.1", behavior)],
                 {"6.4.1": Expected("6.4.1", other, "why")}) == [
        f"6.4.1 is {behavior}, EXPECTED.md says {other}"]


def test_an_entry_for_a_case_that_now_passes_is_stale() -> None:
    """EXPECTED.md must stay true: a listed case that ran OK is a problem,
    a listed case that did not run (another mode) is not."""
    listed = {"6.4.1": Expected("6.4.1", "NON-STRICT", "why"),
              "12.2.1": Expected("12.2.1", "UNIMPLEMENTED", "why")}
    assert judge([case("6.4.1")], listed) == [
        "6.4.1 is OK now: remove it from EXPECTED.md"]


@pytest.mark.parametrize("close", ["FAILED", "WRONG CODE", "UNCLEAN",
                                   "FAILED BY CLIENT"])
def test_a_bad_close_behaviour_is_a_problem(close: str) -> None:
    """A close with the wrong code (say 1009 where 1000 was due) fails."""
    assert judge([case("9.1.6", close=close, code=1009)], {}) == [
        f"9.1.6 close behaviour {close} (code 1009): close result"]


def test_expected_rows_parse_and_bad_rows_are_refused() -> None:
    text = ("| case | behaviour | reason |\n|---|---|---|\n"
            "| 6.4.3 | NON-STRICT | fails fast on the first invalid octet |\n")
    assert parse_expected(text) == {
        "6.4.3": Expected("6.4.3", "NON-STRICT", "fails fast on the first invalid "
                          "octet")}
    with pytest.raises(ValueError, match="no reason"):
        parse_expected("| 6.4.3 | NON-STRICT |  |")
    with pytest.raises(ValueError, match="'FAILED' is not one of"):
        parse_expected("| 6.4.3 | FAILED | because |")
    with pytest.raises(ValueError, match="listed twice"):
        parse_expected("| 6.4.3 | NON-STRICT | a |\n| 6.4.3 | NON-STRICT | b |")


def test_expected_file_parses() -> None:
    """EXPECTED.md is well formed: each entry a real case id with a reason
    (whether it is still true is checked by the runs above)."""
    entries = parse_expected(EXPECTED_FILE.read_text())
    for name in entries:
        assert re.fullmatch(r"([1-9]|1[0-3])(\.\d+){1,2}", name), name


def test_runs_select_what_they_claim() -> None:
    """The CI runs together and the release run cover the 517 cases."""
    no_compression, compression = CI_RUNS
    assert not no_compression.compression
    assert compression.compression
    assert FULL_RUN.compression
    assert no_compression.case_count == 301
    assert FULL_RUN.case_count == 517
    assert all(c.startswith(("12.", "13.")) for c in compression.cases)


def test_an_explicit_interpreter_that_is_not_python27_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """$SECUREWS_PYTHON27 naming the wrong Python is an error, not a skip
    into some other interpreter."""
    monkeypatch.setenv(PYTHON27_VARIABLE, sys.executable)
    with pytest.raises(Py27Unavailable, match=r"is not a working Python 2\.7"):
        find_python27()
