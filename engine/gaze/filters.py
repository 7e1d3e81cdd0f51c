"""Gaze smoothing: the One-Euro filter, confidence gating and blink/gap handling.

A sample is *valid* when its confidence is at least ``min_confidence``. A stream splits into
*segments* of valid samples: an invalid sample (blink, lost pupil) or a gap longer than
``max_gap_ms`` between consecutive valid samples ends a segment. Filters restart and fixations end
at segment boundaries.

Defaults: ``min_confidence`` 0.6 (Pupil Labs' recommended floor for pupil confidence),
``max_gap_ms`` 75 (Tobii's I-VT gap-fill limit: shorter losses are sampling jitter, longer ones are
blinks or tracking loss).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from engine.gaze.samples import GazeSample

DEFAULT_MIN_CONFIDENCE = 0.6
DEFAULT_MAX_GAP_MS = 75.0


def _alpha(cutoff_hz: np.ndarray | float, dt_s: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


class OneEuroFilter:
    """The One-Euro filter (Casiez, Roussel, Vogel, CHI 2012) for a scalar or a vector signal.

    An exponential low-pass whose cutoff rises with speed: ``cutoff_hz = min_cutoff + beta * |dx/dt|``
    with ``dx/dt`` itself low-passed at ``d_cutoff``. ``min_cutoff`` (Hz) sets jitter removal at
    rest, ``beta`` (s per signal unit, i.e. s/px for gaze) sets how fast lag vanishes when moving,
    ``d_cutoff`` (Hz) smooths the speed estimate. Vector components are filtered independently, as
    in the paper's reference code. Defaults suit gaze in scene pixels at 30-250 Hz: at rest the
    cutoff is 1 Hz; a 6000 px/s saccade raises it to about 60 Hz.

    Timestamps are integer nanoseconds and must not decrease; a repeated timestamp returns the
    previous output. :meth:`reset` forgets the state (call it after a blink or a gap).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.01, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(
                f"OneEuroFilter needs min_cutoff > 0, d_cutoff > 0 (Hz) and beta >= 0, "
                f"got {min_cutoff}, {d_cutoff}, {beta}"
            )
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t_ns: int | None = None

    def reset(self) -> None:
        """Forget the state; the next value passes through unfiltered."""
        self._x = self._dx = self._t_ns = None

    def __call__(self, value: float | np.ndarray, timestamp_ns: int) -> np.ndarray:
        """Filter one value (scalar or ``(D,)``); returns float64 of the same shape."""
        x = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"OneEuroFilter got a non-finite value {value!r}; gate lost samples before filtering")
        if self._x is None or self._dx is None or self._t_ns is None:
            self._x, self._dx, self._t_ns = x.copy(), np.zeros_like(x), int(timestamp_ns)
            return x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"OneEuroFilter value shape changed from {self._x.shape} to {x.shape}; call reset() first")
        if timestamp_ns < self._t_ns:
            raise ValueError(
                f"OneEuroFilter timestamps must not decrease ({timestamp_ns} after {self._t_ns} ns); "
                "call reset() when a new stream starts"
            )
        if timestamp_ns == self._t_ns:
            return self._x.copy()
        dt_s = (timestamp_ns - self._t_ns) * 1e-9
        dx = (x - self._x) / dt_s
        self._dx = self._dx + _alpha(self.d_cutoff, dt_s) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, dt_s) * (x - self._x)
        self._t_ns = int(timestamp_ns)
        return self._x.copy()


def is_valid(sample: GazeSample, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> bool:
    """True when the sample's confidence reaches ``min_confidence`` and its x, y are finite."""
    return sample.confidence >= min_confidence and math.isfinite(sample.x) and math.isfinite(sample.y)


def split_segments(
    samples: Iterable[GazeSample],
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    max_gap_ms: float = DEFAULT_MAX_GAP_MS,
) -> list[list[GazeSample]]:
    """Runs of valid samples, split at invalid samples and at gaps longer than ``max_gap_ms``.

    Samples must be in increasing time order; invalid samples are dropped.
    """
    segments: list[list[GazeSample]] = []
    current: list[GazeSample] = []
    max_gap_ns = max_gap_ms * 1e6
    last_t: int | None = None
    for s in samples:
        if last_t is not None and s.timestamp_ns <= last_t:
            raise ValueError(
                f"gaze samples must be in increasing time order; {s.timestamp_ns} ns came after {last_t} ns"
            )
        last_t = s.timestamp_ns
        if not is_valid(s, min_confidence):
            if current:
                segments.append(current)
            current = []
            continue
        if current and s.timestamp_ns - current[-1].timestamp_ns > max_gap_ns:
            segments.append(current)
            current = []
        current.append(s)
    if current:
        segments.append(current)
    return segments


class GazeSmoother:
    """Online One-Euro smoothing of a gaze stream with confidence gating and gap resets.

    :meth:`update` returns the smoothed sample, or ``None`` for an invalid sample (below
    ``min_confidence``), which also resets the filter; a gap longer than ``max_gap_ms`` since the
    last valid sample resets it too. ``resets`` counts the resets.
    """

    def __init__(
        self,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        max_gap_ms: float = DEFAULT_MAX_GAP_MS,
        min_cutoff: float = 1.0,
        beta: float = 0.01,
        d_cutoff: float = 1.0,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0 or max_gap_ms <= 0:
            raise ValueError(f"need min_confidence in [0, 1] and max_gap_ms > 0, got {min_confidence}, {max_gap_ms}")
        self.min_confidence, self.max_gap_ms = min_confidence, max_gap_ms
        self.filter = OneEuroFilter(min_cutoff, beta, d_cutoff)
        self.resets = 0
        self._last_valid_ns: int | None = None

    def update(self, sample: GazeSample) -> GazeSample | None:
        if not is_valid(sample, self.min_confidence):
            if self._last_valid_ns is not None:
                self.filter.reset()
                self.resets += 1
            self._last_valid_ns = None
            return None
        if self._last_valid_ns is not None and sample.timestamp_ns - self._last_valid_ns > self.max_gap_ms * 1e6:
            self.filter.reset()
            self.resets += 1
        self._last_valid_ns = sample.timestamp_ns
        x, y = self.filter(np.array([sample.x, sample.y]), sample.timestamp_ns)
        return GazeSample(sample.timestamp_ns, float(x), float(y), sample.confidence)


def smooth_gaze(samples: Iterable[GazeSample], **kwargs: float) -> list[GazeSample]:
    """Smooth a recorded stream with :class:`GazeSmoother` (same keyword arguments); drops invalid samples."""
    smoother = GazeSmoother(**kwargs)
    out = (smoother.update(s) for s in samples)
    return [s for s in out if s is not None]
