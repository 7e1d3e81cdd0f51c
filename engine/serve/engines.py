"""Where a session's ``StreamEngine`` comes from: the one seam a scale-out replaces.

:class:`LocalEngines` loads one model backend and gives every session its own ``StreamEngine``
over it (its own objects, keyframes, motion, encoder worker). The shared backend is wrapped in
:class:`SharedBackend`, which serialises encodes with one lock and decodes with another, so two
sessions never run the same module at once (compiled/graph runtimes keep per-module buffers) while
one session's encode never waits for another's decode. Both locks are first come, first served
(:class:`FairLock`): a plain lock lets the session that just released it take it again, and
sessions that keep asking for decodes starve the others. A remote encoder (a Ray Serve deployment)
would be another ``EngineFactory`` handing out engines whose backend ``encode`` calls it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from engine.backends.base import Backend, BackendInfo
from engine.models.registry import ModelSpec
from engine.stream.decoding import roi_window_blocker
from engine.stream.engine import EngineConfig, MotionModel, StreamEngine
from engine.stream.scheduler import KeyframePolicy
from engine.stream.tracker import Tracker


class EngineFactory(Protocol):
    """Makes one session's engine; ``model`` and ``backend_name`` are reported by ``/healthz``."""

    model: str
    backend_name: str

    def __call__(self) -> StreamEngine: ...

    def close(self) -> None: ...


class FairLock:
    """A lock granted in the order it was asked for (a ticket lock), usable in ``with``."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> "FairLock":
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cond.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class SharedBackend:
    """A backend shared by sessions: encode and decode each behind their own :class:`FairLock`."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.input_size = backend.input_size
        self._encode_lock = FairLock()
        self._decode_lock = FairLock()
        self._turn = threading.local()

    @contextmanager
    def encode_turn(self) -> Iterator[None]:
        """Hold the encode lock (a session's turn); ``encode`` on this thread meanwhile runs at once.
        A session's keyframe encoder waits here before it takes its newest frame
        (``engine.stream.scheduler.AsyncEncoder``'s ``turn``)."""
        with self._encode_lock:
            self._turn.held = True
            try:
                yield
            finally:
                self._turn.held = False

    def encode(self, image: np.ndarray) -> Any:
        if getattr(self._turn, "held", False):
            return self._backend.encode(image)
        with self._encode_lock:
            return self._backend.encode(image)

    def decode(self, embedding: Any, point_coords: np.ndarray, point_labels: np.ndarray, mask_input: np.ndarray,
               has_mask_input: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        with self._decode_lock:
            return self._backend.decode(embedding, point_coords, point_labels, mask_input, has_mask_input, **kwargs)

    def describe(self) -> BackendInfo:
        return self._backend.describe()

    def __getattr__(self, name: str) -> Any:  # optional capabilities (supports_roi, ...) pass through
        attr = getattr(self._backend, name)
        if callable(attr) and name.startswith(("decode", "upsample")):
            def locked(*args: Any, **kwargs: Any) -> Any:
                with self._decode_lock:
                    return attr(*args, **kwargs)
            return locked
        return attr


@dataclass
class LocalEngines:
    """Engines over one in-process backend (see the module docstring). A ``config.roi_margin`` that
    no decode here can use (``decoding.roi_window_blocker``) becomes None, quietly: it is the live
    default, not a request, so sessions never warn about it."""

    backend: Backend
    spec: ModelSpec
    model: str
    policy: KeyframePolicy = field(default_factory=KeyframePolicy)
    motion: MotionModel = "homography"
    async_encoder: bool = True
    config: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        self.shared = SharedBackend(self.backend)
        self.backend_name = self.backend.describe().runtime
        if self.config.roi_margin is not None:  # a live default: whole masks, quietly, where no window applies
            feeds_back = Tracker(self.config.tracker, points_supported=not self.spec.box_only).feeds_masks_back
            if roi_window_blocker(self.shared, feeds_back) is not None:
                self.config = replace(self.config, roi_margin=None)

    @classmethod
    def load(cls, model: str, backend: str = "torch", checkpoint: Path | None = None, device: str = "cpu",
             threads: int | None = None, **kwargs: Any) -> "LocalEngines":
        """Load ``model`` once on runtime ``backend`` (``engine.backends.factory``; "auto" resolved
        here). ``threads``: intra-op threads per compute thread (``engine.threads``: None keeps the
        runtime's default)."""
        from engine.backends.factory import create_backend, resolve_auto
        from engine.models.registry import get_spec
        from engine.threads import apply_threads

        spec = get_spec(model)
        name = resolve_auto(device) if backend == "auto" else backend
        if threads is not None:
            apply_threads(name, threads)
        return cls(create_backend(name, model, checkpoint, device, threads=threads), spec, model, **kwargs)

    def __call__(self) -> StreamEngine:
        return StreamEngine(self.shared, self.spec, policy=self.policy, motion=self.motion,  # type: ignore[arg-type]
                            async_encoder=self.async_encoder, config=self.config)

    def close(self) -> None:
        """Nothing to release: the backend lives as long as the process."""
