"""Per-stage latency of the stream (p50/p95), fps, embedding age, JSON export and the HUD's text lines
(drawn by :mod:`engine.stream.hud`).

Stages of one frame, as stamped by ``StreamEngine.step``: ``capture`` (waiting for the source),
``motion`` (keyframe->frame homography), ``decode`` (prompt mapping + mask decoder), ``postprocess``
(upsampling, warping back, bookkeeping) and ``frame`` (the whole step). ``encode`` is recorded
separately, per finished keyframe, with the embedding age (frames between the keyframe and the
frame decoded on it).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

FRAME_STAGES = ("capture", "motion", "decode", "postprocess", "frame")
HUD_SAMPLES = 300  # the HUD's p50/p95 cover each stage's last 300 samples (the full window is too slow per frame)


class LatencyRecorder:
    """Collects stage times (ms) over a sliding window of ``window`` samples per stage.

    >>> rec = LatencyRecorder()
    >>> rec.add("decode", 12.5); rec.tick()   # one sample, one frame finished
    """

    def __init__(self, window: int = 10_000) -> None:
        self.window = window
        self._stages: dict[str, deque[float]] = {}
        self._ages: deque[int] = deque(maxlen=window)
        self._ticks_ns: deque[int] = deque(maxlen=window)
        self.frames = 0

    def add(self, stage: str, ms: float) -> None:
        """Record one sample of ``stage`` (milliseconds)."""
        self._stages.setdefault(stage, deque(maxlen=self.window)).append(float(ms))

    def add_many(self, timings_ms: Mapping[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.add(stage, ms)

    def add_age(self, embedding_age_frames: int) -> None:
        """Frames between the keyframe decoded on and the current frame."""
        self._ages.append(int(embedding_age_frames))

    def tick(self, now_ns: int | None = None) -> None:
        """One frame finished (for fps)."""
        self._ticks_ns.append(time.monotonic_ns() if now_ns is None else now_ns)
        self.frames += 1

    def fps(self, last: int | None = None) -> float:
        """Frames per second over the last ``last`` frames (all in the window by default)."""
        ticks = list(itertools.islice(reversed(self._ticks_ns), last + 1))[::-1] if last else list(self._ticks_ns)
        if len(ticks) < 2 or ticks[-1] == ticks[0]:
            return float("nan")
        return (len(ticks) - 1) * 1e9 / (ticks[-1] - ticks[0])

    def engine_fps(self, last: int | None = None) -> float:
        """Frames per second the engine alone could sustain: 1000 / mean ``frame`` stage ms (the
        whole ``StreamEngine.step``) over the last ``last`` steps (all by default); NaN before
        any step. :meth:`fps` is the wall rate, which also counts the source, rendering, sinks
        and waits between steps."""
        window = self._stages.get("frame")
        if not window:
            return float("nan")
        recent = window if last is None else itertools.islice(reversed(window), last)
        arr = np.fromiter(recent, dtype=np.float64)
        return 1e3 / float(arr.mean()) if arr.mean() > 0 else float("nan")

    def stage(self, name: str) -> list[float]:
        return list(self._stages.get(name, ()))

    def summary(self, last: int | None = None) -> dict[str, dict[str, float]]:
        """``{stage: {"p50_ms", "p95_ms", "mean_ms", "n"}}`` for every recorded stage, over its whole
        window, or over its ``last`` most recent samples (cheap: the HUD redraws every frame)."""
        out = {}
        for name, window in self._stages.items():
            recent = window if last is None else itertools.islice(reversed(window), last)
            arr = np.fromiter(recent, dtype=np.float64)
            p50, p95 = np.percentile(arr, (50, 95)) if arr.size else (float("nan"), float("nan"))
            out[name] = {
                "p50_ms": round(float(p50), 3),
                "p95_ms": round(float(p95), 3),
                "mean_ms": round(float(arr.mean()), 3) if arr.size else float("nan"),
                "n": int(arr.size),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: fps (wall), engine_fps (per-step), frames, per-stage p50/p95 and embedding age."""
        ages = list(self._ages)
        return {
            "fps": round(self.fps(), 3),
            "engine_fps": round(self.engine_fps(), 3),
            "frames": self.frames,
            "stages": self.summary(),
            "embedding_age_frames": {
                "mean": round(float(np.mean(ages)), 3) if ages else None,
                "max": max(ages) if ages else None,
            },
        }

    def hud_lines(self, last: int = HUD_SAMPLES) -> list[str]:
        """Short text lines for the HUD: engine fps (per ``step``) and wall fps, and the p50/p95 of the frame stages over their ``last``
        most recent samples (``to_json`` keeps the full-window figures for metrics files)."""
        s = self.summary(last)
        lines = [f"engine {self.engine_fps(last=30):5.1f} fps  wall {self.fps(last=30):5.1f} fps"]
        for name in ("motion", "decode", "postprocess", "frame", "encode"):
            if name in s:
                lines.append(f"{name:<11}{s[name]['p50_ms']:6.1f} / {s[name]['p95_ms']:6.1f} ms")
        if self._ages:
            lines.append(f"emb. age   {self._ages[-1]:3d} frames")
        return lines


# The drawing moved to engine.stream.hud; the old import path keeps working.
from engine.stream.hud import draw_hud, track_status_line  # noqa: E402,F401
