"""Offline evaluation under a live server's schedule, deterministic (``bench/bench_live.py``).

A live server steps only the newest frame whenever its engine is free, and its keyframe encoder
finishes an encode many frames after the request (on 2 CPU cores, LiteMedSAM's encode takes 1-2 s:
30-60 frames at 30 fps). Tracking then decodes on old keyframes, through large motions, and drift
corrections fire that ``evaluate_davis`` (every frame, synchronous keyframes) never sees. Timed live
runs show it, but their scores vary from run to run by more than most changes are worth.

:class:`LateEncoder` replaces the engine's encoder with one whose timing is set in frames: a keyframe
requested on frame ``k`` is adopted by the first frame stepped at or after ``k + delay``, one
request at a time (others are dropped, as while a real encode runs). :func:`evaluate_live` steps
every ``stride``-th frame of a DAVIS sequence played forth and back (a camera's stream has no
scene cuts). The same settings give the same masks, so two tracker settings compare frame for frame.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.stream.evaluate import StartKind, TrackEval, davis_annotations, jaccard, start_prompt
from engine.stream.scheduler import EncoderStats, Keyframe
from engine.stream.sources import folder_images
from engine.types import Frame


class LateEncoder:
    """The engine's keyframe encoder with its lag in frames (see the module docstring).

    ``encode_fn(rgb HxWx3 uint8, frame_index) -> Embedding`` (``StreamEngine._encode``). Call
    :meth:`advance` with each frame's index before stepping it; the first request is adopted at once
    (a live stream's first results wait for its first keyframe)."""

    asynchronous = True  # to the engine's scheduler: requests are not waited for

    def __init__(self, encode_fn: Any, delay: int) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 frames, got {delay}")
        self._encode_fn, self.delay = encode_fn, delay
        self._latest: Keyframe | None = None
        self._pending: tuple[Frame, np.ndarray] | None = None
        self.stats = EncoderStats()
        self.adopted: list[tuple[int, int]] = []  # (keyframe's frame index, frame index it was adopted on)

    @classmethod
    def install(cls, engine: Any, delay: int) -> "LateEncoder":
        """Replace ``engine.encoder`` (a ``StreamEngine``) with a late one; returns it."""
        engine.encoder.close()
        engine.encoder = cls(engine._encode, delay)
        return engine.encoder

    def submit(self, frame: Frame, grey: np.ndarray) -> bool:
        self.stats.submitted += 1
        if self._pending is not None:
            self.stats.dropped_busy += 1
            return False
        self._pending = (frame, grey)
        return True

    def advance(self, frame_index: int) -> None:
        """Adopt the pending keyframe if ``frame_index`` is ``delay`` frames past its request (or it is the first)."""
        if self._pending is None:
            return
        frame, grey = self._pending
        if self._latest is not None and frame_index < frame.index + self.delay:
            return
        self._pending = None
        t0 = time.perf_counter()
        emb = self._encode_fn(frame.rgb, frame.index)
        ms = (time.perf_counter() - t0) * 1e3
        self._latest = Keyframe.of(emb, frame, grey, ms)
        self.stats.finished += 1
        self.stats.encode_ms.append(ms)
        self.adopted.append((frame.index, frame_index))

    def latest(self) -> Keyframe | None:
        return self._latest

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        return True

    def close(self) -> None:
        self._pending = None


def evaluate_live(engine: Any, folder: str | Path, stride: int, delay: int, frames: int, start: StartKind = "box",
                  seed: int = 0) -> TrackEval:
    """Track a DAVIS sequence's object from a ``start`` on frame 0 as a live server would (see the
    module docstring): ``frames`` frames of the sequence played forth and back, every ``stride``-th
    stepped, keyframes adopted ``delay`` frames after their request. J per stepped frame (the first
    is frame 0; ``TrackEval.mean_j_after_first`` leaves it out)."""
    if stride < 1 or frames < 1:
        raise ValueError(f"stride and frames must be >= 1, got {stride}, {frames}")
    truth = davis_annotations(folder)
    paths = folder_images(Path(folder) / "JPEGImages")[:len(truth)]
    order = list(range(len(paths))) + list(range(len(paths) - 2, 0, -1))  # forth and back: no scene cut
    images: dict[int, np.ndarray] = {}

    def image(k: int) -> np.ndarray:
        if k not in images:
            images[k] = cv2.cvtColor(cv2.imread(str(paths[k])), cv2.COLOR_BGR2RGB)
        return images[k]

    encoder = LateEncoder.install(engine, delay)
    engine.add_object(start_prompt(start, truth[0], seed))
    engine.step(Frame(0, 0, image(0)))  # requests the first keyframe ...
    encoder.advance(0)  # ... adopted at once: a live stream's results start with it
    js, statuses, areas, truth_areas = [], [], [], []
    for index in range(0, frames, stride):
        k = order[index % len(order)]
        encoder.advance(index)
        res = engine.step(Frame(index, index * 1_000_000_000 // 30, image(k)))
        obj = res.objects[0] if res.objects else None
        mask = obj.mask if obj is not None and obj.found else np.zeros_like(truth[k])
        js.append(jaccard(mask, truth[k]))
        statuses.append(obj.status if obj is not None else "lost")
        areas.append(int(mask.sum()))
        truth_areas.append(int(truth[k].sum()))
    return TrackEval(np.array(js), tuple(engine.stats.keyframes_used), engine.latency.to_json(), tuple(statuses),
                     np.array(areas, np.int64), np.array(truth_areas, np.int64))
