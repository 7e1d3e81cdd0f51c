"""Prompt sources: cursor events and gaze (live or replayed from CSV) -> prompt events.

Cursor (``CursorPrompts``): a left click selects a new object with a foreground point; a
shift-click or right click adds a background point to the current object; a left drag selects a
new object with a box; in hover mode, moving the pointer previews the object under it
(``HoverEvent``). Gaze (``GazePrompts``): One-Euro smoothing with confidence gating
(``engine.gaze.GazeSmoother``) then dwell-to-select / look-away-to-release
(``engine.gaze.DwellSelector``); ``GazeReplay`` replays a gaze CSV against frame timestamps.
All coordinates are frame pixels.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.gaze import DwellSelector, GazeSample, GazeSmoother, read_gaze_csv
from engine.gaze.counters import GazeCounters
from engine.stream.events import CursorEvent, HoverEvent, Prompt, PromptEvent, ReleaseEvent, SelectEvent


class CursorPrompts:
    """Turns ``CursorEvent`` s into prompt events (see the module docstring).

    After the engine handles a cursor ``SelectEvent`` (``prompt.source == "cursor"``) with
    ``object_id=None``, set ``current_object_id`` to the id it returned, so background clicks refine
    that object; after a selection from elsewhere (gaze) or a release of that object, ``forget()``.
    """

    def __init__(self, drag_min_px: float = 6.0, hover: bool = False) -> None:
        if drag_min_px < 0:
            raise ValueError(f"drag_min_px must be >= 0, got {drag_min_px}")
        self.drag_min_px = drag_min_px
        self.hover = hover
        self.current_object_id: int | None = None
        self._down: CursorEvent | None = None
        self._points: list[tuple[float, float, float]] = []  # x, y, label of the current object
        self._box: np.ndarray | None = None
        self.drag_box_xyxy: np.ndarray | None = None  # the box being dragged, for drawing

    def set_hover(self, on: bool) -> list[PromptEvent]:
        """Switch hover mode; switching it off clears the preview."""
        self.hover = on
        return [] if on else [HoverEvent(None)]

    def forget(self) -> None:
        """Forget the current object and its points (background clicks then refine nothing)."""
        self._points, self._box, self.current_object_id = [], None, None

    def release_all(self, timestamp_ns: int = 0) -> list[PromptEvent]:
        """Forget the current object and release every object."""
        self.forget()
        return [ReleaseEvent(None, timestamp_ns)]

    def feed(self, event: CursorEvent) -> list[PromptEvent]:
        """One cursor event -> the prompt events it triggers (often none)."""
        if event.kind == "down":
            self._down = event
            return []
        if event.kind == "move":
            return self._move(event)
        if event.kind == "up":
            return self._up(event)
        raise ValueError(f"CursorEvent.kind must be 'down', 'move' or 'up', got {event.kind!r}")

    def _move(self, ev: CursorEvent) -> list[PromptEvent]:
        down = self._down
        if down is not None and down.button == "left" and not down.shift:
            if math.dist((ev.x, ev.y), (down.x, down.y)) >= self.drag_min_px:
                self.drag_box_xyxy = _box(down, ev)
            return []
        if self.hover and down is None:
            return [HoverEvent(Prompt.point(ev.x, ev.y, 1, source="cursor"), ev.timestamp_ns)]
        return []

    def _up(self, ev: CursorEvent) -> list[PromptEvent]:
        down, self._down, self.drag_box_xyxy = self._down, None, None
        if down is None:
            return []
        background = down.button == "right" or down.shift
        if not background and math.dist((ev.x, ev.y), (down.x, down.y)) >= self.drag_min_px:
            self._points, self._box, self.current_object_id = [], _box(down, ev), None
            return [SelectEvent(Prompt.box(self._box, source="cursor"), None, ev.timestamp_ns)]
        if not background:
            self._points, self._box, self.current_object_id = [(down.x, down.y, 1.0)], None, None
            return [SelectEvent(Prompt.point(down.x, down.y, 1, source="cursor"), None, ev.timestamp_ns)]
        if self.current_object_id is None:
            return []  # a background point needs an object to refine
        self._points.append((down.x, down.y, 0.0))
        pts = np.array([p[:2] for p in self._points], np.float32).reshape(-1, 2)
        labels = np.array([p[2] for p in self._points], np.float32)
        prompt = Prompt(pts, labels, self._box, source="cursor") if (self._box is not None or labels.any()) else None
        return [] if prompt is None else [SelectEvent(prompt, self.current_object_id, ev.timestamp_ns)]


def _box(a: CursorEvent, b: CursorEvent) -> np.ndarray:
    return np.array([min(a.x, b.x), min(a.y, b.y), max(a.x, b.x), max(a.y, b.y)], np.float32)


class GazePrompts:
    """Online gaze -> prompt events: smoothing, then dwell selection (single target).

    ``push(sample)`` returns the events one sample triggers; ``gaze_xy`` is the latest smoothed
    point (None while the gaze is invalid). A sample not newer than the last one (duplicate,
    out of order, or another clock) is skipped and counted in ``dropped_out_of_order``; feed one
    ``GazePrompts`` from one clock only. With ``frame_hw`` set, a sample off the frame is counted
    in ``off_frame`` and treated as lost (confidence 0): it releases a dwell, never selects.
    The counts live in ``counters`` (``engine.gaze.counters.GazeCounters``, shareable).
    """

    def __init__(self, smoother: GazeSmoother | None = None, dwell: DwellSelector | None = None,
                 frame_hw: tuple[int, int] | None = None, counters: GazeCounters | None = None) -> None:
        self.smoother = smoother or GazeSmoother()
        self.dwell = dwell or DwellSelector()
        self.frame_hw = frame_hw
        self.gaze_xy: tuple[float, float] | None = None
        self.counters = counters if counters is not None else GazeCounters()
        self._last_ns: int | None = None

    @property
    def accepted(self) -> int:
        return self.counters.accepted

    @property
    def off_frame(self) -> int:
        return self.counters.off_frame

    @property
    def dropped_out_of_order(self) -> int:
        return self.counters.dropped["out_of_order"]

    def stats(self) -> dict[str, Any]:
        """``GazeCounters.as_dict()`` (``accepted``, ``off_frame``, ``clock_resyncs``, ``dropped`` by
        reason, ``dropped_total``) plus ``dropped_out_of_order`` at the top level."""
        return {**self.counters.as_dict(), "dropped_out_of_order": self.dropped_out_of_order}

    def restart_clock(self) -> None:
        """The tracker's clock moved (a resync): the next sample starts a new order, whatever its time."""
        self._last_ns = None

    def push(self, sample: GazeSample) -> list[PromptEvent]:
        """One gaze sample (frame pixels, ns) -> the prompt events it triggers (often none)."""
        if self._last_ns is not None and sample.timestamp_ns <= self._last_ns:
            self.counters.drop("out_of_order")
            return []
        self._last_ns = sample.timestamp_ns
        self.counters.accepted += 1
        if self.frame_hw is not None and sample.confidence > 0:
            h, w = self.frame_hw
            if not (0 <= sample.x < w and 0 <= sample.y < h):
                self.counters.off_frame += 1
                sample = GazeSample(sample.timestamp_ns, math.nan, math.nan, 0.0)
        smooth = self.smoother.update(sample)
        self.gaze_xy = None if smooth is None else smooth.xy
        return self.dwell.update(sample if smooth is None else smooth)


