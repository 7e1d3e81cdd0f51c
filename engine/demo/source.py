"""Frame sources of ``arsel demo``: the synthetic RGB-D table scene, RealSense (live or ``.bag``),
a plain camera; and camera poses for real RGB-D input from Open3D RGB-D odometry.

The synthetic source is an ordinary ``FrameSource`` (``engine.frame_source``): it yields
``Frame(rgb, depth_raw, intrinsics)`` and keeps the ground truth of the frames it rendered
(``truth(index)``) for the evaluation in ``engine.demo.pipeline``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.demo.scene import TableScene, orbit_poses, project_points
from engine.frame_source import SourceStats
from engine.types import CameraIntrinsics, Frame

SECONDS_PER_OBJECT = 1.3
"""Stream time given to each object: 0.6 s dwell to select (``DwellSelector`` default), then tracking."""


@dataclass(frozen=True, slots=True)
class FrameTruth:
    """Ground truth of one synthetic frame: ``object_ids`` (H, W) uint8, ``pose`` (4, 4)
    camera-to-world, ``z_m`` (H, W) float64 noise-free z-depth (0 = nothing hit)."""

    object_ids: np.ndarray
    pose: np.ndarray
    z_m: np.ndarray

    def visible_points_m(self, object_id: int, intrinsics: CameraIntrinsics, mask: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) float32 world points of ``object_id``'s surface seen in this frame (noise-free),
        only inside ``mask`` (HxW bool) when given."""
        seen = (self.object_ids == object_id) & (self.z_m > 0)
        v, u = np.nonzero(seen if mask is None else seen & mask)
        z = self.z_m[v, u]
        cam = np.stack([(u - intrinsics.cx) * z / intrinsics.fx, (v - intrinsics.cy) * z / intrinsics.fy, z], 1)
        return (cam @ self.pose[:3, :3].T + self.pose[:3, 3]).astype(np.float32)


class SyntheticRGBDSource:
    """``n`` frames of a :class:`TableScene` from a slow orbit, with RealSense-like depth noise.

    Frames are rendered as they are iterated (``render_ms`` records the time of each). The stream's
    clock runs at ``fps`` = min(``max_fps``, n / (objects x 1.3 s)): every object gets enough time for
    a dwell selection and some tracking whatever ``n`` is, so a short run simulates a slower camera.
    """

    def __init__(self, n: int, seed: int = 0, scene: TableScene | None = None, max_fps: float = 30.0) -> None:
        if n < 2:
            raise ValueError(f"the synthetic stream needs at least 2 frames, got {n}; pass --frames N with N >= 2")
        self.scene = scene or TableScene(seed=seed)
        self.n = n
        self.fps = min(max_fps, n / (len(self.scene.objects) * SECONDS_PER_OBJECT))
        self.poses = orbit_poses(n, sweep_deg=min(30.0, 6.0 * n / self.fps))  # 6 deg/s, 30 deg at most
        self.stats = SourceStats()
        self.render_ms: list[float] = []
        self._rng = np.random.default_rng(seed)
        self._truth: dict[int, FrameTruth] = {}

    @property
    def intrinsics(self) -> CameraIntrinsics:
        return self.scene.intrinsics

    def __len__(self) -> int:
        return self.n

    def timestamp_ns(self, index: int) -> int:
        """Stream-clock time of frame ``index`` (ns)."""
        return int(round(index * 1e9 / self.fps))

    def targets_xy(self) -> np.ndarray:
        """(F, K, 2) float64 pixel of each object's centre in each frame (NaN when behind the camera)."""
        centres = np.stack([o.center_m for o in self.scene.objects])
        return np.stack([project_points(centres, pose, self.intrinsics) for pose in self.poses])

    def __iter__(self) -> Iterator[Frame]:
        for i, pose in enumerate(self.poses):
            t0 = time.perf_counter()
            view = self.scene.render(pose, self._rng)
            self.render_ms.append((time.perf_counter() - t0) * 1e3)
            self._truth[i] = FrameTruth(view.object_ids, view.pose, view.z_m)
            self.stats.delivered += 1
            yield Frame(i, self.timestamp_ns(i), view.rgb, view.depth_raw, self.intrinsics)

    def truth(self, index: int, forget: bool = True) -> FrameTruth:
        """Ground truth of a rendered frame; ``forget`` drops it afterwards (bounded memory)."""
        if index not in self._truth:
            raise KeyError(f"frame {index} was not rendered (or its truth was already taken)")
        return self._truth.pop(index) if forget else self._truth[index]

    def close(self) -> None:
        self._truth.clear()


def open_realsense(bag: str | None = None) -> Any:
    """A RealSense ``FrameSource`` (``engine.realsense``): live camera, or playback of ``bag``."""
    try:
        from engine.realsense import RealSenseConfig, RealSenseSource
    except ImportError as exc:
        raise ImportError(
            f"RealSense input needs engine.realsense and pyrealsense2 ({exc}); install pyrealsense2 "
            "(`pip install pyrealsense2`), or run `arsel demo` without --realsense/--bag for the synthetic scene"
        ) from exc
    return RealSenseSource(RealSenseConfig(), bag=bag)  # a bag plays at its own stream sizes


