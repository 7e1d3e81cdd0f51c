"""Gaze timestamps checked against the receiver's clock, with a reset/jump policy.

A tracker's clock and the receiver's differ by an unknown offset; :class:`GazeClock` locks onto
it with the first sample, then accepts a sample only when its offset stays within
``max_skew_ns`` of the locked one and its time is after the last accepted sample. Anything else
(a far-future ``t_ns``, a clock that jumped or reset, a stale sample) is dropped and counted
(``clock_jump`` or ``out_of_order``). When ``resync_after`` dropped samples in a row agree with
each other on a new offset (within ``max_skew_ns``, increasing), the tracker's clock really moved:
the guard re-locks onto it (``clock_resyncs``) and accepts again. One wild sample therefore
costs one sample, and a clock reset costs ``resync_after`` samples, never the rest of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INT64_MAX = 2**63 - 1
CLOCK_STATS = ("accepted", "clock_jump", "out_of_order", "clock_resyncs")


@dataclass(frozen=True, slots=True)
class ClockPolicy:
    """``max_skew_ns``: allowed wander of (sample time - receiver time) around the locked offset
    (network jitter and bursts; default 10 s). ``resync_after``: dropped samples in a row that
    agree on a new offset before the guard re-locks (default 5). ``check_order``: drop a sample not
    after the last accepted one (``out_of_order``); off where a later stage reorders by time (the
    stream server's gaze buffer)."""

    max_skew_ns: int = 10_000_000_000
    resync_after: int = 5
    check_order: bool = True

    def __post_init__(self) -> None:
        if self.max_skew_ns <= 0 or self.resync_after < 1:
            raise ValueError(f"need max_skew_ns > 0 and resync_after >= 1, got {self.max_skew_ns}, {self.resync_after}")


@dataclass
class GazeClock:
    """Accept/drop decisions for gaze timestamps (ns) against a receiver clock (ns)."""

    policy: ClockPolicy = field(default_factory=ClockPolicy)
    offset_ns: int | None = None  # sample time minus receiver time, locked
    last_t_ns: int | None = None
    stats: dict[str, int] = field(default_factory=lambda: {k: 0 for k in CLOCK_STATS})
    _candidate: list[tuple[int, int]] = field(default_factory=list)  # (t_ns, offset_ns) on a new clock

    def start_after(self, t_ns: int | None, now_ns: int) -> None:
        """Accept only samples after ``t_ns`` from now on; locks the offset there (against the
        receiver time ``now_ns``) when none is locked yet. None forgets the last sample."""
        self.last_t_ns = t_ns
        if t_ns is not None and self.offset_ns is None:
            self.offset_ns = t_ns - now_ns

    def check(self, t_ns: int, now_ns: int) -> str | None:
        """None when the sample at ``t_ns`` (received at ``now_ns``) is accepted, else the drop reason."""
        off = t_ns - now_ns
        if self.offset_ns is None:
            return self._lock(t_ns, off, resync=False)
        if abs(off - self.offset_ns) <= self.policy.max_skew_ns:
            if self.last_t_ns is not None and t_ns <= self.last_t_ns and self.policy.check_order:
                return self._reject(t_ns, off, "out_of_order")
            self._candidate.clear()
            self.offset_ns += (off - self.offset_ns) // 16  # follow slow drift, not single jitter
            self.last_t_ns = t_ns if self.last_t_ns is None else max(self.last_t_ns, t_ns)
            self.stats["accepted"] += 1
            return None
        return self._reject(t_ns, off, "clock_jump")

    def _lock(self, t_ns: int, off: int, resync: bool) -> None:
        self.offset_ns, self.last_t_ns = off, t_ns
        self._candidate.clear()
        self.stats["accepted"] += 1
        if resync:
            self.stats["clock_resyncs"] += 1
        return None

    def _reject(self, t_ns: int, off: int, reason: str) -> str | None:
        cand = self._candidate
        if cand and abs(off - cand[-1][1]) <= self.policy.max_skew_ns and t_ns > cand[-1][0]:
            cand.append((t_ns, off))
        else:
            cand[:] = [(t_ns, off)]
        if len(cand) >= self.policy.resync_after:
            return self._lock(t_ns, off, resync=True)
        self.stats[reason] += 1
        return reason
