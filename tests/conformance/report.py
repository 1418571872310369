"""
The Autobahn Testsuite's report, and the verdict on it.

The suite writes ``index.json`` (case id -> behaviour, close behaviour,
the server's close code) and one JSON file per case in its reports
directory; :class:`Report` reads both.  :func:`judge` applies the pass
criterion, with EXPECTED.md (:func:`parse_expected`) as the list of
explained exceptions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AGENT", "EXPECTED_FILE", "EXPLAINED", "CaseResult", "Expected", "Report",
           "judge", "parse_expected"]

EXPECTED_FILE = Path(__file__).resolve().parent / "EXPECTED.md"
#: The name the suite files securews's results under.
AGENT = "securews"


@dataclass(frozen=True)
class CaseResult:
    """One case of the suite's ``index.json`` (and its own JSON file)."""

    case: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    duration_ms: int
    result: str = ""
    result_close: str = ""


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


@dataclass
class Report:
    """What one run produced."""

    name: str
    cases: dict[str, CaseResult]
    wall_time: float
    directory: Path
    handshakes: Counter[str] = field(default_factory=Counter)
    server_closes: Counter[str] = field(default_factory=Counter)

    @classmethod
    def read(cls, name: str, reports: Path, wall_time: float,
             directory: Path) -> Report:
        index = json.loads((reports / "index.json").read_text())
        cases: dict[str, CaseResult] = {}
        for case, entry in index[AGENT].items():
            detail = json.loads((reports / entry["reportfile"]).read_text())
            cases[case] = CaseResult(
                case=case, behavior=entry["behavior"],
                behavior_close=entry["behaviorClose"],
                remote_close_code=entry.get("remoteCloseCode"),
                duration_ms=int(entry.get("duration", 0)),
                result=str(detail.get("result", "")),
                result_close=str(detail.get("resultClose", "")))
        return cls(name, dict(sorted(cases.items(), key=lambda kv: _case_key(kv[0]))),
                   wall_time, directory)

    def summary(self) -> list[str]:
        behaviors = Counter(c.behavior for c in self.cases.values())
        closes = Counter(c.behavior_close for c in self.cases.values())
        codes = Counter(str(c.remote_close_code) for c in self.cases.values())
        lines = [
            f"Autobahn Testsuite, {self.name}: {len(self.cases)} cases in "
            f"{self.wall_time:.1f} s (report: {self.directory / 'reports'})",
            "  behaviour:       " + _counts(behaviors),
            "  close behaviour: " + _counts(closes),
            "  server's close code: " + _counts(codes),
        ]
        lines.append("  securews handshakes: " + _counts(self.handshakes))
        if self.server_closes:
            lines.append("  securews closed sessions for: "
                         + _counts(self.server_closes))
        for c in self.cases.values():
            if c.behavior not in ("OK", "INFORMATIONAL") \
                    or c.behavior_close not in ("OK", "INFORMATIONAL"):
                lines.append(f"  {c.case}: {c.behavior} / close {c.behavior_close} "
                             f"(code {c.remote_close_code}): {c.result} "
                             f"{c.result_close}".rstrip())
        return lines


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counter.items()))


# -- the verdict -----------------------------------------------------------------

#: The behaviours a case may have only with a reason in EXPECTED.md.
EXPLAINED = ("NON-STRICT", "UNIMPLEMENTED")
_ROW = re.compile(r"^\|\s*(\d+(?:\.\d+)+)\s*\|\s*([A-Z-]+)\s*\|(.*)\|\s*$")


@dataclass(frozen=True)
class Expected:
    """A case EXPECTED.md explains: its behaviour and why."""

    case: str
    behavior: str
    reason: str


def parse_expected(text: str) -> dict[str, Expected]:
    """
    The table rows of EXPECTED.md: ``| case | behaviour | reason |``.

    :raises ValueError: a row with an unknown behaviour, no reason, or a
        case listed twice.
    """
    expected: dict[str, Expected] = {}
    for number, line in enumerate(text.splitlines(), 1):
        row = _ROW.match(line.strip())
        if row is None:
            continue
        case, behavior, reason = row.group(1), row.group(2), row.group(3).strip()
        if behavior not in EXPLAINED:
            raise ValueError(f"EXPECTED.md:{number}: {behavior!r} is not one of "
                             f"{', '.join(EXPLAINED)}")
        if not reason:
            raise ValueError(f"EXPECTED.md:{number}: case {case} has no reason")
        if case in expected:
            raise ValueError(f"EXPECTED.md:{number}: case {case} is listed twice")
        expected[case] = Expected(case, behavior, reason)
    return expected


def judge(cases: Iterable[CaseResult], expected: Mapping[str, Expected]) -> list[str]:
    """
    Every way the run falls short, one line each (empty: it passed).

    A case fails when its behaviour or its close behaviour is FAILED, when
    its close behaviour is anything but OK or INFORMATIONAL, or when it is
    NON-STRICT or UNIMPLEMENTED without that entry in EXPECTED.md.  An
    entry for a case that ran and no longer behaves as listed is a problem
    too, so the file stays true.
    """
    problems: list[str] = []
    for c in cases:
        listed = expected.get(c.case)
        if c.behavior == "FAILED":
            problems.append(f"{c.case} FAILED: {c.result}")
        elif c.behavior in EXPLAINED:
            if listed is None:
                problems.append(f"{c.case} is {c.behavior} and EXPECTED.md does not "
                                f"say why: {c.result}")
            elif listed.behavior != c.behavior:
                problems.append(f"{c.case} is {c.behavior}, EXPECTED.md says "
                                f"{listed.behavior}")
        elif listed is not None:
            problems.append(f"{c.case} is {c.behavior} now: remove it from "
                            f"EXPECTED.md")
        if c.behavior_close not in ("OK", "INFORMATIONAL"):
            problems.append(f"{c.case} close behaviour {c.behavior_close} (code "
                            f"{c.remote_close_code}): {c.result_close}")
    return problems
