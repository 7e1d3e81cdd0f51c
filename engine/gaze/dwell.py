"""Dwell-time selection: look at a spot for ``dwell_ms`` to select it, look away for ``release_ms``
to release it.

Single-target mode: at most one gaze selection is live. Selecting a new spot while another is
selected emits a :class:`ReleaseEvent` before the new :class:`SelectEvent`. Events carry
``object_id=None``: the tracker gives the new object its id, and a gaze release releases the
gaze-selected object (``None``: every object, which in single-target mode is that one).

Defaults: ``dwell_ms`` 600 (dwell-selection studies use 500-1000 ms; shorter invites the "Midas
touch"), ``release_ms`` 1000 (a glance elsewhere does not drop the selection), ``radius_px`` 40
(2 deg at 20 px/deg: fixation jitter plus tracker error).
"""

from __future__ import annotations

import math

import numpy as np

from engine.gaze.filters import DEFAULT_MAX_GAP_MS, DEFAULT_MIN_CONFIDENCE, is_valid
from engine.gaze.samples import GazeSample
from engine.stream.events import Prompt, PromptEvent, ReleaseEvent, SelectEvent


class DwellSelector:
    """Online dwell selection over a (preferably smoothed) gaze stream.

    :meth:`update` takes one sample and returns the events it triggers (usually none):

    - a dwell runs while valid samples stay within ``radius_px`` of the dwell's running centroid;
      an invalid sample (below ``min_confidence``) or a gap over ``max_gap_ms`` ends it. When it has
      lasted ``dwell_ms`` (first sample time to current sample time) a :class:`SelectEvent` with a
      foreground point at the centroid fires, once per dwell, unless that spot is already selected;
    - while something is selected, valid samples farther than ``radius_px`` from the selected point
      start an "away" clock that samples back inside stop; once away for ``release_ms`` a
      :class:`ReleaseEvent` fires. Invalid samples (eyes closed) neither start nor stop the clock.
    """

    def __init__(
        self,
        dwell_ms: float = 600.0,
        release_ms: float = 1000.0,
        radius_px: float = 40.0,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        max_gap_ms: float = DEFAULT_MAX_GAP_MS,
    ) -> None:
        if dwell_ms <= 0 or release_ms <= 0 or radius_px <= 0 or max_gap_ms <= 0:
            raise ValueError(
                "dwell_ms, release_ms, radius_px and max_gap_ms must be > 0, "
                f"got {dwell_ms}, {release_ms}, {radius_px}, {max_gap_ms}"
            )
        self.dwell_ms, self.release_ms, self.radius_px = dwell_ms, release_ms, radius_px
        self.min_confidence, self.max_gap_ms = min_confidence, max_gap_ms
        self.selected_xy: tuple[float, float] | None = None
        self._sum = np.zeros(2)
        self._count = 0
        self._start_ns = 0
        self._last_ns: int | None = None
        self._last_valid_ns: int | None = None
        self._fired = False
        self._away_since_ns: int | None = None

    def reset(self) -> None:
        """Forget the dwell in progress and the selection (no event is emitted)."""
        self.selected_xy = None
        self._end_dwell()
        self._last_ns = self._last_valid_ns = None
        self._away_since_ns = None

    @property
    def dwell_centroid_xy(self) -> tuple[float, float] | None:
        """Centroid (px) of the dwell in progress, None when there is none."""
        if self._count == 0:
            return None
        cx, cy = self._sum / self._count
        return (float(cx), float(cy))

    def _end_dwell(self) -> None:
        self._sum[:] = 0.0
        self._count = 0
        self._fired = False

    def _near(self, xy: tuple[float, float], sample: GazeSample) -> bool:
        return math.hypot(sample.x - xy[0], sample.y - xy[1]) <= self.radius_px

    def update(self, sample: GazeSample) -> list[PromptEvent]:
        """Feed one sample (time order); returns the events it triggers."""
        if self._last_ns is not None and sample.timestamp_ns <= self._last_ns:
            raise ValueError(
                f"gaze samples must be in increasing time order; {sample.timestamp_ns} ns came after {self._last_ns} ns"
            )
        self._last_ns = sample.timestamp_ns
        if not is_valid(sample, self.min_confidence):
            self._end_dwell()
            return []
        last_valid, self._last_valid_ns = self._last_valid_ns, sample.timestamp_ns
        if last_valid is not None and sample.timestamp_ns - last_valid > self.max_gap_ms * 1e6:
            self._end_dwell()
        events: list[PromptEvent] = self._release(sample)
        centroid = self.dwell_centroid_xy
        if centroid is None or not self._near(centroid, sample):
            self._end_dwell()
            self._start_ns = sample.timestamp_ns
        self._sum += (sample.x, sample.y)
        self._count += 1
        if not self._fired and (sample.timestamp_ns - self._start_ns) * 1e-6 >= self.dwell_ms:
            self._fired = True
            events += self._select(sample.timestamp_ns)
        return events

    def _release(self, sample: GazeSample) -> list[PromptEvent]:
        if self.selected_xy is None:
            return []
        if self._near(self.selected_xy, sample):
            self._away_since_ns = None
            return []
        if self._away_since_ns is None:
            self._away_since_ns = sample.timestamp_ns
        if (sample.timestamp_ns - self._away_since_ns) * 1e-6 >= self.release_ms:
            self.selected_xy, self._away_since_ns = None, None
            return [ReleaseEvent(object_id=None, timestamp_ns=sample.timestamp_ns)]
        return []

    def _select(self, timestamp_ns: int) -> list[PromptEvent]:
        xy = self.dwell_centroid_xy
        if xy is None or (self.selected_xy is not None and math.dist(xy, self.selected_xy) <= self.radius_px):
            return []
        events: list[PromptEvent] = []
        if self.selected_xy is not None:
            events.append(ReleaseEvent(object_id=None, timestamp_ns=timestamp_ns))
        self.selected_xy, self._away_since_ns = xy, None
        prompt = Prompt(points_xy=np.array([xy], np.float32), labels=np.ones(1, np.float32), source="gaze")
        events.append(SelectEvent(prompt=prompt, object_id=None, timestamp_ns=timestamp_ns))
        return events
