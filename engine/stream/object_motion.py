"""Keyframe->frame motion for the stream engine: global (camera) and per object.

A global homography (``engine.motion.estimate_motion``) follows the background; an object that
moves on its own (a swan the camera pans with) does not follow it, and warping its keyframe mask
by the background motion can be worse than not warping at all. So each object gets its own fit, from Shi-Tomasi
corners inside its keyframe mask (dilated) tracked with pyramidal LK (forward-backward checked)
and RANSAC; the global fit is the fallback when an object has too few corners, and what the
keyframe policy watches when no object has its own (tests/test_stream_davis.py holds the DAVIS J this gives).

All work runs on grey frames downscaled to ``downscale_to`` px on the long side; matrices map
full-resolution keyframe pixels to full-resolution frame pixels (pixel centres, as engine.motion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from engine.motion import estimate_motion, rescale_homography, warp_mask
from engine.stream.events import Prompt
from engine.stream.scheduler import corner_displacement_px

MotionSource = Literal["identity", "global", "object"]
_IDENTITY = np.eye(3, dtype=np.float64)
IDENTITY_PX = 1e-3  # a fit moving no image corner further than this (px) counts as no motion
_LK = {"winSize": (15, 15), "maxLevel": 3, "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}


@dataclass(frozen=True, slots=True)
class MotionInfo:
    """A keyframe->frame fit: 3x3 float64 ``matrix`` (identity when not ``ok``), its quality,
    the largest image-corner displacement it implies (px), and where it came from."""

    matrix: np.ndarray
    ok: bool
    inlier_ratio: float
    corner_px: float
    source: MotionSource = "identity"

    @classmethod
    def identity(cls) -> "MotionInfo":
        return cls(_IDENTITY, True, 1.0, 0.0, "identity")

    @property
    def is_identity(self) -> bool:
        """No motion worth warping for: the identity, or a fit moving no image corner by more than
        ``IDENTITY_PX`` (a still scene's fit is identity only up to float rounding; warping by it
        would resample the mask)."""
        return self.source == "identity" or self.corner_px <= IDENTITY_PX


class MotionEstimator:
    """Global and per-object keyframe->frame motion on downscaled grey frames.

    ``model``: "homography", "affine" or "none" (always identity). ``min_points``: inliers an
    object fit needs to be used (else the caller falls back to the global fit).
    """

    def __init__(self, model: str, downscale_to: int = 320, min_points: int = 10, ransac_px: float = 3.0,
                 max_corners: int = 200) -> None:
        if model not in ("homography", "affine", "none"):
            raise ValueError(f"motion model must be 'homography', 'affine' or 'none', got {model!r}")
        if downscale_to < 32:
            raise ValueError(f"downscale_to must be >= 32 px, got {downscale_to}")
        self.model, self.downscale_to, self.min_points, self.ransac_px = model, downscale_to, min_points, ransac_px
        self.max_corners = max_corners
        # per-keyframe work reused by every frame fitted to it: each region's corners in the keyframe
        # (keyed by the arrays themselves: a keyframe's grey image and an object's keyframe region
        # never change once made; OpenCV 5's Python binding takes no prebuilt LK pyramids)
        self._corners: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []

    def _region_corners(self, key_small: np.ndarray, region_small: np.ndarray) -> np.ndarray | None:
        for key, region, p0 in self._corners:
            if key is key_small and region is region_small:
                return p0
        region = cv2.dilate(region_small.astype(np.uint8), np.ones((5, 5), np.uint8))
        p0 = cv2.goodFeaturesToTrack(key_small, self.max_corners, qualityLevel=0.01, minDistance=3, mask=region, blockSize=5)
        self._corners = [c for c in self._corners if c[0] is key_small][-7:] + [(key_small, region_small, p0)]
        return p0

    def small_hw(self, full_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = full_hw
        s = min(1.0, self.downscale_to / max(h, w))
        return max(8, round(h * s)), max(8, round(w * s))

    def small_grey(self, rgb: np.ndarray) -> np.ndarray:
        """``HxWx3 uint8 RGB`` -> downscaled ``hxw uint8`` grey (the motion resolution)."""
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        h, w = self.small_hw(grey.shape[:2])
        return grey if (h, w) == grey.shape else cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)

    def small_mask(self, mask: np.ndarray) -> np.ndarray:
        """Full-size bool mask -> bool mask at the motion resolution."""
        h, w = self.small_hw(mask.shape[:2])
        return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)

    def keyframe_region(self, mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """An object's region in the keyframe (bool, motion resolution) from its ``mask`` (bool
        ``(H, W)``, a frame of the keyframe's size) and ``matrix`` (keyframe -> that frame, full
        resolution): the mask warped back into the keyframe, for an object with no mask of its own
        on the keyframe frame (prompted before the first embedding, or added later)."""
        return self.small_mask(warp_mask(np.asarray(mask, bool), np.linalg.inv(matrix), mask.shape[:2]))

    def _info(self, matrix_small: np.ndarray, ok: bool, ratio: float, small_hw: tuple[int, int],
              full_hw: tuple[int, int], source: MotionSource) -> MotionInfo:
        if not ok:
            return MotionInfo(_IDENTITY, False, ratio, 0.0, source)
        full = rescale_homography(matrix_small, small_hw, full_hw) if small_hw != full_hw else matrix_small
        return MotionInfo(full, True, ratio, corner_displacement_px(full, full_hw), source)

    def global_motion(self, key_small: np.ndarray, cur_small: np.ndarray, full_hw: tuple[int, int]) -> MotionInfo:
        """Camera motion keyframe->frame (``engine.motion.estimate_motion`` on the small frames)."""
        if self.model == "none":
            return MotionInfo.identity()
        est = estimate_motion(key_small, cur_small, model=self.model, downscale_to=None)  # type: ignore[arg-type]
        return self._info(est.matrix, bool(est.ok), float(est.inlier_ratio), key_small.shape, full_hw, "global")

    def region_motion(
        self, key_small: np.ndarray, cur_small: np.ndarray, region_small: np.ndarray, full_hw: tuple[int, int]
    ) -> MotionInfo | None:
        """Motion of the pixels in ``region_small`` (bool, keyframe, motion resolution); None when
        the region has fewer than ``min_points`` trackable corners agreeing on one fit."""
        if self.model == "none":
            return MotionInfo.identity()
        p0 = self._region_corners(key_small, region_small)
        if p0 is None or len(p0) < self.min_points:
            return None
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(key_small, cur_small, p0, None, **_LK)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(cur_small, key_small, p1, None, **_LK)
        fb = np.linalg.norm((p0 - back).reshape(-1, 2), axis=1)
        keep = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < 0.5)
        q0, q1 = p0.reshape(-1, 2)[keep].astype(np.float64), p1.reshape(-1, 2)[keep].astype(np.float64)
        if len(q0) < self.min_points:
            return None
        thr = self.ransac_px * key_small.shape[1] / full_hw[1]  # full-resolution px -> small px
        if self.model == "homography":
            matrix, inl = cv2.findHomography(q0, q1, cv2.RANSAC, thr, maxIters=2000, confidence=0.995)
        else:
            aff, inl = cv2.estimateAffine2D(q0, q1, method=cv2.RANSAC, ransacReprojThreshold=thr, refineIters=10)
            matrix = None if aff is None else np.vstack([aff, [0.0, 0.0, 1.0]])
        if matrix is None or inl is None or not np.all(np.isfinite(matrix)) or abs(matrix[2, 2]) < 1e-12:
            return None
        matrix = matrix / matrix[2, 2]
        n_in = int(inl.sum())
        if n_in < self.min_points or np.linalg.det(matrix[:2, :2]) <= 0:
            return None
        return self._info(matrix, True, n_in / len(q0), key_small.shape, full_hw, "object")


def _apply_h(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points with a 3x3 homography (float32 out)."""
    pts = cv2.perspectiveTransform(np.asarray(xy, np.float64).reshape(-1, 1, 2), matrix)
    return pts.reshape(-1, 2).astype(np.float32)


