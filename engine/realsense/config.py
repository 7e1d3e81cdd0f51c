"""Typed configuration of the RealSense source: streams, alignment, depth post-filters, recording.

Defaults follow Intel's post-processing guide (``rs-post-processing``) where it has one; every
filter is switchable. Values are validated against the SDK's option ranges (librealsense 2.59),
so a bad value fails here with the allowed range, not later inside the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

RECORD_SUFFIXES = (".bag", ".db3")


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}] (the SDK's range), got {value!r}")


@dataclass(frozen=True, slots=True)
class DepthFilterConfig:
    """Depth post-processing chain, applied in this order before alignment (Intel's order):

    decimation -> depth-to-disparity -> spatial -> temporal -> disparity-to-depth -> hole filling.

    * ``decimation``: downsampling factor (1 = off, the default, so depth keeps its resolution);
    * ``spatial``: edge-preserving smoothing (``spatial_alpha`` 0.25..1, ``spatial_delta`` 1..50
      depth steps, ``spatial_magnitude`` 1..5 iterations; SDK defaults 0.5, 20, 2);
    * ``temporal``: smoothing over frames (``temporal_alpha`` 0..1, ``temporal_delta`` 1..100,
      ``temporal_persistence`` 0..8, SDK defaults 0.4, 20, 3 = "valid in 2 of the last 4");
    * ``hole_filling``: fills zero pixels from neighbours (``hole_filling_mode`` 0 = from left,
      1 = farthest around, 2 = nearest around). Off by default: the filled depth is invented,
      and at object borders it turns into points of the background inside a lifted object;
    * ``disparity_domain``: run spatial/temporal on disparity (recommended: their deltas are then
      uniform in depth error, which grows with the square of the distance).
    """

    decimation: int = 1
    spatial: bool = True
    spatial_alpha: float = 0.5
    spatial_delta: float = 20.0
    spatial_magnitude: int = 2
    temporal: bool = True
    temporal_alpha: float = 0.4
    temporal_delta: float = 20.0
    temporal_persistence: int = 3
    hole_filling: bool = False
    hole_filling_mode: int = 1
    disparity_domain: bool = True

    def __post_init__(self) -> None:
        _check_range("decimation", self.decimation, 1, 8)
        _check_range("spatial_alpha", self.spatial_alpha, 0.25, 1.0)
        _check_range("spatial_delta", self.spatial_delta, 1, 50)
        _check_range("spatial_magnitude", self.spatial_magnitude, 1, 5)
        _check_range("temporal_alpha", self.temporal_alpha, 0.0, 1.0)
        _check_range("temporal_delta", self.temporal_delta, 1, 100)
        _check_range("temporal_persistence", self.temporal_persistence, 0, 8)
        _check_range("hole_filling_mode", self.hole_filling_mode, 0, 2)

    @classmethod
    def off(cls) -> "DepthFilterConfig":
        """No post-processing at all (raw sensor depth, only aligned)."""
        return cls(spatial=False, temporal=False, hole_filling=False)


@dataclass(frozen=True, slots=True)
class RealSenseConfig:
    """How to open a RealSense camera (live) and how to turn its framesets into ``Frame``s.

    ``color_wh``/``depth_wh``: stream sizes (width, height) in pixels; ``fps``: both streams.
    ``serial``: the camera to open (None: the first one found). ``align_to_color``: depth is
    resampled into the colour camera (``Frame.depth_raw`` has the colour size, intrinsics are the
    colour's); False resamples colour into the depth camera instead (intrinsics are the depth's).
    ``record_to``: also record the live session to this file (librealsense >= 2.56 writes ROS2
    ``.db3`` files, older versions ROS1 ``.bag``). ``max_missed_frames``: consecutive waits of
    ``timeout_ms`` without a frameset before the camera counts as disconnected.
    ``max_bad_framesets``: consecutive framesets that cannot be used (the filters or ``rs.align``
    failed on them, or no colour frame) before the stream stops with ``SourceError``.
    """

    color_wh: tuple[int, int] = (640, 480)
    depth_wh: tuple[int, int] = (640, 480)
    fps: int = 30
    serial: str | None = None
    align_to_color: bool = True
    filters: DepthFilterConfig = field(default_factory=DepthFilterConfig)
    record_to: Path | None = None
    max_missed_frames: int = 5
    timeout_ms: int = 1000
    max_bad_framesets: int = 30

    def __post_init__(self) -> None:
        for name in ("color_wh", "depth_wh"):
            wh = getattr(self, name)
            if len(wh) != 2 or min(wh) <= 0:
                raise ValueError(f"{name} must be a positive (width, height), got {wh!r}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.max_missed_frames < 1:
            raise ValueError(f"max_missed_frames must be >= 1, got {self.max_missed_frames}")
        if self.max_bad_framesets < 1:
            raise ValueError(f"max_bad_framesets must be >= 1, got {self.max_bad_framesets}")
        if self.timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {self.timeout_ms}")
        if not isinstance(self.filters, DepthFilterConfig):
            raise TypeError(f"filters must be a DepthFilterConfig, got {type(self.filters).__name__}")
        if self.record_to is not None:
            path = Path(self.record_to)
            if path.suffix.lower() not in RECORD_SUFFIXES:
                raise ValueError(f"record_to must end in {' or '.join(RECORD_SUFFIXES)}, got {path.name!r}")
            object.__setattr__(self, "record_to", path)
