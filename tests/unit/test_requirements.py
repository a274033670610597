"""A test that lacks Docker, torch or llama.cpp skips on a laptop and fails on CI (GAPFORGE_TEST_REQUIRE_ALL=1)."""

from __future__ import annotations

import pytest

from tests.requirements import REQUIRE_ALL_ENV

pytest_plugins = ["pytester"]

TESTS = '''
import pytest

from tests.requirements import missing, require_module


@pytest.fixture(scope="session")
def engine():
    missing("a Docker engine", "none answers: run 'bash scripts/setup.sh'")


def test_needs_an_engine():
    missing("a Docker engine", "none answers: run 'bash scripts/setup.sh'")


def test_through_a_fixture(engine):
    pass


def test_needs_a_module():
    require_module("gapforge_no_such_module")


def test_without_a_gpu():
    pytest.skip("no GPU here")  # right on CI too: stays a skip


def test_runs():
    assert require_module("json").dumps(1) == "1"
'''
MODULE_LEVEL = '''
from tests.requirements import require_module

torch = require_module("gapforge_no_such_torch")


def test_uses_it():
    pass
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest("from tests.conftest import pytest_report_header  # noqa: F401\n")
    pytester.makepyfile(test_needs=TESTS)
    return pytester


def test_without_the_variable_a_missing_requirement_skips(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ALL_ENV, raising=False)
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines([
        "requirements: a missing Docker engine, torch or llama.cpp skips the test*",
        "*a Docker engine is missing: none answers: run 'bash scripts/setup.sh'",
        "*the Python module 'gapforge_no_such_module' is missing: No module named 'gapforge_no_such_module'*",
    ])  # fmt: skip
    assert "CI requires it" not in result.stdout.str()


def test_under_the_variable_a_missing_requirement_fails(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ALL_ENV, "1")
    result = suite.runpytest("-rsfE")
    # the fixture's failure is an error of the test that uses it; the GPU skip stays a skip
    result.assert_outcomes(passed=1, failed=2, errors=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        f"requirements: {REQUIRE_ALL_ENV}=1, so a missing Docker engine, torch or llama.cpp fails the test",
        f"*a Docker engine is missing: none answers: run 'bash scripts/setup.sh'. CI requires it: {REQUIRE_ALL_ENV}=1 makes this a failure, not a skip*",
        "SKIPPED * no GPU here",
    ])  # fmt: skip
    failures = [line for line in result.stdout.lines if line.startswith(("FAILED", "ERROR"))]
    assert sorted(line.split(" ")[1] for line in failures) == [
        "test_needs.py::test_needs_a_module",
        "test_needs.py::test_needs_an_engine",
        "test_needs.py::test_through_a_fixture",
    ]


def test_a_module_level_requirement_skips_the_module_or_fails_collection(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_torch=MODULE_LEVEL)
    monkeypatch.delenv(REQUIRE_ALL_ENV, raising=False)
    pytester.runpytest().assert_outcomes(skipped=1)
    monkeypatch.setenv(REQUIRE_ALL_ENV, "1")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*the Python module 'gapforge_no_such_torch' is missing*CI requires it*"])
    assert "During handling of the above exception" not in result.stdout.str()


def test_only_1_turns_it_on(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_ALL_ENV, "0")
    suite.runpytest().assert_outcomes(passed=1, skipped=4)
