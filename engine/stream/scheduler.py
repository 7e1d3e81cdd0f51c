"""Keyframe scheduling: when to encode (``KeyframePolicy``) and who encodes (``AsyncEncoder``).

The image encoder is the heavy stage (tens of decodes' worth; ``bench/bench_model.py``), the
decoder is light. ``AsyncEncoder`` runs the encode on a worker thread:
``submit`` returns at once (a request while busy is dropped and counted), ``latest`` hands out the
newest finished keyframe without waiting, so every frame is decoded on the newest embedding.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager, Literal

import cv2
import numpy as np

from engine.types import Embedding, Frame


def corner_displacement_px(matrix: np.ndarray, frame_hw: tuple[int, int]) -> float:
    """Largest displacement (pixels) of the four image corners under the 3x3 homography ``matrix``."""
    h, w = frame_hw
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
    moved = corners @ np.asarray(matrix, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        moved = moved[:, :2] / moved[:, 2:3]
    d = np.linalg.norm(moved - corners[:, :2], axis=1)
    return float(np.max(d)) if np.all(np.isfinite(d)) else float("inf")


@dataclass(frozen=True, slots=True)
class KeyframePolicy:
    """When to encode a new keyframe.

    ``mode="interval"``: every ``interval`` frames (1 = every frame). ``mode="auto"``: when the
    keyframe->frame homography moves an image corner by more than ``max_corner_px``, when the
    motion fit's inlier ratio falls under ``min_inlier_ratio``, when an object's predicted score
    dropped by more than ``max_score_drop`` since the keyframe, or after ``interval`` frames at the
    latest (0: no upper bound); never sooner than ``min_interval`` frames. A motion fit that is
    not ``ok`` forces a keyframe in both modes.
    """

    mode: Literal["interval", "auto"] = "interval"
    interval: int = 5
    max_corner_px: float = 24.0
    min_inlier_ratio: float = 0.5
    max_score_drop: float = 0.15
    min_interval: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("interval", "auto"):
            raise ValueError(f"KeyframePolicy.mode must be 'interval' or 'auto', got {self.mode!r}")
        if self.interval < (1 if self.mode == "interval" else 0):
            raise ValueError(
                f"KeyframePolicy.interval must be >= 1 (interval mode) or >= 0 (auto), got {self.interval}"
            )
        if self.min_interval < 1 or self.max_corner_px <= 0 or not 0 <= self.min_inlier_ratio <= 1:
            raise ValueError(f"bad KeyframePolicy thresholds: {self}")

    @classmethod
    def parse(cls, text: str | int) -> "KeyframePolicy":
        """``"auto"`` or an interval ``"K"`` (as the CLI's ``--keyframe``)."""
        text = str(text).strip()
        if text == "auto":
            return cls(mode="auto", interval=30)
        if text.isdigit() and int(text) >= 1:
            return cls(mode="interval", interval=int(text))
        raise ValueError(f"keyframe policy {text!r} must be 'auto' or a positive interval K (1 = every frame)")

    def reason(
        self,
        frames_since_keyframe: int,
        corner_px: float = 0.0,
        inlier_ratio: float = 1.0,
        motion_ok: bool = True,
        score_drop: float = 0.0,
    ) -> str | None:
        """Why this frame should be a keyframe ("interval", "motion", "inliers", "score",
        "motion_fit"), or ``None``. ``frames_since_keyframe``: current index - keyframe index."""
        if frames_since_keyframe <= 0:
            return None
        if not motion_ok:
            return "motion_fit"
        if self.mode == "interval":
            return "interval" if frames_since_keyframe >= self.interval else None
        if frames_since_keyframe < self.min_interval:
            return None
        if self.interval and frames_since_keyframe >= self.interval:
            return "interval"
        if corner_px > self.max_corner_px:
            return "motion"
        if inlier_ratio < self.min_inlier_ratio:
            return "inliers"
        if score_drop > self.max_score_drop:
            return "score"
        return None


@dataclass(frozen=True, slots=True)
class Keyframe:
    """A finished encode: the embedding, the frame it came from, and its grey image for motion.

    ``grey``: ``hxw uint8`` (the engine's motion resolution); ``encode_ms``: wall time of the encode;
    ``finished_ns``: ``time.monotonic_ns()`` when it became available; ``rgb_small``: the frame at
    the motion resolution, ``hxwx3 uint8`` (scores point proposals by colour), None if not kept.
    """

    embedding: Embedding
    frame_index: int
    grey: np.ndarray
    frame_hw: tuple[int, int]
    encode_ms: float
    finished_ns: int
    rgb_small: np.ndarray | None = None

    @classmethod
    def of(cls, embedding: Embedding, frame: Frame, grey: np.ndarray, encode_ms: float) -> "Keyframe":
        """The keyframe of ``frame`` (``grey``: its motion image), finished now; ``rgb_small`` resized to ``grey``."""
        small = cv2.resize(frame.rgb, (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_AREA) if grey.size else None
        return cls(embedding, frame.index, grey, tuple(frame.rgb.shape[:2]), encode_ms, time.monotonic_ns(), small)


RECENT_ENCODES = 1_000


@dataclass(slots=True)
class EncoderStats:
    """Counters of one encoder (mutable): requests, drops while busy, finished encodes, their times.

    ``encode_ms``: wall times of the most recent ``RECENT_ENCODES`` encodes (bounded);
    ``encode_ms_total``: the sum over all ``finished`` encodes. ``errors``: encodes that raised
    (the keyframe is skipped; the previous one stays in use)."""

    submitted: int = 0
    dropped_busy: int = 0
    finished: int = 0
    errors: int = 0
    encode_ms: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_ENCODES))
    encode_ms_total: float = 0.0


