"""Pre- and post-processing shared by every backend (numpy + OpenCV only).

The torch, ONNX Runtime and TensorRT backends all receive the arrays made here, so a model gives
the same answer whichever runtime runs it.

Frames: the *original* frame is the caller's ``HxW`` image; the *input* frame is that image after
resize-longest-side to the model size ``S`` (``input_hw``, before padding); the *padded* frame is
``SxS`` with the image at the top-left.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import cv2
import numpy as np

PixelNorm = Literal["imagenet", "minmax"]

# SAM's pixel statistics on 0..255 RGB (segment-anything `Sam.pixel_mean` / `pixel_std`).
SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def input_hw_for(original_hw: tuple[int, int], long_side: int) -> tuple[int, int]:
    """Size after resize-longest-side, rounded like segment-anything's ``get_preprocess_shape``."""
    h, w = original_hw
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def check_rgb(image: np.ndarray) -> np.ndarray:
    """Validate an ``HxWx3 uint8 RGB`` image; returns it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array HxWx3 uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be HxWx3 RGB, got shape {image.shape}; convert grey or RGBA images first "
            "(e.g. cv2.cvtColor(img, cv2.COLOR_GRAY2RGB))"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got {image.dtype}; use (img * 255).astype(np.uint8)")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize ``HxWx3 uint8`` so its longest side is ``long_side`` (area filter down, linear up)."""
    h, w = image.shape[:2]
    new_h, new_w = input_hw_for((h, w), long_side)
    if (new_h, new_w) == (h, w):
        return image
    interp = cv2.INTER_AREA if new_h * new_w < h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


def normalize(image: np.ndarray, pixel_norm: PixelNorm) -> np.ndarray:
    """``HxWx3 uint8`` -> ``HxWx3 float32`` normalised as the model was trained.

    ``imagenet``: SAM's ``(x - mean) / std`` on 0..255. ``minmax``: LiteMedSAM's per-image
    ``(x - min) / max(max - min, 1e-8)`` to [0, 1].
    """
    x = image.astype(np.float32)
    if pixel_norm == "imagenet":
        return (x - SAM_PIXEL_MEAN) / SAM_PIXEL_STD
    if pixel_norm == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / max(hi - lo, 1e-8)
    raise ValueError(f"unknown pixel_norm {pixel_norm!r}; expected 'imagenet' or 'minmax'")


def preprocess(image: np.ndarray, long_side: int, pixel_norm: PixelNorm) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB image -> encoder input ``(1, 3, S, S) float32`` (zero padded bottom/right) and ``input_hw``."""
    image = check_rgb(image)
    resized = resize_longest_side(image, long_side)
    x = normalize(resized, pixel_norm)
    h, w = x.shape[:2]
    out = np.zeros((1, 3, long_side, long_side), dtype=np.float32)
    out[0, :, :h, :w] = x.transpose(2, 0, 1)
    return out, (h, w)


def scale_xy(original_hw: tuple[int, int], input_hw: tuple[int, int], uniform: bool = False) -> np.ndarray:
    """Factors ``(sx, sy)`` from the original frame to the input frame.

    Per axis (``input/original`` for each side, as segment-anything's ``ResizeLongestSide``), or
    ``uniform``: one ratio ``S / max(H, W)`` for both axes, as LiteMedSAM's inference recipe.
    """
    if uniform:
        r = max(input_hw) / max(original_hw)
        return np.array([r, r], dtype=np.float32)
    return np.array([input_hw[1] / original_hw[1], input_hw[0] / original_hw[0]], dtype=np.float32)


def points_to_input(
    points_xy: np.ndarray, original_hw: tuple[int, int], input_hw: tuple[int, int], uniform: bool = False
) -> np.ndarray:
    """Map ``(..., 2)`` pixel coordinates from the original frame into the input frame (float32)."""
    return np.asarray(points_xy, dtype=np.float32) * scale_xy(original_hw, input_hw, uniform)


def boxes_to_input(
    boxes_xyxy: np.ndarray, original_hw: tuple[int, int], input_hw: tuple[int, int], uniform: bool = False
) -> np.ndarray:
    """Map ``(..., 4)`` boxes from the original frame into the input frame (float32)."""
    b = np.asarray(boxes_xyxy, dtype=np.float32)
    return (b.reshape(*b.shape[:-1], 2, 2) * scale_xy(original_hw, input_hw, uniform)).reshape(b.shape)


def _bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` float64 weights of 1-D bilinear resampling with half-pixel centres.

    The same weights as ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialias).
    """
    # float32 source coordinates, as torch computes them, so the weights agree to the last bit.
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0.astype(np.float32)).astype(np.float64)
    mat = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(mat, (rows, i0), 1.0 - frac)
    np.add.at(mat, (rows, i1), frac)
    return mat


@lru_cache(maxsize=32)
def _upsample_matrices(
    low_hw: tuple[int, int], long_side: int, input_hw: tuple[int, int], original_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column operators of "bilinear to SxS, crop to input_hw, bilinear to original_hw".

    Both steps are linear, so they compose into ``rows (H, h) @ logits (h, w) @ cols (w, W)``.
    """
    mats = []
    for axis in (0, 1):
        first = _bilinear_matrix(long_side, low_hw[axis])[: input_hw[axis]]
        second = _bilinear_matrix(original_hw[axis], input_hw[axis])
        mats.append((second @ first).astype(np.float32))
    return mats[0], np.ascontiguousarray(mats[1].T)


def postprocess_logits(
    low_res: np.ndarray, input_hw: tuple[int, int], original_hw: tuple[int, int], long_side: int
) -> np.ndarray:
    """Low-res logits ``(B, M, 256, 256)`` -> logits at the original size ``(B, M, H, W)`` float32.

    As segment-anything's ``postprocess_masks``: bilinear up to ``SxS``, crop the padding away,
    bilinear to the original ``HxW`` (composed into two small matrix products).
    """
    b, m = low_res.shape[:2]
    rows, cols = _upsample_matrices(tuple(low_res.shape[2:]), long_side, tuple(input_hw), tuple(original_hw))
    flat = np.asarray(low_res, dtype=np.float32).reshape(b * m, *low_res.shape[2:])
    out = np.matmul(np.matmul(rows, flat), cols)
    return out.reshape(b, m, *original_hw)


def mask_to_box_xyxy(mask: np.ndarray) -> np.ndarray | None:
    """Tight box ``[x0, y0, x1, y1]`` (inclusive pixel indices, float32) of a bool mask, or None."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1], ys[-1]], dtype=np.float32)
