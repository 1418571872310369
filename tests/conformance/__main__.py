"""
Run the Autobahn Testsuite against securews from the command line.

``python -m tests.conformance --full`` (from the repository root, with the
test environment's Python) is the release run: all 517 cases with
compression on, about 20 minutes on the 2-core machine.  Without
``--full`` it runs what CI runs; ``--cases`` picks cases for a look at one.
The reports (the suite's HTML and JSON, securews's log) stay in ``--out``.
Exit status 1 if the verdict has problems, 2 if the suite could not run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .py27env import Py27Unavailable, wstest_environment
from .report import EXPECTED_FILE, judge, parse_expected
from .suite import CI_RUNS, FULL_RUN, Run, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.conformance",
        description="RFC 6455/7692 conformance of twistd securews with the "
                    "Autobahn Testsuite.")
    parser.add_argument("--full", action="store_true",
                        help="all 517 cases with compression on (release run)")
    parser.add_argument("--cases", help="comma-separated case ids or patterns "
                        "(e.g. 9.3.1,12.1.*) instead of a standard run")
    parser.add_argument("--compression", action="store_true",
                        help="with --cases: turn [limits] compression on")
    parser.add_argument("--out", type=Path,
                        help="directory for the reports (default: a new one "
                             "under the system's temporary directory)")
    args = parser.parse_args(argv)

    if args.cases:
        runs: tuple[Run, ...] = (Run("selected cases", compression=args.compression,
                                     cases=tuple(args.cases.split(",")),
                                     timeout=FULL_RUN.timeout),)
    else:
        runs = (FULL_RUN,) if args.full else CI_RUNS
    out = args.out or Path(tempfile.mkdtemp(prefix="securews-autobahn-"))
    expected = parse_expected(EXPECTED_FILE.read_text())
    try:
        environment = wstest_environment()
    except (Py27Unavailable, RuntimeError) as e:
        print(f"cannot run the Autobahn Testsuite: {e}", file=sys.stderr)
        return 2
    print(f"Python 2.7 environment {'built' if environment.built else 'cached'} "
          f"in {environment.seconds:.1f} s: {environment.python}", flush=True)

    failed = False
    for index, run in enumerate(runs, 1):
        print(f"running {run.name} ...", flush=True)
        try:
            report = run_suite(run, environment.python, out / f"run{index}")
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 2
        print("\n".join(report.summary()))
        problems = judge(report.cases.values(), expected)
        if run.case_count is not None and len(report.cases) != run.case_count:
            problems.append(f"{len(report.cases)} cases ran, {run.case_count} "
                            "expected")
        for problem in problems:
            print(f"PROBLEM: {problem}")
        failed = failed or bool(problems)
        print(flush=True)
    print("conformance: " + ("FAILED" if failed else "passed")
          + f" (reports in {out})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
