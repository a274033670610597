"""`nox -s fuzz`: the hostile property tests under Hypothesis' `fuzz` profile, round after round of
fresh random cases, until a set time has passed; then the number of cases tried, per test.

    python -m tests.hostile.fuzz [--seconds 300] [pytest arguments]

A round is one pytest run of tests/hostile/test_properties.py (the profile's cases per test); the
first failing round ends the fuzzing with its exit status and Hypothesis' report of the case.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

PROPERTIES = Path(__file__).with_name("test_properties.py")


class CountCases:
    """A pytest plugin that counts each case Hypothesis runs, by wrapping the test's inner function
    (`test.hypothesis.inner_test`, the hook Hypothesis offers for wrapping its tests)."""

    def __init__(self) -> None:
        self.cases: collections.Counter[str] = collections.Counter()

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            handle = getattr(getattr(item, "obj", None), "hypothesis", None)
            if handle is None or getattr(handle.inner_test, "counted", False):
                continue  # not a property test, or wrapped in an earlier round
            inner, name = handle.inner_test, item.name

            @functools.wraps(inner)
            def counted(*args: Any, _inner: Any = inner, _name: str = name, **kwargs: Any) -> Any:
                self.cases[_name] += 1
                return _inner(*args, **kwargs)

            counted.counted = True  # type: ignore[attr-defined]
            handle.inner_test = counted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="how long to fuzz (default 300)"
    )
    args, pytest_args = parser.parse_known_args(argv)
    os.environ["HYPOTHESIS_PROFILE"] = "fuzz"
    counter = CountCases()
    started = time.monotonic()
    rounds, status = 0, 0
    while status == 0 and (rounds == 0 or time.monotonic() - started < args.seconds):
        status = int(pytest.main([str(PROPERTIES), "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                                  *pytest_args], plugins=[counter]))  # fmt: skip
        rounds += 1
    elapsed = time.monotonic() - started
    print(f"fuzz: {sum(counter.cases.values())} cases in {rounds} round(s), {elapsed:.0f} s"
          + (" (stopped at a failure)" if status else ""))  # fmt: skip
    for name, count in sorted(counter.cases.items()):
        print(f"  {count:>9}  {name}")
    return status


if __name__ == "__main__":
    sys.exit(main())
