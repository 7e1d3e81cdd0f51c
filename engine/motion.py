"""Global motion between two frames (keyframe -> frame) for carrying prompts and masks across frames.

:func:`estimate_motion` tracks Shi-Tomasi corners with pyramidal Lucas-Kanade optical flow on
downscaled grey frames, keeps tracks that pass a forward-backward check, and fits a homography or an
affine map with RANSAC. The result maps **previous-frame pixels to current-frame pixels at the
resolution of the frames passed in** (not the downscaled one).

Pixel convention: integer coordinates are pixel centres (OpenCV's), x right, y down. Downscaling
maps ``x_full -> (x_full + 0.5) * s - 0.5``, and back.

Frames with known motion (a virtual camera over a still photo) come from
:mod:`engine.synthetic_motion`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

MotionModel = Literal["homography", "affine", "none"]
MODELS = ("homography", "affine", "none")
# A fit is trusted (``ok``) when at least this many tracks agree with it: 4 points determine a
# homography exactly, so 15 leaves RANSAC a real consensus to vote on.
MIN_INLIERS = 15
# LK settings on the downscaled frame (pixels of that frame).
_LK_WIN = (15, 15)
_LK_LEVELS = 3
_LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)


@dataclass(frozen=True, slots=True)
class MotionEstimate:
    """A fitted global motion.

    ``matrix``: 3x3 float64 mapping previous-frame pixels to current-frame pixels at the full (input)
    resolution; identity when no fit exists. ``num_tracked``: corners that survived LK and the
    forward-backward check; ``num_inliers``: those within ``ransac_px`` of the fit;
    ``inlier_ratio``: ``num_inliers / num_tracked`` (0 when nothing was tracked). ``ok``: the fit
    has at least ``min_inliers`` (default :data:`MIN_INLIERS`) inliers and a finite,
    orientation-preserving matrix; do not warp with a matrix whose ``ok`` is False.
    """

    matrix: np.ndarray
    num_tracked: int
    num_inliers: int
    inlier_ratio: float
    ok: bool
    model: str = "homography"

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (3, 3):
            raise ValueError(f"MotionEstimate.matrix must have shape 3x3, got {m.shape}")
        object.__setattr__(self, "matrix", m)


def _as_grey(name: str, img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(
            f"{name} must be an HxW uint8 grey image (or HxWx3 uint8 RGB), got shape {arr.shape} "
            f"dtype {arr.dtype}; convert with cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)"
        )
    return arr


def _identity(model: str, tracked: int = 0) -> MotionEstimate:
    return MotionEstimate(np.eye(3), tracked, 0, 0.0, False, model)


def _track(prev: np.ndarray, cur: np.ndarray, max_corners: int, fb_max_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Corners of ``prev`` and their LK positions in ``cur`` (``(N, 2)`` float32 each), FB-checked."""
    min_distance = max(3.0, 0.01 * max(prev.shape))
    pts0 = cv2.goodFeaturesToTrack(prev, max_corners, qualityLevel=0.01, minDistance=min_distance, blockSize=7)
    if pts0 is None or len(pts0) == 0:
        empty = np.zeros((0, 2), np.float32)
        return empty, empty
    lk = {"winSize": _LK_WIN, "maxLevel": _LK_LEVELS, "criteria": _LK_CRITERIA}
    pts1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, pts0, None, **lk)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, pts1, None, **lk)
    fb = np.linalg.norm((pts0 - back).reshape(-1, 2), axis=1)
    keep = (st1.reshape(-1) == 1) & (st2.reshape(-1) == 1) & (fb < fb_max_px)
    return pts0.reshape(-1, 2)[keep], pts1.reshape(-1, 2)[keep]


