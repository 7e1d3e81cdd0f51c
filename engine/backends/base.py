"""The backend interface shared by the predictor and the stream engine."""

from __future__ import annotations

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
    ``decode``: the five ``engine.contract.DECODER_INPUTS`` as numpy float32 -> ``(iou (B, 4),
    low_res (B, 4, 256, 256))`` numpy float32.
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
