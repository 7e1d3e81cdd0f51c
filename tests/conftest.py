"""Shared fixtures. ``ARSEL_DATA`` points at the shared real data (``../shared/data`` in CI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def cached_backend() -> Any:
    """LiteMedSAM (real weights, torch, 1 intra-op thread) behind a ``CachingBackend``: encodes are
    shared between the runs of one test module (``test_stream_davis``, ``test_stream_guards``)."""
    import torch

    from engine.backends.torch_backend import TorchBackend
    from engine.models.registry import load_model
    from engine.stream.evaluate import CachingBackend
    from tests.refs import medsam_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: 1 intra-op thread is several times faster here
    yield CachingBackend(TorchBackend(load_model("lite_medsam", medsam_checkpoint()), 256))
    torch.set_num_threads(threads)
