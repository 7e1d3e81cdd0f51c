"""CI skip policy (pytest hooks, imported by ``tests/conftest.py``).

With ``ARSEL_REQUIRE_DATA=1`` (CI) a skipped test or module is reported as a FAILURE, unless it is
a hardware skip: the test carries one of ``HARDWARE_MARKERS`` (``gpu``, ``tensorrt``,
``realsense``) or its reason starts with ``HARDWARE_PREFIX``. So a missing reference package,
weights wheel, data file or optional dependency cannot turn CI green by skipping. xfail is left alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pytest

HARDWARE_MARKERS = frozenset({"gpu", "tensorrt", "realsense"})
HARDWARE_PREFIX = "hardware: "


def required() -> bool:
    return os.environ.get("ARSEL_REQUIRE_DATA") == "1"


def skip_reason(longrepr: Any) -> str:
    """The message of a skip report (``(path, line, "Skipped: msg")`` or a plain string)."""
    text = str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)
    return text.removeprefix("Skipped: ")


def is_hardware_skip(markers: Iterable[str], reason: str) -> bool:
    return bool(HARDWARE_MARKERS.intersection(markers)) or reason.startswith(HARDWARE_PREFIX)


def _refusal(reason: str) -> str:
    return (f"ARSEL_REQUIRE_DATA=1 (CI): this skip is a failure: {reason!r}. Only hardware skips may skip in "
            f"CI (markers {', '.join(sorted(HARDWARE_MARKERS))}, or a reason starting {HARDWARE_PREFIX!r}); "
            "install the missing package / data, or fix the test.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    rep = outcome.get_result()
    if not required() or not rep.skipped or hasattr(rep, "wasxfail"):
        return
    reason = skip_reason(rep.longrepr)
    if not is_hardware_skip((m.name for m in item.iter_markers()), reason):
        rep.outcome, rep.longrepr = "failed", _refusal(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    rep = outcome.get_result()
    if required() and rep.skipped:
        reason = skip_reason(rep.longrepr)
        if not is_hardware_skip((), reason):
            rep.outcome, rep.longrepr = "failed", _refusal(reason)
