"""Where the test suite's time goes: the slowest tests and each tier's total, from JUnit XML.

`nox -s test` writes one JUnit file per tier (test-results/<tier>.xml); `.ci/run` prints this after
the run, so the README's times come from a run's own record, not from estimates. Standard library
only: it runs with the machine's python3 before or without any venv.

    python3 scripts/test_times.py [FOLDER] [--top N]

A test's time is JUnit's (setup + call + teardown), so a session fixture (one built image, one
finished run) is counted in the first test that asked for it. Exit status 2 when a file cannot be
read; a missing folder or no files is said plainly and is not an error (the run may have stopped
before pytest started, and CI's status is pytest's, not this script's).
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

TIER_ORDER = ("unit", "runtime", "integration", "slow")
"""The order nox runs the tiers in (tests/conftest.py names them); other files come after, by name."""


@dataclass(frozen=True)
class Timed:
    """One test case of one tier's run, as JUnit recorded it."""

    tier: str
    name: str
    seconds: float
    outcome: str


@dataclass(frozen=True)
class TierRun:
    """One tier's pytest run: its wall time (the testsuite's) and its test cases."""

    tier: str
    wall_s: float
    cases: tuple[Timed, ...]


def _outcome(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
    return "passed"


def read_run(path: Path) -> TierRun:
    """The tier run in one JUnit file (pytest's: <testsuites><testsuite>…); its tier is the file's
    stem. Raises ValueError naming the file when it is not such a file."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ValueError(f"{path}: not readable JUnit XML ({exc})") from exc
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        raise ValueError(f"{path}: no <testsuite> element (is it pytest's --junitxml output?)")
    tier = path.stem
    cases = []
    wall = 0.0
    for suite in suites:
        wall += float(suite.get("time", "0") or 0)
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
            cases.append(Timed(tier, name, float(case.get("time", "0") or 0), _outcome(case)))
    return TierRun(tier, wall, tuple(cases))


def _clock(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{seconds:.1f}s"


def report(runs: list[TierRun], top: int) -> str:
    """The `top` slowest tests across every tier, then each tier's test count, summed test time and
    wall time, and the whole run's."""
    cases = sorted((c for run in runs for c in run.cases), key=lambda c: (-c.seconds, c.name))
    lines = [f"test times: the {min(top, len(cases))} slowest tests (setup + call + teardown)"]
    for case in cases[:top]:
        lines.append(f"  {_clock(case.seconds):>8}  [{case.tier}] {case.name} ({case.outcome})")
    lines.append("test times: each tier (tests, summed test time, pytest's wall time)")
    for run in runs:
        summed = sum(c.seconds for c in run.cases)
        lines.append(
            f"  {run.tier:<12} {len(run.cases):>5} tests  {_clock(summed):>8} summed  "
            f"{_clock(run.wall_s):>8} wall"
        )
    total_wall = sum(run.wall_s for run in runs)
    total_cases = sum(len(run.cases) for run in runs)
    lines.append(
        f"  {'all':<12} {total_cases:>5} tests  {'':>8}         {_clock(total_wall):>8} wall"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the report for every *.xml in the folder (test-results by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="test-results", type=Path)
    parser.add_argument("--top", type=int, default=15, help="how many of the slowest tests (15)")
    args = parser.parse_args(argv)
    files = sorted(args.folder.glob("*.xml")) if args.folder.is_dir() else []
    if not files:
        print(f"test times: no JUnit XML in {args.folder} (no tier ran to its end)")
        return 0
    try:
        runs = [read_run(path) for path in files]
        rank = {tier: n for n, tier in enumerate(TIER_ORDER)}
        runs.sort(key=lambda run: (rank.get(run.tier, len(rank)), run.tier))
    except ValueError as exc:
        print(f"test times: {exc}", file=sys.stderr)
        return 2
    print(report(runs, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