def map_prompt(prompt: Prompt, matrix: np.ndarray, image_hw: tuple[int, int]) -> Prompt | None:
    """Map a prompt through ``matrix`` into an ``image_hw`` image: the box becomes the bounding box
    of its warped corners, clipped; points outside are dropped. None when nothing usable is left."""
    if np.array_equal(matrix, _IDENTITY) and _inside(prompt, image_hw):
        return prompt
    h, w = image_hw
    box = points = labels = None
    if prompt.box_xyxy is not None:
        x0, y0, x1, y1 = prompt.box_xyxy
        c = _apply_h(matrix, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        box = np.array([*np.clip(c.min(0), 0, [w, h]), *np.clip(c.max(0), 0, [w, h])], np.float32)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            box = None
    if prompt.points_xy is not None:
        p = _apply_h(matrix, prompt.points_xy)
        keep = (p[:, 0] >= 0) & (p[:, 0] <= w) & (p[:, 1] >= 0) & (p[:, 1] <= h)
        if keep.any():
            points, labels = p[keep], prompt.labels[keep]  # type: ignore[index]
    if box is None and (labels is None or not np.any(labels == 1)):
        return None
    return Prompt(points, labels, box, prompt.source)


def _inside(prompt: Prompt, image_hw: tuple[int, int]) -> bool:
    h, w = image_hw
    arrs = [a.reshape(-1, 2) for a in (prompt.points_xy, prompt.box_xyxy) if a is not None]
    xy = np.concatenate(arrs)
    return bool(np.all((xy >= 0) & (xy <= [w, h])))