class GazeReplay:
    """Replays recorded gaze against frame timestamps.

    ``offset_ns`` is added to every gaze timestamp to put it on the frames' clock; ``None`` aligns
    the first gaze sample with the first frame asked for. ``events_until(t_ns)`` feeds every
    sample up to ``t_ns`` and returns their events.
    """

    def __init__(self, samples: Sequence[GazeSample], offset_ns: int | None = None,
                 prompts: GazePrompts | None = None) -> None:
        if not samples:
            raise ValueError("the gaze recording holds no samples; check the CSV (header timestamp_ns,x,y,confidence)")
        self.samples = list(samples)
        self._times = [s.timestamp_ns for s in self.samples]
        self.offset_ns = offset_ns
        self.prompts = prompts or GazePrompts()
        self._next = 0

    @classmethod
    def from_csv(cls, path: str | Path, frame_hw: tuple[int, int], **kwargs: object) -> "GazeReplay":
        """Read ``timestamp_ns,x,y,confidence`` (pixels or normalised to ``frame_hw``); samples off
        the frame count as lost. ``ValueError`` when no sample with confidence > 0 is on the frame."""
        samples = read_gaze_csv(path, frame_hw)
        h, w = frame_hw
        on = sum(1 for s in samples if s.confidence > 0 and 0 <= s.x < w and 0 <= s.y < h)
        if samples and not on:
            raise ValueError(f"{path}: every gaze sample is off-frame (or lost) for the {w}x{h} frames; check the "
                             "units ('# units: pixels' or 'normalized') and that it is this video's recording")
        kwargs.setdefault("prompts", GazePrompts(frame_hw=frame_hw))
        return cls(samples, **kwargs)  # type: ignore[arg-type]

    def stats(self) -> dict[str, Any]:
        """Counters of the replay so far: ``samples`` in the file, ``fed`` to the prompts, and the
        prompts' ``GazePrompts.stats()``."""
        return {"samples": len(self.samples), "fed": self._next, **self.prompts.stats()}

    @property
    def gaze_xy(self) -> tuple[float, float] | None:
        return self.prompts.gaze_xy

    def events_until(self, timestamp_ns: int) -> list[PromptEvent]:
        """Events of every sample with (offset) time <= ``timestamp_ns``, in order."""
        if self.offset_ns is None:
            self.offset_ns = int(timestamp_ns) - self._times[0]
        stop = bisect.bisect_right(self._times, int(timestamp_ns) - self.offset_ns)
        events: list[PromptEvent] = []
        while self._next < stop:
            events += self.prompts.push(self.samples[self._next])
            self._next += 1
        return events


