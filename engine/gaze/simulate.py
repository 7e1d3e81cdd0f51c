"""A simulated eye-tracker trace that fixates objects in turn, time-aligned with a frame stream.

The trace is what a head-mounted tracker mapped into the scene camera would deliver
(``timestamp_ns, x, y, confidence``, scene-camera pixels, ``engine.gaze.GazeSample``):

* the stream's time span is split into one fixation per target; the eye sits on the target's
  projected centre, following it as the camera moves (the target's pixel is interpolated between
  frames), with micro-jitter (``jitter_px`` sigma, white) and a slow drift (random walk);
* fixations are joined by saccades (``saccade_ms``, minimum-jerk profile, low confidence while the
  eye is in flight as pupil trackers report);
* a blink (confidence 0, x, y NaN for ``blink_ms``) late in the second fixation and a
  low-confidence stretch late in the third, both after the dwell has selected, so they test that
  a blink neither releases nor re-selects.

With ``engine.gaze.DwellSelector`` defaults (600 ms dwell) each fixation must last about 0.8 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.gaze import GazeSample


@dataclass(frozen=True, slots=True)
class PlannedFixation:
    """One planned fixation: ``target`` index into the targets, ``start_ns``/``end_ns`` on the frame clock."""

    target: int
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class GazeTrace:
    """Simulated samples (time order) and the fixation plan that generated them."""

    samples: tuple[GazeSample, ...]
    fixations: tuple[PlannedFixation, ...]

    def target_at(self, timestamp_ns: int) -> int | None:
        """Index of the target fixated at ``timestamp_ns`` (None during a saccade or outside)."""
        for fix in self.fixations:
            if fix.start_ns <= timestamp_ns < fix.end_ns:
                return fix.target
        return None


def _min_jerk(s: np.ndarray) -> np.ndarray:
    """Minimum-jerk position profile on s in [0, 1]."""
    return 10 * s**3 - 15 * s**4 + 6 * s**5


def simulate_gaze(
    frame_times_ns: Sequence[int] | np.ndarray,
    targets_xy: np.ndarray,
    order: Sequence[int] | None = None,
    rate_hz: float = 120.0,
    seed: int = 0,
    *,
    saccade_ms: float = 45.0,
    jitter_px: float = 2.5,
    drift_px_per_s: float = 6.0,
    blink_ms: float = 150.0,
    last_share: float = 1.5,
) -> GazeTrace:
    """Gaze that fixates each target in ``order`` in turn over the frames' time span.

    Each fixation gets an equal share of the span, the last ``last_share`` times as much: an
    earlier target stays selected during the next one's dwell, the last has no successor.

    Args:
        frame_times_ns: (F,) increasing frame timestamps (ns).
        targets_xy: (F, K, 2) float pixel position of each of K targets in each frame (NaN when
            not visible; a fixation holds its last visible position).
        order: target indices to fixate in turn (default 0..K-1).
        rate_hz: tracker sampling rate.
        seed: random seed (jitter, drift).
        saccade_ms, jitter_px, drift_px_per_s, blink_ms: see the module docstring.
        last_share: length of the last fixation relative to the others (> 0).

    Returns:
        :class:`GazeTrace` with samples from the first frame's time to the last frame's time + one
        frame period.
    """
    times = np.asarray(frame_times_ns, np.int64)
    targets = np.asarray(targets_xy, np.float64)
    if times.ndim != 1 or len(times) < 2 or np.any(np.diff(times) <= 0):
        raise ValueError(f"frame_times_ns must be >= 2 strictly increasing timestamps, got shape {times.shape}")
    if targets.ndim != 3 or targets.shape[0] != len(times) or targets.shape[2] != 2:
        raise ValueError(f"targets_xy must be (F={len(times)}, K, 2), got {targets.shape}")
    order = list(range(targets.shape[1])) if order is None else list(order)
    if not order or any(not 0 <= k < targets.shape[1] for k in order):
        raise ValueError(f"order must name targets 0..{targets.shape[1] - 1}, got {order}")
    if rate_hz <= 0 or last_share <= 0:
        raise ValueError(f"rate_hz and last_share must be positive, got {rate_hz}, {last_share}")
    rng = np.random.default_rng(seed)
    t0, t_end = int(times[0]), int(times[-1] + (times[-1] - times[-2]))
    shares = np.ones(len(order))
    shares[-1] = last_share
    bounds = (t0 + (t_end - t0) * np.concatenate([[0.0], np.cumsum(shares)]) / shares.sum()).astype(np.int64)
    sacc_ns = int(saccade_ms * 1e6)
    plan = tuple(
        PlannedFixation(k, int(bounds[i] + (sacc_ns if i else 0)), int(bounds[i + 1])) for i, k in enumerate(order)
    )
    ts = np.arange(t0, t_end, int(1e9 / rate_hz), dtype=np.int64)
    xy = np.stack([_interp_target(times, targets[:, k], ts) for k in order], axis=0)  # (n, S, 2)
    out_xy, conf = np.empty((len(ts), 2)), np.ones(len(ts))
    seg = np.clip(np.searchsorted(bounds, ts, side="right") - 1, 0, len(order) - 1)
    out_xy[:] = xy[seg, np.arange(len(ts))]
    for i in range(1, len(order)):  # saccades: minimum-jerk from the previous target to the next
        in_flight = (ts >= bounds[i]) & (ts < bounds[i] + sacc_ns)
        s = _min_jerk(((ts[in_flight] - bounds[i]) / sacc_ns))[:, None]
        out_xy[in_flight] = (1 - s) * xy[i - 1, in_flight] + s * xy[i, in_flight]
        conf[in_flight] = 0.7
    dt = 1.0 / rate_hz
    drift = np.cumsum(rng.normal(0, drift_px_per_s * np.sqrt(dt), (len(ts), 2)), axis=0)
    drift -= drift[np.clip(np.searchsorted(ts, bounds[seg]), 0, len(ts) - 1)]  # drift restarts each fixation
    out_xy += drift + rng.normal(0, jitter_px, out_xy.shape)
    for i, frac_conf in ((1, 0.0), (2, 0.3)):  # blink in fixation 2, low confidence in fixation 3
        if i < len(plan):
            fix = plan[i]
            start = fix.start_ns + int(0.85 * (fix.end_ns - fix.start_ns))
            gap = (ts >= start) & (ts < start + int(blink_ms * 1e6))
            conf[gap] = frac_conf
    samples = tuple(
        GazeSample(int(t), float("nan") if c == 0 else float(x), float("nan") if c == 0 else float(y), float(c))
        for t, (x, y), c in zip(ts, out_xy, conf)
    )
    return GazeTrace(samples, plan)


def _interp_target(times: np.ndarray, xy: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(F, 2) target pixels per frame (NaN = unseen, held from the nearest seen frame) -> (S, 2) at ``ts``."""
    seen = np.all(np.isfinite(xy), axis=1)
    if not seen.any():
        raise ValueError("a gaze target is never visible in any frame; pick targets inside the view")
    return np.stack([np.interp(ts, times[seen], xy[seen, c]) for c in (0, 1)], axis=1)
