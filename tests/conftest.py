"""Shared fixtures. ``ARSEL_DATA`` points at the shared real data (``../shared/data`` in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path | None:
    env = os.environ.get("ARSEL_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the shared real data; skips the test where it is absent (a user's laptop)."""
    path = _data_dir()
    if path is None:
        if os.environ.get("ARSEL_REQUIRE_DATA") == "1":
            pytest.fail("ARSEL_REQUIRE_DATA=1 but the shared data is missing; set ARSEL_DATA")
        pytest.skip("shared data not found: set ARSEL_DATA=/path/to/shared/data (CI sets it)")
    return path