def open_live_gaze(spec: str) -> Any:
    """A live gaze receiver from ``spec``; its ``poll()`` returns new ``GazeSample``s (never blocks).

    ``udp[:PORT]`` or ``udp:HOST:PORT``: JSON lines on UDP (``engine.gaze.udp``; loopback unless a
    host is given, port 0 = any free port, see ``.address``). ``pupil`` (discover on the network) or
    ``pupil:HOST[:PORT]``: Pupil Labs' real-time API (needs ``pip install 'arsel[gaze]'``).
    Samples are in scene-camera pixels; feed them to ``GazePrompts.push``.
    """
    kind, _, rest = str(spec).strip().partition(":")
    parts = rest.split(":") if rest else []
    try:
        if kind == "udp" and len(parts) <= 2:
            from engine.gaze.udp import UdpGazeReceiver

            host = parts[0] if len(parts) == 2 else "127.0.0.1"
            return UdpGazeReceiver(host, int(parts[-1]) if parts else 5005)
        if kind == "pupil" and len(parts) <= 2:
            from engine.gaze.pupil_labs import PupilLabsGazeReceiver

            port = int(parts[1]) if len(parts) == 2 else 8080
            return PupilLabsGazeReceiver(address=parts[0] if parts else None, port=port)
    except ValueError as exc:
        if "invalid literal" not in str(exc):
            raise
    raise ValueError(f"bad live gaze source {spec!r}: write udp[:PORT], udp:HOST:PORT, pupil or pupil:HOST[:PORT]")
