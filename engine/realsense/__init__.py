"""RealSense RGB-D input: live camera or recording -> aligned ``Frame``s with intrinsics.

``pyrealsense2`` is imported inside the functions that use it, so ``import engine.realsense``
works without it and a missing library fails at the point of use with an install hint.

- :class:`RealSenseConfig`, :class:`DepthFilterConfig` typed configuration;
- :class:`RealSenseSource` the ``FrameSource`` (live, ``.bag``/``.db3`` playback, recording);
- :class:`FrameProcessor` frameset -> filters -> align -> numpy (testable without hardware);
- :func:`intrinsics_from_rs`, :func:`save_rs_intrinsics` the shared intrinsics JSON;
- :class:`SoftwareCamera`, :class:`SyntheticRealSense`, :func:`sphere_scene` an SDK
  ``software_device`` fed from numpy (tests, demos, replaying your own RGB-D data).
"""

from engine.realsense.config import DepthFilterConfig, RealSenseConfig
from engine.realsense.processing import (
    FrameProcessor,
    ProcessedFrames,
    intrinsics_from_rs,
    rs_intrinsics_from,
    save_rs_intrinsics,
)
from engine.realsense.software import SoftwareCamera
from engine.realsense.synthetic import SyntheticRealSense, default_intrinsics, sphere_scene
from engine.realsense.source import RealSenseSource, RealSenseStats, list_devices

__all__ = [
    "DepthFilterConfig",
    "FrameProcessor",
    "ProcessedFrames",
    "RealSenseConfig",
    "RealSenseSource",
    "RealSenseStats",
    "SoftwareCamera",
    "SyntheticRealSense",
    "default_intrinsics",
    "intrinsics_from_rs",
    "list_devices",
    "rs_intrinsics_from",
    "save_rs_intrinsics",
    "sphere_scene",
]
