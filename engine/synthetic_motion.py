"""Frames with known motion: a virtual camera moving smoothly over a still photo.

:func:`synthetic_homography_sequence` returns the frames with their true homographies, for the motion
tests and as a frame source with known motion (``engine.stream.sources``). Pixel convention as in
:mod:`engine.motion`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from engine.motion import warp_points


def _centred(params: np.ndarray, centre_xy: tuple[float, float]) -> np.ndarray:
    """Homography of (tx_px, ty_px, rot_rad, log_scale, px, py) about ``centre_xy``."""
    tx, ty, rot, log_s, px, py = params
    cx, cy = centre_xy
    s = math.exp(log_s)
    sr = np.array([[s * math.cos(rot), -s * math.sin(rot), 0], [s * math.sin(rot), s * math.cos(rot), 0], [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [px, py, 1]], np.float64)
    to_c = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    back = np.array([[1, 0, cx + tx], [0, 1, cy + ty], [0, 0, 1]], np.float64)
    h = back @ persp @ sr @ to_c
    return h / h[2, 2]


def synthetic_homography_sequence(
    rgb: np.ndarray,
    n: int,
    seed: int = 0,
    max_shift_px: float = 20.0,
    max_rot_deg: float = 3.0,
    max_scale: float = 0.05,
    max_perspective: float = 2e-5,
    out_hw: tuple[int, int] | None = None,
    noise_std: float = 0.0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames of a virtual camera moving smoothly over the photo ``rgb`` (``HxWx3 uint8``).

    Returns ``(frames, homographies)``: ``n`` frames ``out_hw x 3 uint8`` (default: the photo's
    size) and ``n`` 3x3 float64 matrices; ``homographies[k]`` maps frame-0 pixels to frame-k pixels
    (``homographies[0]`` is the identity). Motion about the frame centre: shift up to
    ``max_shift_px``, rotation up to ``max_rot_deg``, relative scale up to ``max_scale`` (0.05:
    +-5 %), perspective terms up to ``max_perspective`` (1/px). Each parameter follows its own
    sinusoid (random frequency and phase from ``seed``). Frame 0 is the photo zoomed in just enough
    that no frame ever sees past the photo's border. ``noise_std``: Gaussian pixel noise (grey levels).
    """
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"rgb must be an HxWx3 uint8 image, got shape {img.shape} dtype {img.dtype}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if min(max_shift_px, max_rot_deg, max_scale, max_perspective, noise_std) < 0 or max_scale >= 0.5:
        raise ValueError("motion bounds must be >= 0 (and max_scale < 0.5)")
    ph, pw = img.shape[:2]
    oh, ow = (ph, pw) if out_hw is None else (int(out_hw[0]), int(out_hw[1]))
    rng = np.random.default_rng(seed)
    rot_rad, log_scale = math.radians(max_rot_deg), math.log1p(max_scale)
    amp = np.array([max_shift_px, max_shift_px, rot_rad, log_scale, max_perspective, max_perspective])
    omega = rng.uniform(0.05, 0.3, 6)  # rad per frame: a smooth, hand-held-like path
    phase = rng.uniform(0, 2 * math.pi, 6)
    centre = ((ow - 1) / 2, (oh - 1) / 2)
    homs = []
    for k in range(n):
        params = amp * (np.sin(omega * k + phase) - np.sin(phase)) / 2
        homs.append(_centred(params, centre) if k else np.eye(3))
    corners = np.array([[0, 0], [ow - 1, 0], [ow - 1, oh - 1], [0, oh - 1]], np.float64)
    seen = np.concatenate([warp_points(np.linalg.inv(hk), corners) for hk in homs]) - centre
    zoom = max(1e-6, (np.abs(seen[:, 0]).max() + 1) / ((pw - 1) / 2), (np.abs(seen[:, 1]).max() + 1) / ((ph - 1) / 2))
    photo_to_f0 = np.array(
        [[zoom, 0, centre[0] - zoom * (pw - 1) / 2], [0, zoom, centre[1] - zoom * (ph - 1) / 2], [0, 0, 1]]
    )
    frames = []
    for hk in homs:
        frame = cv2.warpPerspective(
            img, hk @ photo_to_f0, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        if noise_std > 0:
            noise = rng.normal(0.0, noise_std, frame.shape)
            frame = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        frames.append(frame)
    return frames, homs
