"""A synthetic RGB-D scene streamed through the SDK without a camera.

:func:`sphere_scene` draws one view (a green sphere moving before a textured wall) with exact depth;
:class:`SyntheticRealSense` pushes it through a :class:`~engine.realsense.software.SoftwareCamera`
and the :class:`~engine.realsense.processing.FrameProcessor` (used by ``demos/realsense_lift.py``
and the tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from engine.frame_source import FrameSource
from engine.lift.geometry import camera_rays
from engine.realsense.config import DepthFilterConfig
from engine.realsense.processing import FrameProcessor
from engine.realsense.software import SoftwareCamera
from engine.types import CameraIntrinsics, Frame


def default_intrinsics(hw: tuple[int, int] = (240, 320), depth_scale_m: float = 0.001) -> CameraIntrinsics:
    """A D435-like pinhole (69 degrees horizontal field of view) for an ``hw`` image."""
    h, w = hw
    f = 0.5 * w / np.tan(np.radians(69.0) / 2)
    return CameraIntrinsics(w, h, f, f, (w - 1) / 2, (h - 1) / 2, depth_scale_m)


def sphere_scene(index: int, intrinsics: CameraIntrinsics, radius_m: float = 0.1, centre_z_m: float = 0.9,
                 wall_z_m: float = 1.5, speed_m: float = 0.004) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``index`` of a green sphere moving right before a textured grey wall.

    Returns ``(rgb HxWx3 uint8, depth_raw HxW uint16 in units of intrinsics.depth_scale_m,
    sphere mask HxW bool)``. The sphere's centre is at ``(speed_m * index - 0.1, 0, centre_z_m)``
    metres in the camera frame; depth is exact ray-sphere intersection.
    """
    h, w = intrinsics.height, intrinsics.width
    rays = camera_rays(intrinsics)
    dx, dy = rays[..., 0], rays[..., 1]
    c = np.array([speed_m * index - 0.1, 0.0, centre_z_m])
    a = dx**2 + dy**2 + 1.0  # ray (dx, dy, 1) t; t is the depth z
    b = dx * c[0] + dy * c[1] + c[2]
    disc = b**2 - a * (c @ c - radius_m**2)
    mask = disc >= 0
    z = np.full((h, w), wall_z_m)
    z[mask] = (b[mask] - np.sqrt(disc[mask])) / a[mask]
    rng = np.random.default_rng(7)  # the wall's texture is fixed, the sphere moves over it
    tex = cv2.GaussianBlur(rng.uniform(0, 1, (h, w)).astype(np.float32), (0, 0), 2.0)
    tex = cv2.normalize(tex, None, 0, 1, cv2.NORM_MINMAX)
    grey = (70 + 120 * tex).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    shade = np.clip((c[2] - z) / radius_m, 0, 1)  # brighter towards the camera
    rgb[mask] = np.stack([30 + 20 * shade, 140 + 100 * shade, 30 + 20 * shade], -1)[mask].astype(np.uint8)
    depth_raw = np.round(z / intrinsics.depth_scale_m).astype(np.uint16)
    return rgb, depth_raw, mask


class SyntheticRealSense(FrameSource):
    """``count`` frames of :func:`sphere_scene` through a :class:`SoftwareCamera` and a
    :class:`FrameProcessor`: a ``FrameSource`` of aligned RGB-D ``Frame``s with no camera.

    The first pushed pair only teaches the syncer its streams, so ``count`` pushes give
    ``count - 1`` frames (index = pushed frame number, starting at 1).
    """

    def __init__(self, count: int = 60, hw: tuple[int, int] = (240, 320), fps: int = 30,
                 filters: DepthFilterConfig | None = None, record_to: str | Path | None = None) -> None:
        super().__init__()
        if count < 2:
            raise ValueError(f"count must be >= 2 (the first push only primes the syncer), got {count}")
        self.count, self.fps = count, float(fps)
        self.intrinsics = default_intrinsics(hw)
        self._camera = SoftwareCamera(self.intrinsics, fps=fps, record_to=record_to)
        self._processor = FrameProcessor(filters, align_to_color=True, depth_scale_m=self.intrinsics.depth_scale_m)

    def __iter__(self) -> Iterator[Frame]:
        try:
            for i in range(self.count):
                rgb, depth_raw, _ = sphere_scene(i, self.intrinsics)
                fs = self._camera.push(depth_raw, rgb)
                if fs is None:
                    continue
                processed = self._processor.process(fs)
                self.stats.delivered += 1
                yield processed.to_frame(processed.frame_number)
        finally:
            self.close()

    def close(self) -> None:
        self._camera.close()
