"""The backend interface shared by the predictor and the stream engine, and ``decode_in_chunks`` for
runtimes with a maximum prompt batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """What a backend runs on: ``runtime`` (torch/onnxruntime/tensorrt), ``device``, ``precision``."""

    runtime: str
    device: str
    precision: str
    detail: str = ""


@runtime_checkable
class Backend(Protocol):
    """Encoder + decoder of one model on one runtime.

    ``encode``: ``image`` float32 ``(1, 3, S, S)`` -> embedding ``(1, 256, 64, 64)`` (a numpy array
    or a runtime-native tensor that ``decode`` of the same backend accepts).
    ``decode``: the five ``engine.contract.DECODER_INPUTS`` as numpy float32 -> ``(scores (B, 4),
    low_res_logits (B, 4, 256, 256))`` numpy float32.
    Optional, read with ``getattr``: ``supports_roi`` (``decode`` takes ``roi=``, an upscaling
    window) and ``prepare_image_side(embedding)`` (the stream's keyframe encoder calls it right
    after ``encode``, to do the decoder's per-embedding work off the per-frame path).
    """

    input_size: int

    def encode(self, image: np.ndarray) -> Any: ...

    def decode(
        self,
        embedding: Any,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> BackendInfo: ...


DecodeFn = Callable[[Any, Any, Any, Any, Any], tuple[np.ndarray, np.ndarray]]


def batch_slices(batch: int, max_batch: int) -> list[slice]:
    """Consecutive slices of at most ``max_batch`` prompts covering ``range(batch)`` (``batch >= 0``)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return [slice(start, min(start + max_batch, batch)) for start in range(0, batch, max_batch)]


def decode_in_chunks(
    decode: DecodeFn,
    max_batch: int,
    embedding: Any,
    point_coords: Any,
    point_labels: Any,
    mask_input: Any,
    has_mask_input: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``decode`` over a prompt batch larger than a runtime takes (a TensorRT profile's max batch).

    Calls ``decode(embedding, *prompts[s])`` for each ``batch_slices(B, max_batch)`` slice of the
    prompt arrays (numpy or torch, sliced on axis 0) and concatenates the numpy outputs along the
    batch: ``(scores (B, 4), low_res_logits (B, 4, 256, 256))``. ``decode`` must return host arrays that stay
    valid across calls (copies, not views of reused buffers).
    """
    prompts = (point_coords, point_labels, mask_input, has_mask_input)
    batch = int(point_coords.shape[0])
    if batch <= max_batch:  # one call, no copies (also B = 0, which the runtime reports)
        return decode(embedding, *prompts)
    parts = [decode(embedding, *(p[s] for p in prompts)) for s in batch_slices(batch, max_batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
