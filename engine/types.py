"""Frozen, validated core types shared by the model core, the stream engine and the 3D side.

Conventions: images are ``HxWx3 uint8 RGB`` numpy arrays; sizes are ``*_hw`` (height, width);
points are ``*_xy`` (x right, y down, pixels); boxes are ``*_xyxy``; units are in the names.
Conditions that occur in normal streams (no embedding yet, prompt outside the image, no depth) are
a ``status`` string on results; exceptions are for misconfiguration and programming errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int | None, ...]) -> None:
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        want = "x".join("N" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape {want}, got {tuple(arr.shape)}")


@dataclass(frozen=True, slots=True)
class CameraIntrinsics:
    """Pinhole intrinsics of one camera stream.

    ``fx, fy, cx, cy`` in pixels; ``depth_scale_m`` is metres per raw depth unit
    (0.001 for millimetre depth PNGs and RealSense defaults). ``dist`` holds OpenCV distortion
    coefficients (k1, k2, p1, p2, k3, ...), empty for a rectified stream.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    depth_scale_m: float = 0.001
    dist: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"intrinsics width/height must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if self.depth_scale_m <= 0:
            raise ValueError(f"depth_scale_m must be positive, got {self.depth_scale_m}")

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name
        """3x3 float64 camera matrix."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a stream: ``rgb`` HxWx3 uint8, optional ``depth_raw`` HxW uint16 aligned to rgb."""

    index: int
    timestamp_ns: int
    rgb: np.ndarray
    depth_raw: np.ndarray | None = None
    intrinsics: CameraIntrinsics | None = None

    def __post_init__(self) -> None:
        _check_shape("Frame.rgb", self.rgb, (None, None, 3))
        if self.rgb.dtype != np.uint8:
            raise ValueError(f"Frame.rgb must be uint8 RGB, got {self.rgb.dtype}")
        if self.depth_raw is not None:
            _check_shape("Frame.depth_raw", self.depth_raw, self.rgb.shape[:2])


@dataclass(frozen=True, slots=True)
class Embedding:
    """Image embedding of one (key)frame.

    ``features``: float32 torch tensor or numpy array ``(1, 256, 64, 64)``; ``original_hw`` is the
    image's size, ``input_hw`` its size after resize-longest-side (before padding).
    """

    features: Any
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    frame_index: int = 0

    def __post_init__(self) -> None:
        shape = tuple(self.features.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 256:
            raise ValueError(f"Embedding.features must be (1, 256, h, w), got {shape}")
        for name, hw in (("original_hw", self.original_hw), ("input_hw", self.input_hw)):
            if len(hw) != 2 or min(hw) <= 0:
                raise ValueError(f"Embedding.{name} must be a positive (h, w), got {hw}")


@dataclass(frozen=True, slots=True)
class Prediction:
    """Result of one ``Predictor.predict`` call for B prompts and M masks per prompt.

    ``masks`` bool ``(B, M, H, W)`` at the original size; ``scores`` float32 ``(B, M)`` predicted
    IoU; ``low_res_logits`` float32 ``(B, M, 256, 256)``; ``logits`` float32 ``(B, M, H, W)``
    full-size logits before thresholding (``None`` when not requested).
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    logits: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.masks.ndim != 4 or self.masks.dtype != np.bool_:
            raise ValueError(f"masks must be bool (B, M, H, W), got {self.masks.dtype} {self.masks.shape}")
        _check_shape("scores", self.scores, self.masks.shape[:2])
        _check_shape("low_res_logits", self.low_res_logits, (*self.masks.shape[:2], 256, 256))
        if self.logits is not None:
            _check_shape("logits", self.logits, self.masks.shape)
