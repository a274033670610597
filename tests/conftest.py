"""Shared by every test folder: each test's tier (see below), and how a missing requirement is
treated (see tests/requirements.py)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.requirements import REQUIRE_ALL_ENV, require_all

TESTS = Path(__file__).resolve().parent
FOLDER_TIERS = {
    "unit": "unit",
    "hostile": "unit",
    "runtime": "runtime",
    "integration": "integration",
}
"""The tier of each test folder: nox runs each tier as its own pytest run (unit in parallel)."""
SLOW = "slow"
"""Overrides the folder: the few tests that alone take a quarter of an hour (`nox -s test-all`)."""
TIERS = (*sorted(set(FOLDER_TIERS.values())), SLOW)


def pytest_report_header(config: pytest.Config) -> str:
    """Say in every run's header whether a missing Docker engine, torch or llama.cpp skips or fails."""
    if require_all():
        return f"requirements: {REQUIRE_ALL_ENV}=1, so a missing Docker engine, torch or llama.cpp fails the test"
    return f"requirements: a missing Docker engine, torch or llama.cpp skips the test ({REQUIRE_ALL_ENV}=1 makes it fail, as on CI)"


def tier_of(path: Path, marked: set[str]) -> str | None:
    """The tier of a test in `path` that carries the tier markers `marked`: `slow` if marked so, else
    its folder's; None where neither decides (a folder of no tier) or they disagree."""
    if SLOW in marked:
        return SLOW
    try:
        folder = path.resolve().relative_to(TESTS).parts[0]
    except ValueError:
        return None
    tier = FOLDER_TIERS.get(folder)
    return tier if tier is not None and marked <= {tier} else None


def _markers(present: set[str]) -> Callable[..., bool]:
    """A matcher for pytest's marker expressions: true for the names in `present` (keyword
    arguments, as in `-m "mark(x=1)"`, are ignored)."""

    def matches(name: str, /, **_: object) -> bool:
        return name in present

    return matches


def _could_select(expression: str, tier: str) -> bool:
    """Whether the marker expression `-m expression` can select any test of a folder of `tier`: true
    for some truth of `slow` and of every marker that is not a tier. True where it cannot tell."""
    try:
        from _pytest.mark.expression import Expression  # pytest's own parser of -m

        compiled = Expression.compile(expression)
    except Exception:  # another pytest, or an expression pytest itself will refuse: decide nothing
        return True
    # Every name in it, less a mark's keyword arguments `name(x=1)` (evaluating would skip the names
    # that `and`/`or` short-circuit past).
    names = set(re.findall(r"[^\s()]+", re.sub(r"(?<=[^\s(])\([^)]*\)", " ", expression))) - {
        "and",
        "or",
        "not",
    }
    free = sorted((names - set(FOLDER_TIERS.values())) | {SLOW})
    if len(free) > 12:
        return True
    for truth in itertools.product((False, True), repeat=len(free)):
        chosen = {name for name, on in zip(free, truth, strict=True) if on} | {tier}
        if compiled.evaluate(_markers(chosen)):
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m`, a tier folder none of whose tests can match is not even imported: the unit tier
    runs in the builder's venv alone, without the runtime's torch that tests/runtime imports."""
    expression = config.getoption("markexpr", "")
    if not expression or collection_path.parent != TESTS:
        return None
    tier = FOLDER_TIERS.get(collection_path.name)
    if tier is None or _could_select(expression, tier):
        return None
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier, so `-m unit` (etc.) selects it; a test of no tier, or one whose
    own tier marker contradicts its folder, fails the collection: a new folder must be given a tier
    here, not silently run by no tier's session."""
    untiered = []
    for item in items:
        marked = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        tier = tier_of(item.path, marked)
        if tier is None:
            untiered.append(f"{item.nodeid} (markers: {', '.join(sorted(marked)) or 'none'})")
        elif tier not in marked:
            item.add_marker(tier)
    if untiered:
        raise pytest.UsageError(
            f"{len(untiered)} test(s) have no tier, or a tier marker that contradicts their folder: "
            f"{'; '.join(untiered[:10])}. A test's tier comes "
            f"from its folder ({', '.join(f'tests/{k}: {v}' for k, v in FOLDER_TIERS.items())}) or "
            f"its '{SLOW}' marker; move the test, or give its folder a tier in tests/conftest.py."
        )
