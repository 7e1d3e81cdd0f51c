"""Gaze input: samples and the gaze CSV, One-Euro smoothing with confidence gating, fixation
detection (I-VT, I-DT), dwell-time selection, and live receivers: UDP JSON lines from any
tracker, and Pupil Labs' real-time API (``PupilLabsGazeReceiver``, needs ``arsel[gaze]``); a gaze
simulator (``simulate``: fixations, jitter, blinks) for the demo and the evaluation's gaze starts.

Coordinates are scene-camera pixels (x right, y down); times are integer nanoseconds.
Mapping tracker coordinates into the scene camera is :mod:`calibration.gaze`.
"""

from engine.gaze.dwell import DwellSelector
from engine.gaze.filters import (
    DEFAULT_MAX_GAP_MS,
    DEFAULT_MIN_CONFIDENCE,
    GazeSmoother,
    OneEuroFilter,
    is_valid,
    smooth_gaze,
    split_segments,
)
from engine.gaze.fixations import DEFAULT_PX_PER_DEG, Fixation, detect_fixations_idt, detect_fixations_ivt
from engine.gaze.pupil_labs import PupilLabsGazeReceiver
from engine.gaze.samples import GazeSample, read_gaze_csv, write_gaze_csv
from engine.gaze.udp import MAX_PACKET_BYTES, UdpGazeReceiver, parse_gaze_json

__all__ = [
    "DEFAULT_MAX_GAP_MS",
    "DEFAULT_MIN_CONFIDENCE",
    "DEFAULT_PX_PER_DEG",
    "MAX_PACKET_BYTES",
    "DwellSelector",
    "Fixation",
    "GazeSample",
    "GazeSmoother",
    "OneEuroFilter",
    "PupilLabsGazeReceiver",
    "UdpGazeReceiver",
    "detect_fixations_idt",
    "detect_fixations_ivt",
    "is_valid",
    "parse_gaze_json",
    "read_gaze_csv",
    "smooth_gaze",
    "split_segments",
    "write_gaze_csv",
]
