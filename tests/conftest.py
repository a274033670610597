"""Shared by every test folder: how a missing requirement is treated (see tests/requirements.py)."""

from __future__ import annotations

import pytest

from tests.requirements import REQUIRE_ALL_ENV, require_all


def pytest_report_header(config: pytest.Config) -> str:
    """Say in every run's header whether a missing Docker engine, torch or llama.cpp skips or fails."""
    if require_all():
        return f"requirements: {REQUIRE_ALL_ENV}=1, so a missing Docker engine, torch or llama.cpp fails the test"
    return f"requirements: a missing Docker engine, torch or llama.cpp skips the test ({REQUIRE_ALL_ENV}=1 makes it fail, as on CI)"