EncodeFn = Callable[[np.ndarray, int], Embedding]


class AsyncEncoder:
    """Owns the keyframe encode, on a worker thread (``asynchronous=True``) or inline.

    ``encode_fn(rgb HxWx3 uint8, frame_index) -> Embedding`` must not touch state the decoder uses.
    Asynchronous: ``submit`` never blocks; while an encode is running further requests are dropped
    (``stats.dropped_busy``). Synchronous (tests, offline): ``submit`` encodes before returning.
    ``nice``: how much lower the worker thread's scheduling priority is (Linux, per thread).
    ``max_consecutive_errors``: encodes in a row that may raise before the error is re-raised to
    the caller; fewer are counted (``stats.errors``, ``last_error``) and their keyframe skipped.
    ``turn``: a context the worker enters before it takes a request, held through the encode (a
    shared encoder's turn, ``engine.serve.engines.SharedBackend.encode_turn``). While the worker
    waits for it, a newer request replaces the waiting one (counted in ``dropped_busy``), so an
    encode that had to wait for other sessions' encodes still starts on the newest frame.
    """

    def __init__(self, encode_fn: EncodeFn, asynchronous: bool = True, nice: int = 0,
                 max_consecutive_errors: int = 1, turn: Callable[[], ContextManager[Any]] | None = None) -> None:
        if max_consecutive_errors < 1:
            raise ValueError(f"max_consecutive_errors must be >= 1, got {max_consecutive_errors}")
        self._encode_fn = encode_fn
        self._turn = turn or nullcontext
        self._replace_waiting = turn is not None  # without turns a request is taken at once: drop as before
        self.asynchronous = asynchronous
        self.nice = nice
        self.max_consecutive_errors = max_consecutive_errors
        self.last_error: str | None = None
        self._consecutive_errors = 0
        self.stats = EncoderStats()
        self._latest: Keyframe | None = None
        self._pending: tuple[Frame, np.ndarray] | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if asynchronous:
            self._thread = threading.Thread(target=self._run, name="arsel-keyframe-encoder", daemon=True)
            self._thread.start()

    # --- producer side ------------------------------------------------------------------------
    def submit(self, frame: Frame, grey: np.ndarray) -> bool:
        """Request an encode of ``frame`` (``grey``: its motion image). False: dropped (busy)."""
        self._raise_if_failed()
        if self._closed:
            raise RuntimeError("the keyframe encoder is closed; create a new StreamEngine to go on")
        self.stats.submitted += 1
        if not self.asynchronous:
            self._encode(frame, grey)
            self._raise_if_failed()
            return True
        with self._cond:
            if self._busy and (self._pending is None or not self._replace_waiting):  # an encode is running
                self.stats.dropped_busy += 1
                return False
            if self._pending is not None:  # waiting for its turn: the newest frame takes its place
                self.stats.dropped_busy += 1
            self._busy = True
            self._pending = (frame, grey)
            self._cond.notify()
        return True

    def latest(self) -> Keyframe | None:
        """The newest finished keyframe (never waits), or None before the first encode finished."""
        self._raise_if_failed()
        return self._latest

    @property
    def busy(self) -> bool:
        """True while an encode is queued or running."""
        return self._busy

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no encode is running (offline use and tests); False on timeout."""
        with self._cond:
            ok = self._cond.wait_for(lambda: not self._busy, timeout_s)
        self._raise_if_failed()
        return ok

    def close(self) -> None:
        """Stop the worker (waits for a running encode to finish)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # --- worker side --------------------------------------------------------------------------
    def _encode(self, frame: Frame, grey: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            emb = self._encode_fn(frame.rgb, frame.index)
        except Exception as exc:  # noqa: BLE001 - handed to the decoder thread, re-raised there
            self.stats.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._consecutive_errors += 1
            if self._consecutive_errors >= self.max_consecutive_errors:
                self._error = exc  # (KeyboardInterrupt/SystemExit propagate: Ctrl-C in sync mode stops)
            return
        self._consecutive_errors = 0
        ms = (time.perf_counter() - t0) * 1e3
        self._latest = Keyframe.of(emb, frame, grey, ms)
        self.stats.finished += 1
        self.stats.encode_ms.append(ms)
        self.stats.encode_ms_total += ms

    def _lower_priority(self) -> None:
        """Raise the worker thread's nice value by ``nice`` (Linux: per thread, its native id), so
        the decoder thread and its OpenCV helpers win the cores while an encode runs. A platform
        without per-thread priorities keeps the default."""
        if self.nice <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError:
            pass

    def _run(self) -> None:
        self._lower_priority()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._stop_if_closed():
                    return
            with self._turn():  # the newest request once it is this encoder's turn
                with self._cond:
                    if self._stop_if_closed():
                        return
                    frame, grey = self._pending  # type: ignore[misc]
                    self._pending = None
                try:
                    self._encode(frame, grey)
                except BaseException as exc:  # noqa: BLE001 - not an Exception (SystemExit): the decoder
                    self._error = exc  # thread re-raises it; this worker stops
                    return
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()

    def _stop_if_closed(self) -> bool:
        """Under ``_cond``: when closed, drop a request not started yet (close() waits for a running
        one only) and tell the waiters; True if so."""
        if not self._closed:
            return False
        self._pending, self._busy = None, False
        self._cond.notify_all()
        return True

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(
                f"the keyframe encoder failed: {type(self._error).__name__}: {self._error}. "
                "Check the model/backend (the error above comes from its encode)."
            ) from self._error

    def __enter__(self) -> "AsyncEncoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
