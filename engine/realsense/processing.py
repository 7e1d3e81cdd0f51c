"""The hardware-free core of the RealSense source: frameset -> filters -> align -> numpy ``Frame``.

:class:`FrameProcessor` takes an ``rs.frameset`` from any origin (a live pipeline, a recording,
an ``rs.software_device`` in the tests) and runs the SDK's own processing blocks on it, so what
the tests check is what runs on a camera. ``pyrealsense2`` is imported inside the functions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.realsense.config import DepthFilterConfig
from engine.types import CameraIntrinsics, Frame


def import_rs() -> Any:
    """``pyrealsense2``, or an ImportError that says how to install it."""
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        raise ImportError(
            "the RealSense source needs pyrealsense2: pip install pyrealsense2 (x86-64/arm64 wheels for "
            "Linux and Windows; on macOS build librealsense with its Python bindings)"
        ) from exc
    return rs


def intrinsics_from_rs(rs_intrinsics: Any, depth_scale_m: float = 0.001) -> CameraIntrinsics:
    """``rs.intrinsics`` (pixels) -> :class:`CameraIntrinsics` with ``depth_scale_m`` metres/unit.

    Distortion: ``none`` (or all-zero coefficients) gives ``dist=()``; ``brown_conrady`` has
    OpenCV's coefficient order (k1, k2, p1, p2, k3) and is kept. Other models (inverse/modified
    Brown-Conrady, F-theta, Kannala-Brandt) have no OpenCV equivalent in ``dist``: they are dropped
    with a warning (D400 colour streams report zeros, so this only matters for other cameras).
    """
    rs = import_rs()
    coeffs = tuple(float(c) for c in rs_intrinsics.coeffs)
    model = rs_intrinsics.model
    dist: tuple[float, ...] = ()
    if any(coeffs):
        if model == rs.distortion.brown_conrady:
            dist = coeffs
        elif model != rs.distortion.none:
            warnings.warn(f"RealSense distortion model {model} has no OpenCV equivalent; its coefficients "
                          f"{coeffs} are not kept in CameraIntrinsics.dist", stacklevel=2)
    r = rs_intrinsics
    return CameraIntrinsics(
        int(r.width), int(r.height), f32(r.fx), f32(r.fy), f32(r.ppx), f32(r.ppy), f32(depth_scale_m),
        tuple(f32(d) for d in dist),
    )  # fmt: skip


def f32(value: float) -> float:
    """The shortest decimal of a float32 SDK value (0.0010000000475 -> 0.001), for clean JSON."""
    return float(str(np.float32(value)))


def rs_intrinsics_from(intrinsics: CameraIntrinsics) -> Any:
    """:class:`CameraIntrinsics` -> ``rs.intrinsics`` (``dist`` as Brown-Conrady; 5 coefficients)."""
    rs = import_rs()
    if len(intrinsics.dist) not in (0, 5) and any(intrinsics.dist[5:]):
        raise ValueError(f"RealSense intrinsics hold 5 distortion coefficients, got {len(intrinsics.dist)}")
    out = rs.intrinsics()
    out.width, out.height = intrinsics.width, intrinsics.height
    out.fx, out.fy, out.ppx, out.ppy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    coeffs = (list(intrinsics.dist) + [0.0] * 5)[:5]
    out.model = rs.distortion.brown_conrady if any(coeffs) else rs.distortion.none
    out.coeffs = coeffs
    return out


def save_rs_intrinsics(path: str | Path, rs_intrinsics: Any, depth_scale_m: float, fmt: str = "arsel") -> Path:
    """Write ``rs.intrinsics`` as intrinsics JSON (the format calibration and lifting read)."""
    from calibration.intrinsics import save_intrinsics

    return save_intrinsics(path, intrinsics_from_rs(rs_intrinsics, depth_scale_m), fmt)


@dataclass(frozen=True, slots=True)
class ProcessedFrames:
    """One processed frameset.

    ``rgb`` HxWx3 uint8 (None: the frameset had no colour); ``depth_raw`` HxW uint16 on the same
    pixel grid as ``rgb`` (None: no depth in the frameset); ``intrinsics`` describe that grid
    (``depth_scale_m`` = metres per raw unit); ``frame_number``/``timestamp_ns`` of the colour
    frame (of the depth frame without colour).
    """

    rgb: np.ndarray | None
    depth_raw: np.ndarray | None
    intrinsics: CameraIntrinsics | None
    frame_number: int
    timestamp_ns: int

    def to_frame(self, index: int) -> Frame:
        """As an ``engine.types.Frame`` (needs ``rgb``)."""
        if self.rgb is None:
            raise ValueError("a frameset without colour cannot become a Frame; check has rgb first")
        return Frame(index, self.timestamp_ns, self.rgb, self.depth_raw, self.intrinsics)


def color_to_rgb(color_frame: Any) -> np.ndarray:
    """A colour ``rs.video_frame`` -> contiguous HxWx3 uint8 RGB copy (rgb8/bgr8/rgba8/bgra8/yuyv)."""
    rs = import_rs()
    fmt = color_frame.profile.format()
    data = np.asanyarray(color_frame.get_data())
    if fmt == rs.format.rgb8:
        return data.copy()
    if fmt == rs.format.bgr8:
        return np.ascontiguousarray(data[..., ::-1])
    if fmt == rs.format.rgba8:
        return np.ascontiguousarray(data[..., :3])
    if fmt == rs.format.bgra8:
        return np.ascontiguousarray(data[..., 2::-1])
    if fmt == rs.format.yuyv:
        h, w = color_frame.get_height(), color_frame.get_width()
        return cv2.cvtColor(data.reshape(h, w, 2), cv2.COLOR_YUV2RGB_YUYV)
    raise ValueError(f"colour stream format {fmt} is not supported; stream or record colour as rgb8 "
                     "(RealSenseConfig does), bgr8, rgba8, bgra8 or yuyv")


class FrameProcessor:
    """Depth post-filters + alignment + conversion to numpy, with the SDK's processing blocks.

    Stateful (the temporal filter keeps history): use one processor per stream. ``depth_scale_m``
    is the fallback metres/unit for framesets without depth; with depth, the depth frame's own
    units (the sensor's ``depth_units`` option) are used.
    """

    def __init__(self, filters: DepthFilterConfig | None = None, align_to_color: bool = True,
                 depth_scale_m: float = 0.001) -> None:
        rs = import_rs()
        self.filters = filters or DepthFilterConfig()
        self.align_to_color = align_to_color
        self.depth_scale_m = depth_scale_m
        self._blocks = self._build_chain(rs, self.filters)
        self._align = rs.align(rs.stream.color if align_to_color else rs.stream.depth)

    @staticmethod
    def _build_chain(rs: Any, f: DepthFilterConfig) -> list[Any]:
        """The filter blocks in Intel's recommended order (see ``DepthFilterConfig``)."""
        blocks: list[Any] = []
        if f.decimation > 1:
            blocks.append(rs.decimation_filter(float(f.decimation)))
        smooth: list[Any] = []
        if f.spatial:
            sp = rs.spatial_filter()
            sp.set_option(rs.option.filter_smooth_alpha, f.spatial_alpha)
            sp.set_option(rs.option.filter_smooth_delta, f.spatial_delta)
            sp.set_option(rs.option.filter_magnitude, f.spatial_magnitude)
            smooth.append(sp)
        if f.temporal:
            tp = rs.temporal_filter()
            tp.set_option(rs.option.filter_smooth_alpha, f.temporal_alpha)
            tp.set_option(rs.option.filter_smooth_delta, f.temporal_delta)
            tp.set_option(rs.option.holes_fill, f.temporal_persistence)
            smooth.append(tp)
        if smooth and f.disparity_domain:
            smooth = [rs.disparity_transform(True), *smooth, rs.disparity_transform(False)]
        blocks += smooth
        if f.hole_filling:
            blocks.append(rs.hole_filling_filter(f.hole_filling_mode))
        return blocks

    def process(self, frames: Any) -> ProcessedFrames:
        """Filter, align and convert one ``rs.frameset`` (``rs.composite_frame`` also accepted)."""
        if not hasattr(frames, "is_frameset") or not frames.is_frameset():
            raise TypeError(f"FrameProcessor.process needs an rs.frameset, got {type(frames).__name__}")
        fs = frames.as_frameset()
        has_depth, has_color = bool(fs.get_depth_frame()), bool(fs.get_color_frame())
        if has_depth:
            for block in self._blocks:  # blocks act on the depth frame inside the frameset
                fs = block.process(fs).as_frameset()
            if has_color:
                fs = self._align.process(fs)
        depth, color = fs.get_depth_frame(), fs.get_color_frame()
        scale = f32(depth.get_units()) if depth else self.depth_scale_m
        self.depth_scale_m = scale
        grid = color if (color and (self.align_to_color or not depth)) else depth
        intr = intrinsics_from_rs(grid.profile.as_video_stream_profile().get_intrinsics(), scale)
        rgb = color_to_rgb(color) if color else None
        depth_raw = np.asanyarray(depth.get_data()).copy() if depth else None  # the SDK reuses its buffers
        stamp = color if color else depth
        return ProcessedFrames(rgb, depth_raw, intr, int(stamp.get_frame_number()),
                               int(round(stamp.get_timestamp() * 1e6)))
