"""Fixation detection on recorded gaze: I-VT (velocity threshold) and I-DT (dispersion threshold).

Both detectors first split the stream into segments of valid samples (see
:func:`engine.gaze.filters.split_segments`): a blink, a low-confidence sample or a gap longer than
``max_gap_ms`` always ends a fixation. Thresholds come in degrees of visual angle, converted to
scene pixels with ``px_per_deg`` (for a pinhole camera near its centre ``px_per_deg = fx * pi / 180``);
a ``*_px`` argument, when given, overrides the degree value.

Defaults (Salvucci & Goldberg 2000; Tobii's I-VT filter):

- I-VT: 30 deg/s, 60 ms minimum duration, neighbouring fixations less than 75 ms and 0.5 deg
  apart are merged (noise spikes do not split a fixation).
- I-DT: 1.0 deg dispersion ((max x - min x) + (max y - min y)), 100 ms minimum duration.
- ``px_per_deg`` 20: a 1080p scene camera with a ~95 deg horizontal field of view.

A fixation's ``start_ns``/``end_ns`` are the timestamps of its first and last sample and ``x, y``
the mean of its samples (pixels). Gaze noise above a few pixels at high sample rates makes I-VT's
point-to-point velocities noisy: smooth first (:func:`engine.gaze.filters.smooth_gaze`) or raise
``window_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.gaze.filters import DEFAULT_MAX_GAP_MS, DEFAULT_MIN_CONFIDENCE, split_segments
from engine.gaze.samples import GazeSample

DEFAULT_PX_PER_DEG = 20.0


@dataclass(frozen=True, slots=True)
class Fixation:
    """A fixation: first/last sample times (ns), centre ``x, y`` (px), number of samples."""

    start_ns: int
    end_ns: int
    x: float
    y: float
    num_samples: int

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-6

    @property
    def xy(self) -> tuple[float, float]:
        return (self.x, self.y)


def _arrays(segment: Sequence[GazeSample]) -> tuple[np.ndarray, np.ndarray]:
    t_ns = np.array([s.timestamp_ns for s in segment], dtype=np.int64)
    xy = np.array([(s.x, s.y) for s in segment], dtype=np.float64).reshape(-1, 2)
    return t_ns, xy


def _fixation(t_ns: np.ndarray, xy: np.ndarray, idx: np.ndarray) -> Fixation:
    cx, cy = xy[idx].mean(axis=0)
    return Fixation(int(t_ns[idx[0]]), int(t_ns[idx[-1]]), float(cx), float(cy), len(idx))


def _threshold(px: float | None, deg: float, px_per_deg: float, what: str) -> float:
    if px_per_deg <= 0:
        raise ValueError(f"px_per_deg must be > 0 (scene pixels per degree, e.g. fx * pi / 180), got {px_per_deg}")
    value = deg * px_per_deg if px is None else px
    if value <= 0:
        raise ValueError(f"the {what} threshold must be > 0, got {value}")
    return float(value)


def _check_common(min_duration_ms: float, min_confidence: float, max_gap_ms: float) -> None:
    if min_duration_ms < 0 or max_gap_ms <= 0 or not 0.0 <= min_confidence <= 1.0:
        raise ValueError(
            "need min_duration_ms >= 0, max_gap_ms > 0 and min_confidence in [0, 1], "
            f"got {min_duration_ms}, {max_gap_ms}, {min_confidence}"
        )


def _interval_speeds(t_ns: np.ndarray, xy: np.ndarray, window_ms: float) -> np.ndarray:
    """Speed (px/s) of each interval between consecutive samples; ``(N-1,)``.

    ``window_ms`` > 0 measures it between the samples bracketing the interval's midpoint +-window/2.
    """
    n = len(t_ns)
    lo, hi = np.arange(n - 1), np.arange(1, n)
    if window_ms > 0:
        mid = (t_ns[:-1] + t_ns[1:]) / 2.0
        half = window_ms * 5e5
        lo = np.minimum(lo, np.searchsorted(t_ns, mid - half, side="left"))
        hi = np.maximum(hi, np.searchsorted(t_ns, mid + half, side="right") - 1)
    dist = np.linalg.norm(xy[hi] - xy[lo], axis=1)
    return dist / ((t_ns[hi] - t_ns[lo]) * 1e-9)


def _slow_runs(slow: np.ndarray) -> list[tuple[int, int]]:
    """Sample index ranges [first, last] covered by runs of slow intervals."""
    runs, start = [], None
    for i, is_slow in enumerate(slow):
        if is_slow and start is None:
            start = i
        elif not is_slow and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(slow)))
    return runs


def detect_fixations_ivt(
    samples: Sequence[GazeSample],
    *,
    velocity_threshold_deg_s: float = 30.0,
    velocity_threshold_px_s: float | None = None,
    px_per_deg: float = DEFAULT_PX_PER_DEG,
    min_duration_ms: float = 60.0,
    merge_gap_ms: float = 75.0,
    merge_distance_deg: float = 0.5,
    window_ms: float = 0.0,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    max_gap_ms: float = DEFAULT_MAX_GAP_MS,
) -> list[Fixation]:
    """Velocity-threshold fixations (I-VT) in time order.

    Intervals between consecutive samples slower than the threshold are fixation intervals; a run
    of them is a fixation candidate (its samples are the run's endpoints). Candidates of one segment
    less than ``merge_gap_ms`` and ``merge_distance_deg`` apart are merged (0 disables), then those
    shorter than ``min_duration_ms`` are dropped. ``window_ms``: speed over a wider window (0:
    point-to-point, Salvucci's I-VT).
    """
    _check_common(min_duration_ms, min_confidence, max_gap_ms)
    v_thr = _threshold(velocity_threshold_px_s, velocity_threshold_deg_s, px_per_deg, "velocity")
    merge_px = merge_distance_deg * px_per_deg
    out: list[Fixation] = []
    for segment in split_segments(samples, min_confidence, max_gap_ms):
        if len(segment) < 2:
            continue
        t_ns, xy = _arrays(segment)
        runs = _slow_runs(_interval_speeds(t_ns, xy, window_ms) < v_thr)
        groups: list[list[np.ndarray]] = []
        for first, last in runs:
            idx = np.arange(first, last + 1)
            if groups:
                prev = np.concatenate(groups[-1])
                close_t = (t_ns[first] - t_ns[prev[-1]]) * 1e-6 <= merge_gap_ms
                close_xy = np.linalg.norm(xy[idx].mean(axis=0) - xy[prev].mean(axis=0)) <= merge_px
                if close_t and close_xy:
                    groups[-1].append(idx)
                    continue
            groups.append([idx])
        for group in groups:
            idx = np.concatenate(group)
            if (t_ns[idx[-1]] - t_ns[idx[0]]) * 1e-6 >= min_duration_ms:
                out.append(_fixation(t_ns, xy, idx))
    return out


def _dispersion(xy: np.ndarray) -> float:
    span = xy.max(axis=0) - xy.min(axis=0)
    return float(span[0] + span[1])


def detect_fixations_idt(
    samples: Sequence[GazeSample],
    *,
    dispersion_threshold_deg: float = 1.0,
    dispersion_threshold_px: float | None = None,
    px_per_deg: float = DEFAULT_PX_PER_DEG,
    min_duration_ms: float = 100.0,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    max_gap_ms: float = DEFAULT_MAX_GAP_MS,
) -> list[Fixation]:
    """Dispersion-threshold fixations (I-DT, Salvucci & Goldberg 2000) in time order.

    A window covering ``min_duration_ms`` whose dispersion ``(max x - min x) + (max y - min y)``
    stays within the threshold is grown sample by sample until the next sample would exceed it;
    that window is a fixation. Otherwise the window slides on by one sample.
    """
    _check_common(min_duration_ms, min_confidence, max_gap_ms)
    d_thr = _threshold(dispersion_threshold_px, dispersion_threshold_deg, px_per_deg, "dispersion")
    min_ns = min_duration_ms * 1e6
    out: list[Fixation] = []
    for segment in split_segments(samples, min_confidence, max_gap_ms):
        t_ns, xy = _arrays(segment)
        n, i = len(t_ns), 0
        while i < n:
            j = int(np.searchsorted(t_ns, t_ns[i] + min_ns, side="left"))
            if j >= n:
                break
            if _dispersion(xy[i : j + 1]) > d_thr:
                i += 1
                continue
            lo, hi = xy[i : j + 1].min(axis=0), xy[i : j + 1].max(axis=0)
            while j + 1 < n:
                nlo, nhi = np.minimum(lo, xy[j + 1]), np.maximum(hi, xy[j + 1])
                if (nhi - nlo).sum() > d_thr:
                    break
                lo, hi, j = nlo, nhi, j + 1
            out.append(_fixation(t_ns, xy, np.arange(i, j + 1)))
            i = j + 1
    return out
