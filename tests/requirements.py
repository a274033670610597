"""What a test needs of the machine: a Docker engine, torch and friends, llama.cpp.

Where one is missing the test is skipped, so a laptop without Docker still runs the rest. CI sets
GAPFORGE_TEST_REQUIRE_ALL=1, and there a missing requirement fails the test instead: a CI machine
that lost its engine or its torch must not pass by running nothing. Skips that are right on CI
too (no GPU, an explicit GAPFORGE_TEST_SKIP_* opt-out, too little disk) call pytest.skip directly.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

REQUIRE_ALL_ENV = "GAPFORGE_TEST_REQUIRE_ALL"


def require_all() -> bool:
    """Whether a missing requirement fails the test (CI) rather than skipping it."""
    return os.environ.get(REQUIRE_ALL_ENV) == "1"


def missing(what: str, fix: str) -> NoReturn:
    """Skip the test (or the module, or every test of a fixture) for want of `what`; fail on CI."""
    __tracebackhide__ = True  # the report points at the test that needs it, not at this line
    message = f"{what} is missing: {fix}"
    if require_all():
        pytest.fail(
            f"{message}. CI requires it: {REQUIRE_ALL_ENV}=1 makes this a failure, not a skip "
            "(unset it to skip tests whose requirements this machine lacks).",
            pytrace=False,
        )
    pytest.skip(message, allow_module_level=True)


def require_module(name: str, fix: str = "") -> ModuleType:
    """The module, imported; like pytest.importorskip, but a failure on CI."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:  # only absence: a module that is there but broken errors
        reason = str(exc)
    # outside the except block, so the report is this one line, not a chain of two exceptions
    missing(
        f"the Python module {name!r}",
        fix or f"{reason}; install the runtime's locked wheels (nox -s test does)",
    )