class OdometryPoses:
    """Camera-to-world poses of a real RGB-D stream by chaining frame-to-frame Open3D RGB-D
    odometry (``open3d.t.pipelines.odometry.rgbd_odometry_multi_scale``, hybrid loss).

    ``update(frame)`` returns the pose of ``frame`` (identity for the first), or ``None`` when the
    frame has no depth or odometry failed (counted in ``failures``). A failed frame is dropped: the
    pose stays the last good one and the next frame is registered against the last good frame, so
    no camera motion is lost. After ``reanchor_after`` failures in a row (the view changed too much
    to register against the old frame) the current frame becomes the reference at the last good
    pose (counted in ``reanchors``; the motion during the failures is lost there).
    Depth is downscaled by ``downscale`` for speed (2: 640x480 -> 320x240). Odometry assumes a
    static scene: an object moved by hand can capture it (the camera then "follows" the object).
    Measured on the synthetic orbit (tests/test_demo.py): < 1 cm and < 1 deg per step of ~4 deg.
    """

    def __init__(self, downscale: int = 2, max_depth_m: float = 3.0, max_step_m: float = 0.15,
                 reanchor_after: int = 15) -> None:
        if downscale < 1 or reanchor_after < 1:
            raise ValueError(f"downscale and reanchor_after must be >= 1, got {downscale}, {reanchor_after}")
        self.downscale, self.max_depth_m, self.max_step_m = downscale, max_depth_m, max_step_m
        self.reanchor_after = reanchor_after
        self.pose = np.eye(4)
        self.failures = 0
        self.reanchors = 0
        self._failed_in_row = 0
        self._prev: Any = None

    def _rgbd(self, frame: Frame) -> tuple[Any, Any]:
        import cv2
        import open3d as o3d

        intr: CameraIntrinsics = frame.intrinsics  # type: ignore[assignment]
        s = self.downscale
        h, w = frame.rgb.shape[0] // s, frame.rgb.shape[1] // s
        depth = cv2.resize(frame.depth_raw, (w, h), interpolation=cv2.INTER_NEAREST)  # type: ignore[arg-type]
        grey = cv2.resize(frame.rgb, (w, h), interpolation=cv2.INTER_AREA)
        rgbd = o3d.t.geometry.RGBDImage(
            o3d.t.geometry.Image(np.ascontiguousarray(grey.astype(np.float32) / 255.0)),
            o3d.t.geometry.Image(np.ascontiguousarray(depth.astype(np.float32) * intr.depth_scale_m)),
        )
        K = np.array([[intr.fx / s, 0, (intr.cx + 0.5) / s - 0.5], [0, intr.fy / s, (intr.cy + 0.5) / s - 0.5],
                      [0, 0, 1]])
        return rgbd, o3d.core.Tensor(K)

    def update(self, frame: Frame) -> np.ndarray | None:
        import open3d as o3d

        if frame.depth_raw is None or frame.intrinsics is None:
            return None
        cur, K = self._rgbd(frame)
        if self._prev is None:
            self._prev = cur
            return self.pose.copy()
        odo = o3d.t.pipelines.odometry
        try:
            res = odo.rgbd_odometry_multi_scale(self._prev, cur, K, depth_scale=1.0, depth_max=self.max_depth_m,
                                                method=odo.Method.Hybrid)
            step = np.linalg.inv(res.transformation.numpy())  # source->target maps prev points into cur
        except RuntimeError:
            step = None
        if step is None or not np.all(np.isfinite(step)) or np.linalg.norm(step[:3, 3]) > self.max_step_m:
            self.failures += 1
            self._failed_in_row += 1
            if self._failed_in_row >= self.reanchor_after:
                self._prev, self._failed_in_row = cur, 0
                self.reanchors += 1
            return None  # otherwise the reference stays the last good frame
        self._prev, self._failed_in_row = cur, 0
        self.pose = self.pose @ step
        return self.pose.copy()


def open_input(config: Any) -> tuple[Any, Any]:
    """(frame source, gaze replay). Synthetic: rendered scene + simulated gaze over its objects;
    real input: the source + a centre reticle (``CentreGaze``)."""
    from engine.stream.prompt_sources import GazeReplay

    if config.input == "synthetic":
        from engine.gaze.simulate import simulate_gaze

        source = SyntheticRGBDSource(config.frames, seed=config.seed)
        times = [source.timestamp_ns(i) for i in range(len(source))]
        trace = simulate_gaze(times, source.targets_xy(), seed=config.seed)
        return source, GazeReplay(trace.samples, offset_ns=0)
    if config.input == "camera":
        from engine.stream.sources import CameraSource

        return CameraSource(config.camera), CentreGaze()
    return open_realsense(config.bag if config.input == "bag" else None), CentreGaze()


class CentreGaze:
    """Head gaze for real input: a confident gaze sample at the frame centre every frame, fed to
    ``GazePrompts`` (smoothing + dwell): hold an object in the middle of the view to select it."""

    def __init__(self) -> None:
        from engine.stream.prompt_sources import GazePrompts

        self.prompts = GazePrompts()
        self.samples: list[Any] = []

    @property
    def gaze_xy(self) -> tuple[float, float] | None:
        return self.prompts.gaze_xy

    def events_until(self, timestamp_ns: int, frame_hw: tuple[int, int] = (480, 640)) -> list[Any]:
        from engine.gaze import GazeSample

        sample = GazeSample(int(timestamp_ns), frame_hw[1] / 2, frame_hw[0] / 2, 1.0)
        self.samples.append(sample)
        return self.prompts.push(sample)
