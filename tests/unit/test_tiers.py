"""The test tiers (tests/conftest.py) and the durations report (scripts/test_times.py) that CI prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import TESTS, _could_select, tier_of


def _test_times() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "test_times.py"
    spec = importlib.util.spec_from_file_location("test_times", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["test_times"] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("where", "marked", "tier"),
    [
        ("unit/test_x.py", set(), "unit"),
        ("hostile/test_x.py", set(), "unit"),
        ("runtime/test_x.py", set(), "runtime"),
        ("integration/test_x.py", {"integration"}, "integration"),
        ("integration/test_x.py", {"integration", "slow"}, "slow"),  # slow overrides the folder
        ("elsewhere/test_x.py", set(), None),  # a folder of no tier
        ("elsewhere/test_x.py", {"unit"}, None),  # a marker alone gives no tier
        ("unit/test_x.py", {"integration"}, None),  # a marker that contradicts the folder
    ],
)
def test_tier_comes_from_the_folder_and_slow_overrides_it(
    where: str, marked: set[str], tier: str | None
) -> None:
    assert tier_of(TESTS / where, marked) == tier


@pytest.mark.parametrize(
    ("expression", "tier", "could"),
    [
        ("unit", "unit", True),
        ("unit", "runtime", False),  # so `-m unit` never imports tests/runtime (torch)
        ("integration and not slow", "integration", True),
        ("integration and not slow", "runtime", False),
        ("slow", "runtime", True),  # any folder may hold a slow test
        ("not slow", "runtime", True),
        ("(gpu)", "runtime", True),  # a non-tier marker may be on any test
        ("unit and not (gpu)", "runtime", False),
        ("timeout(1800) or unit", "runtime", True),
    ],
)
def test_a_folder_is_skipped_only_when_no_test_in_it_could_match(
    expression: str, tier: str, could: bool
) -> None:
    assert _could_select(expression, tier) is could


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">
<testsuite name="pytest" errors="0" failures="1" skipped="1" tests="3" time="{wall}">
<testcase classname="tests.{tier}.test_a" name="test_quick" time="0.5" />
<testcase classname="tests.{tier}.test_a" name="test_slow" time="{slow}"><failure message="x"/></testcase>
<testcase classname="tests.{tier}.test_b" name="test_skipped" time="0.0"><skipped message="y"/></testcase>
</testsuite></testsuites>"""


def test_durations_list_the_slowest_across_tiers_and_each_tiers_totals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "integration.xml").write_text(
        JUNIT.format(tier="integration", wall=700, slow=610.0)
    )
    (tmp_path / "unit.xml").write_text(JUNIT.format(tier="unit", wall=20, slow=12.25))
    assert _test_times().main([str(tmp_path), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == [
        "10m10s", "[integration]", "tests.integration.test_a::test_slow", "(failed)"
    ]  # fmt: skip
    assert lines[2].split()[:2] == ["12.2s", "[unit]"]
    assert "test_quick" not in "\n".join(lines)  # only the top 2
    tiers = [line.split() for line in lines[4:]]
    # in the order nox runs them, whatever the file names' order
    assert [t[0] for t in tiers] == ["unit", "integration", "all"]
    assert tiers[0][1:3] == ["3", "tests"] and tiers[0][3] == "12.8s"  # summed
    assert tiers[1][5] == "11m40s"  # the suite's wall time
    assert tiers[2][1] == "6" and tiers[2][3] == "12m00s"


def test_a_broken_junit_file_is_named_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "unit.xml").write_text("<testsuites><testsuite")
    assert _test_times().main([str(tmp_path)]) == 2
    assert f"{tmp_path / 'unit.xml'}: not readable JUnit XML" in capsys.readouterr().err


def test_no_junit_files_is_said_and_is_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _test_times().main([str(tmp_path / "missing")]) == 0
    assert "no JUnit XML" in capsys.readouterr().out
