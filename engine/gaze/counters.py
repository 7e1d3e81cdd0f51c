"""Counters of one gaze stream, shared by every consumer: ``arsel track --gaze`` writes them to
``metrics.json``, ``arsel serve`` sums them over its sessions in ``/healthz``.

``accepted``: samples fed to the dwell logic (``off_frame`` ones included, which count as lost);
``dropped``: samples refused, by reason (``clock_jump``: far from the locked clock, e.g. a
far-future ``t_ns``; ``out_of_order``: not after the last one; ``overflow``: a full buffer);
``clock_resyncs``: times the clock guard re-locked onto a tracker clock that really moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DROP_REASONS = ("clock_jump", "out_of_order", "overflow")


@dataclass(slots=True)
class GazeCounters:
    """Mutable counters (see the module docstring); ``add`` sums another stream's into these."""

    accepted: int = 0
    off_frame: int = 0
    clock_resyncs: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {k: 0 for k in DROP_REASONS})

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` samples dropped for ``reason`` (one of ``DROP_REASONS``)."""
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown gaze drop reason {reason!r}; one of {', '.join(DROP_REASONS)}")
        self.dropped[reason] += n

    def add(self, other: GazeCounters) -> GazeCounters:
        """Sum ``other`` into these counters; returns self."""
        self.accepted += other.accepted
        self.off_frame += other.off_frame
        self.clock_resyncs += other.clock_resyncs
        for reason, n in dict(other.dropped).items():  # a C-level copy: safe while a worker counts
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        return self

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``accepted``, ``off_frame``, ``clock_resyncs``, ``dropped`` by reason, ``dropped_total``."""
        dropped = dict(self.dropped)
        return {"accepted": self.accepted, "off_frame": self.off_frame, "clock_resyncs": self.clock_resyncs,
                "dropped": dropped, "dropped_total": sum(dropped.values())}
