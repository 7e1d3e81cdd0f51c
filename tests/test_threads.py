"""engine.threads: one thread-count policy for arsel track, the demo and the ORT backend."""

from __future__ import annotations

import os

import pytest

from engine.threads import engine_threads, physical_cores


@pytest.mark.parametrize(("requested", "cores", "expected"), [(None, 8, 4), (None, 1, 1), (None, None, 1), (3, 8, 3)])
def test_engine_threads_default_to_half_the_cores(monkeypatch: pytest.MonkeyPatch, requested: int | None,
                                                  cores: int | None, expected: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert engine_threads(requested) == expected


def test_engine_threads_refuse_zero() -> None:
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        engine_threads(0)


def test_physical_cores_within_the_usable_ones() -> None:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= physical_cores() <= usable


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_apply_threads_sets_opencv_pool_for_every_backend(backend: str) -> None:
    import cv2
    import torch

    from engine.threads import apply_threads

    before_cv, before_torch = cv2.getNumThreads(), torch.get_num_threads()
    try:
        cv2.setNumThreads(4)
        apply_threads(backend, 1)
        assert cv2.getNumThreads() == 1  # motion and resizes run beside the encoder thread: no oversubscription
        if backend == "torch":
            assert torch.get_num_threads() == 1
    finally:
        cv2.setNumThreads(before_cv)
        torch.set_num_threads(before_torch)
