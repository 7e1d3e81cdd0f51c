"""Prompt batches over a runtime's maximum (TensorRT profile: 16) are decoded in chunks.

Segment-everything sends ``points_per_batch`` = 64 prompts per decode. ``decode_in_chunks`` is
pure; the TensorRT and ONNX Runtime (TensorRT EP) backends are driven with fake runtimes here, so
these tests need neither a GPU nor TensorRT.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from engine.backends.base import batch_slices, decode_in_chunks
from engine.backends.ort_backend import TRT_EP_MAX_BATCH, OrtBackend
from trt.runtime import TrtBackend

LOW_HW = (256, 256)


def contract_prompts(b: int, n: int = 2) -> tuple[np.ndarray, ...]:
    """Prompt arrays whose first coordinate numbers the prompt (0..B-1), so order is checkable."""
    coords = np.zeros((b, n, 2), np.float32)
    coords[:, 0, 0] = np.arange(b)
    return coords, np.ones((b, n), np.float32), np.zeros((b, 1, *LOW_HW), np.float32), np.zeros(b, np.float32)


class FakeDecoder:
    """A decode that refuses more than ``max_batch`` prompts and echoes each prompt's number."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.batches: list[int] = []

    def outputs(self, coords: Any) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(coords[:, 0, 0], np.float32)
        b = len(ids)
        if not 1 <= b <= self.max_batch:
            raise ValueError(f"decoder takes 1..{self.max_batch} prompts, got {b}")
        self.batches.append(b)
        return np.repeat(ids[:, None], 4, 1), np.broadcast_to(ids[:, None, None, None], (b, 4, 1, 1)).copy()

    def __call__(self, embedding: Any, coords: Any, labels: Any, mask: Any, has_mask: Any) -> tuple[np.ndarray, ...]:
        assert len(coords) == len(labels) == len(mask) == len(has_mask)
        return self.outputs(coords)


def assert_in_order(iou: np.ndarray, low: np.ndarray, b: int) -> None:
    assert iou.shape == (b, 4) and low.shape[0] == b
    assert iou[:, 0].tolist() == list(range(b)) and low[:, 0, 0, 0].tolist() == list(range(b))


@pytest.mark.parametrize(
    ("batch", "max_batch", "sizes"),
    [(64, 16, [16, 16, 16, 16]), (17, 16, [16, 1]), (16, 16, [16]), (5, 16, [5]), (7, 3, [3, 3, 1]), (0, 4, [])],
)
def test_batch_slices(batch: int, max_batch: int, sizes: list[int]) -> None:
    slices = batch_slices(batch, max_batch)
    assert [s.stop - s.start for s in slices] == sizes
    assert [i for s in slices for i in range(s.start, s.stop)] == list(range(batch))


def test_batch_slices_rejects_a_zero_maximum() -> None:
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        batch_slices(4, 0)


@pytest.mark.parametrize("batch", [1, 16, 17, 64])
def test_decode_in_chunks_joins_chunks_in_order(batch: int) -> None:
    fake = FakeDecoder(16)
    iou, low = decode_in_chunks(fake, 16, "embedding", *contract_prompts(batch))
    assert_in_order(iou, low, batch)
    assert fake.batches == [len(range(s.start, s.stop)) for s in batch_slices(batch, 16)]


# --- TensorRT -------------------------------------------------------------------------------------
def fake_trt_backend(max_batch: int = 16) -> tuple[TrtBackend, FakeDecoder]:
    """A ``TrtBackend`` without engines: ``decode_tensors`` is a fake returning (CPU) torch tensors."""
    backend = TrtBackend.__new__(TrtBackend)
    backend.dec = SimpleNamespace(max_batch=max_batch, max_points=16)  # type: ignore[assignment]
    fake = FakeDecoder(max_batch)

    def decode_tensors(embedding: Any, coords: Any, *rest: Any) -> tuple[torch.Tensor, torch.Tensor]:
        iou, low = fake(embedding, coords, *rest)
        return torch.from_numpy(iou), torch.from_numpy(low)

    backend.decode_tensors = decode_tensors  # type: ignore[method-assign]
    return backend, fake


def test_trt_decode_splits_a_segment_everything_batch() -> None:
    backend, fake = fake_trt_backend()
    iou, low = backend.decode(None, *contract_prompts(64))
    assert fake.batches == [16, 16, 16, 16]
    assert isinstance(iou, np.ndarray) and isinstance(low, np.ndarray)
    assert_in_order(iou, low, 64)
    prompts = [torch.from_numpy(a) for a in contract_prompts(20)]  # torch prompts slice the same way
    assert_in_order(*backend.decode(None, *prompts), 20)


def test_trt_decode_tensors_still_refuses_more_than_the_profile() -> None:
    backend = TrtBackend.__new__(TrtBackend)
    backend.dec = SimpleNamespace(max_batch=16, max_points=16)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="1..16 prompts.*use decode"):
        backend.decode_tensors(None, *contract_prompts(64))


# --- ONNX Runtime with the TensorRT execution provider -------------------------------------------
def fake_ort_backend(max_batch: int | None) -> tuple[OrtBackend, FakeDecoder]:
    """An ``OrtBackend`` on a fake GPU session whose bound decode takes at most 16 prompts."""
    backend = OrtBackend.__new__(OrtBackend)
    backend.on_gpu, backend.max_batch = True, max_batch
    fake = FakeDecoder(TRT_EP_MAX_BATCH)
    backend._decode_bound = lambda embedding, prompts: fake(embedding, *prompts)  # type: ignore[method-assign]
    return backend, fake


def test_ort_trt_ep_decode_splits_large_batches() -> None:
    backend, fake = fake_ort_backend(TRT_EP_MAX_BATCH)
    assert_in_order(*backend.decode(None, *contract_prompts(64)), 64)
    assert fake.batches == [16, 16, 16, 16]
    backend, fake = fake_ort_backend(None)  # CUDA/CPU providers: one call whatever B
    with pytest.raises(ValueError, match="1..16 prompts, got 64"):
        backend.decode(None, *contract_prompts(64))