def estimate_motion(
    prev_gray: np.ndarray,
    cur_gray: np.ndarray,
    model: MotionModel = "homography",
    downscale_to: int | None = 320,
    max_corners: int = 400,
    ransac_px: float = 2.0,
    min_inliers: int = MIN_INLIERS,
    fb_max_px: float = 0.5,
) -> MotionEstimate:
    """Fit the global motion mapping ``prev_gray`` pixels to ``cur_gray`` pixels.

    ``prev_gray``, ``cur_gray``: ``HxW uint8`` grey (``HxWx3 uint8 RGB`` is converted), same size.
    ``model``: ``"homography"`` (8 dof, a planar or distant scene, or a rotating camera),
    ``"affine"`` (6 dof) or ``"none"`` (identity, ``ok=True``). ``downscale_to``: longest side (px)
    that tracking runs at (None or 0: full size). ``max_corners``: Shi-Tomasi corners tracked.
    ``ransac_px``: RANSAC inlier threshold in full-resolution pixels. ``fb_max_px``: largest
    forward-backward LK error (downscaled pixels) for a track to count. A textureless or black frame
    gives ``ok=False`` with the identity matrix; it never raises for image content.

    LK's two passes are most of the cost (the ``motion`` stage in ``bench/bench_stream.py``).
    """
    if model not in MODELS:
        raise ValueError(f"unknown motion model {model!r}; choose one of {', '.join(MODELS)}")
    prev, cur = _as_grey("prev_gray", prev_gray), _as_grey("cur_gray", cur_gray)
    if prev.shape != cur.shape:
        raise ValueError(f"prev_gray and cur_gray must have the same size, got {prev.shape} and {cur.shape}")
    if ransac_px <= 0 or max_corners < 4:
        raise ValueError(f"need ransac_px > 0 and max_corners >= 4, got {ransac_px} and {max_corners}")
    if model == "none":
        return MotionEstimate(np.eye(3), 0, 0, 0.0, True, model)
    h, w = prev.shape
    scale = 1.0 if not downscale_to else min(1.0, downscale_to / max(h, w))
    if scale < 1.0:
        size_wh = (max(8, round(w * scale)), max(8, round(h * scale)))
        prev = cv2.resize(prev, size_wh, interpolation=cv2.INTER_AREA)
        cur = cv2.resize(cur, size_wh, interpolation=cv2.INTER_AREA)
    p0, p1 = _track(prev, cur, max_corners, fb_max_px)
    tracked = len(p0)
    needed = 4 if model == "homography" else 3
    if tracked < needed:
        return _identity(model, tracked)
    sxy = np.array([prev.shape[1] / w, prev.shape[0] / h], np.float64)
    p0 = (p0.astype(np.float64) + 0.5) / sxy - 0.5
    p1 = (p1.astype(np.float64) + 0.5) / sxy - 0.5
    if model == "homography":
        matrix, mask = cv2.findHomography(p0, p1, cv2.RANSAC, ransac_px, maxIters=2000, confidence=0.995)
    else:
        affine, mask = cv2.estimateAffine2D(p0, p1, method=cv2.RANSAC, ransacReprojThreshold=ransac_px, refineIters=10)
        matrix = None if affine is None else np.vstack([affine, [0.0, 0.0, 1.0]])
    if matrix is None or mask is None or not np.all(np.isfinite(matrix)) or abs(matrix[2, 2]) < 1e-12:
        return _identity(model, tracked)
    matrix = np.asarray(matrix, np.float64) / matrix[2, 2]
    inliers = int(mask.sum())
    orientation_ok = np.linalg.det(matrix[:2, :2]) > 0
    ok = inliers >= min_inliers and bool(orientation_ok)
    return MotionEstimate(matrix, tracked, inliers, inliers / tracked, ok, model)


def warp_points(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to points ``xy`` ``(N, 2)``; returns ``(N, 2)`` float64.

    Points mapped to infinity (homogeneous w == 0) come back as ``inf``/``nan``.
    """
    pts = np.asarray(xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"xy must have shape Nx2, got {pts.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"matrix must have shape 3x3, got {m.shape}")
    hom = pts @ m[:, :2].T + m[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return hom[:, :2] / hom[:, 2:3]


def warp_mask(mask: np.ndarray, matrix: np.ndarray, out_hw: tuple[int, int], fill: float | None = None) -> np.ndarray:
    """Warp ``mask`` (``HxW``) by ``matrix`` (its pixels -> output pixels) into an ``out_hw`` image.

    bool (and integer) masks use nearest-neighbour sampling and keep their dtype; float masks
    (logits or probabilities) use bilinear sampling and come back as float32. ``fill``: value
    outside the source (default: False/0 for bool and integer masks, the mask's minimum for
    floats, i.e. the most confident background present).
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must have shape HxW, got {arr.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"matrix must have shape 3x3, got {m.shape}")
    size_wh = (int(out_hw[1]), int(out_hw[0]))
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        src = arr.astype(np.uint8) if arr.dtype == np.bool_ else arr
        border = 0.0 if fill is None else float(fill)
        out = cv2.warpPerspective(
            src, m, size_wh, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=border
        )
        return out.astype(bool) if arr.dtype == np.bool_ else out
    src = arr.astype(np.float32, copy=False)
    if fill is None:
        border = float(np.min(src)) if src.size else 0.0
    else:
        border = float(fill)
    return cv2.warpPerspective(
        src, m, size_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border
    )


def corner_error_px(matrix_est: np.ndarray, matrix_true: np.ndarray, hw: tuple[int, int]) -> float:
    """Largest distance (px) between where the two homographies put the four corners of an ``hw`` image.

    Corners are pixel centres ``(0, 0), (w-1, 0), (w-1, h-1), (0, h-1)``; ``inf`` when either
    matrix sends a corner to infinity.
    """
    h, w = hw
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    d = np.linalg.norm(warp_points(matrix_est, corners) - warp_points(matrix_true, corners), axis=1)
    return float(np.max(d)) if np.all(np.isfinite(d)) else math.inf


def rescale_homography(matrix: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """The same motion expressed for frames resized from ``from_hw`` to ``to_hw`` (pixel centres kept)."""
    sx, sy = to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]
    s = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)
    out = s @ np.asarray(matrix, np.float64) @ np.linalg.inv(s)
    return out / out[2, 2]
