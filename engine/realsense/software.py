"""A RealSense ``software_device`` fed from numpy: the SDK's real code paths without a camera.

:class:`SoftwareCamera` registers a Z16 depth sensor and an RGB8 colour sensor with the given
intrinsics, depth->colour extrinsics and depth units, pushes numpy images as frames and returns
the framesets an ``rs.syncer`` makes of them; with ``record_to`` an ``rs.recorder`` writes them
to a file that ``RealSenseSource(bag=...)`` plays back. :func:`sphere_scene` draws a synthetic
RGB-D view (a green sphere before a textured wall) and :class:`SyntheticRealSense` streams it
through the camera and the :class:`FrameProcessor` (used by ``demos/realsense_lift.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.realsense.processing import import_rs, rs_intrinsics_from
from engine.types import CameraIntrinsics


class SoftwareCamera:
    """An ``rs.software_device`` with a depth (Z16) and a colour (RGB8) sensor.

    Args:
        depth_intrinsics: of the depth stream (its ``depth_scale_m`` becomes the sensor's
            read-only ``depth_units`` option).
        color_intrinsics: of the colour stream (default: the depth's).
        depth_to_color: 4x4 rigid transform, depth camera -> colour camera, metres (default I).
        fps: nominal rate; frame ``n`` is stamped ``n * 1000 / fps`` ms.
        record_to: record every pushed frame with ``rs.recorder`` (librealsense 2.59 writes only
            ROS2 ``.db3`` files; a ``.bag`` name is refused by the SDK).

    The syncer needs one frame of each stream to learn them: the first :meth:`push` returns None
    (depth and colour come out as two single frames), later ones a depth+colour frameset.
    SDK quirk (librealsense 2.59): timestamps must start near 0, or the syncer never pairs the
    streams; hence the fixed stamping from 0.
    """

    def __init__(self, depth_intrinsics: CameraIntrinsics, color_intrinsics: CameraIntrinsics | None = None,
                 depth_to_color: np.ndarray | None = None, fps: int = 30, record_to: str | Path | None = None,
                 serial: str = "000000000000") -> None:
        rs = import_rs()
        self._rs = rs
        color_intrinsics = color_intrinsics or depth_intrinsics
        self.depth_intrinsics, self.color_intrinsics, self.fps = depth_intrinsics, color_intrinsics, fps
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.name, "arsel software camera")
        self.device.register_info(rs.camera_info.serial_number, serial)
        self._depth_sensor = self.device.add_sensor("Depth")
        self._color_sensor = self.device.add_sensor("Color")
        self._depth_profile = self._add_stream(self._depth_sensor, rs.stream.depth, rs.format.z16, 2,
                                               depth_intrinsics, uid=0)
        self._depth_sensor.add_read_only_option(rs.option.depth_units, float(depth_intrinsics.depth_scale_m))
        self._color_profile = self._add_stream(self._color_sensor, rs.stream.color, rs.format.rgb8, 3,
                                               color_intrinsics, uid=1)
        self._depth_profile.register_extrinsics_to(self._color_profile, _rs_extrinsics(rs, depth_to_color))
        self.device.create_matcher(rs.matchers.default)
        self.recorder = None
        if record_to is not None:
            try:
                self.recorder = rs.recorder(str(record_to), self.device)
            except RuntimeError as exc:
                raise ValueError(f"cannot record to {record_to}: {exc} (this librealsense writes ROS2 .db3 "
                                 "recordings; name the file *.db3)") from None
        self.syncer = rs.syncer(8)
        self.framesets: list[Any] = []  # every frameset the syncer gave out on the last push
        self._depth_sensor.open(self._depth_profile)
        self._color_sensor.open(self._color_profile)
        self._depth_sensor.start(self.syncer)
        self._color_sensor.start(self.syncer)
        self.frames_pushed = 0
        self._open = True

    def _add_stream(self, sensor: Any, stream: Any, fmt: Any, bpp: int, intr: CameraIntrinsics, uid: int) -> Any:
        vs = self._rs.video_stream()
        vs.type, vs.index, vs.uid, vs.fmt, vs.bpp = stream, 0, uid, fmt, bpp
        vs.width, vs.height, vs.fps = intr.width, intr.height, self.fps
        vs.intrinsics = rs_intrinsics_from(intr)
        return sensor.add_video_stream(vs)

    def _frame(self, pixels: np.ndarray, profile: Any, bpp: int) -> Any:
        rs = self._rs
        f = rs.software_video_frame()
        f.pixels, f.bpp, f.stride = pixels, bpp, bpp * pixels.shape[1]
        f.timestamp = self.frames_pushed * 1000.0 / self.fps
        f.domain = rs.timestamp_domain.hardware_clock
        f.frame_number = self.frames_pushed
        f.profile = profile.as_video_stream_profile()
        return f

    @property
    def profiles(self) -> tuple[Any, Any]:
        """The ``(depth, colour)`` ``rs.stream_profile`` s."""
        return self._depth_profile, self._color_profile

    def push(self, depth_raw: np.ndarray | None, rgb: np.ndarray | None, complete: bool = True) -> Any | None:
        """Push one depth (HxW uint16) and/or colour (HxWx3 uint8 RGB) image; the newest frameset.

        Either image may be None to play a dropped frame. Returns the syncer's newest
        ``rs.frameset``; with ``complete`` only one holding both streams, else None (the first
        push, or a push without depth or colour). All framesets this push released (the syncer
        releases a lone frame once a later one shows its partner is missing) are in
        ``self.framesets``.
        """
        if not self._open:
            raise ValueError("SoftwareCamera is closed; create a new one")
        for img, intr, dtype, nd in ((depth_raw, self.depth_intrinsics, np.uint16, 2),
                                     (rgb, self.color_intrinsics, np.uint8, 3)):
            if img is not None and (img.dtype != dtype or img.ndim != nd or img.shape[:2] != (intr.height, intr.width)):
                raise ValueError(f"expected a {intr.height}x{intr.width} {np.dtype(dtype).name} image with "
                                 f"{nd} dims, got {img.dtype} {img.shape}")
        if depth_raw is not None:
            self._depth_sensor.on_video_frame(self._frame(np.ascontiguousarray(depth_raw), self._depth_profile, 2))
        if rgb is not None:
            self._color_sensor.on_video_frame(self._frame(np.ascontiguousarray(rgb), self._color_profile, 3))
        self.frames_pushed += 1
        self.framesets = []
        while fs := self.syncer.poll_for_frames():  # software sensors deliver synchronously
            self.framesets.append(fs)
        if not self.framesets:
            return None
        fs = self.framesets[-1]
        return fs if not complete or (fs.get_depth_frame() and fs.get_color_frame()) else None

    def close(self) -> None:
        """Stop the sensors and finish the recording (idempotent)."""
        if not self._open:
            return
        self._open = False
        for sensor in (self._depth_sensor, self._color_sensor):
            sensor.stop()
            sensor.close()
        self.recorder = None  # the recorder writes its file's index when released

    def __enter__(self) -> "SoftwareCamera":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rs_extrinsics(rs: Any, depth_to_color: np.ndarray | None) -> Any:
    pose = np.eye(4) if depth_to_color is None else np.asarray(depth_to_color, dtype=np.float64)
    if pose.shape != (4, 4) or not np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6):
        raise ValueError(f"depth_to_color must be a 4x4 rigid transform (orthonormal rotation), got {pose.shape}")
    ex = rs.extrinsics()
    ex.rotation = [float(v) for v in pose[:3, :3].T.reshape(-1)]  # librealsense stores R column-major
    ex.translation = [float(v) for v in pose[:3, 3]]
    return ex
