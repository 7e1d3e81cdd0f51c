"""Shared fixtures. ``ARSEL_DATA`` points at the shared real data (``../shared/data`` in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.reference.weights import shared_data_dir
from tests.skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the shared real data; skips the test where it is absent (a user's laptop)."""
    path = shared_data_dir()
    if path is None:
        if os.environ.get("ARSEL_REQUIRE_DATA") == "1":
            pytest.fail("ARSEL_REQUIRE_DATA=1 but the shared data is missing; set ARSEL_DATA")
        pytest.skip("shared data not found: set ARSEL_DATA=/path/to/shared/data (CI sets it)")
    return path
