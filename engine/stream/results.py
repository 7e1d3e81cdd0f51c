"""Result types of the stream engine: per-object ``MaskResult``, per-frame ``StepResult``, counters."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from engine.stream.events import Prompt
from engine.stream.object_motion import MotionInfo

MaskStatus = Literal["ok", "drift_corrected", "reacquired", "lost", "no_embedding", "outside"]
FOUND_STATUSES = ("ok", "drift_corrected", "reacquired")  # a mask is reported
TRACK_STATUSES = ("ok", "drift_corrected", "lost", "reacquired")  # the per-object counters
# arsel.v1 ``result.objects[].status`` (docs/protocol.md: new | tracked | lost; "new" is the
# session's first result after an ``add``): every status with a mask is "tracked", the rest "lost".
WIRE_STATUS: dict[str, str] = {"ok": "tracked", "drift_corrected": "tracked", "reacquired": "tracked",
                               "lost": "lost", "no_embedding": "lost", "outside": "lost"}
RECENT_KEYFRAMES = 10_000  # keyframe indices kept in EngineStats (a long live session stays bounded)


@dataclass(frozen=True, slots=True)
class MaskResult:
    """One object in one frame. ``mask`` bool ``(H, W)`` in the current frame (all False unless
    ``found``); ``score`` predicted IoU; ``box_xyxy`` float32 ``(4,)`` of the mask or None.
    ``status``: "ok" (the tracking decode passed the drift guard), "drift_corrected" (it failed and
    a re-decode from the anchor passed), "reacquired" (found again after a loss), "lost" (nothing
    fitted; the last good mask waits for the next keyframe), "no_embedding", "outside" (the prompt
    left the keyframe). ``area_ratio``: mask area over the guard's expected area (NaN without one)."""

    object_id: int
    frame_index: int
    keyframe_index: int
    mask: np.ndarray
    score: float
    status: MaskStatus
    box_xyxy: np.ndarray | None = None
    motion: MotionInfo | None = None
    area_ratio: float = float("nan")

    @property
    def found(self) -> bool:
        """Whether a mask is reported (``ok``, ``drift_corrected`` or ``reacquired``)."""
        return self.status in FOUND_STATUSES

    @property
    def wire_status(self) -> str:
        """The ``status`` of this object in an ``arsel.v1`` result (``WIRE_STATUS``)."""
        return WIRE_STATUS[self.status]

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_:
            raise ValueError(f"MaskResult.mask must be bool (H, W), got {self.mask.dtype} {self.mask.shape}")


@dataclass(frozen=True, slots=True)
class StepResult:
    """Result of ``StreamEngine.step``. ``status``: "ok", "no_embedding" (no keyframe encoded yet)
    or "bad_frame" (the input was not a valid Frame; counted and skipped). ``timings_ms``: stages
    ``motion``, ``decode``, ``postprocess``, ``frame`` (whole step) and ``capture`` when given."""

    frame_index: int
    keyframe_index: int
    status: Literal["ok", "no_embedding", "bad_frame"]
    objects: tuple[MaskResult, ...]
    frame_hw: tuple[int, int]
    embedding_age_frames: int = 0
    keyframe_reason: str | None = None
    keyframe_submitted: bool = False
    motion: MotionInfo | None = None  # global (camera) fit, when it was computed
    hover: MaskResult | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def masks_by_id(self) -> list[np.ndarray]:
        """One ``(H, W) bool`` mask per id ``1..max id`` (index ``id - 1``; empty where an id has no
        result), so an overlay gives each object the same palette colour in every frame."""
        n = max((r.object_id for r in self.objects), default=0)
        masks = [np.zeros(self.frame_hw, bool) for _ in range(n)]
        for r in self.objects:
            masks[r.object_id - 1] = r.mask
        return masks

    def id_map(self) -> np.ndarray:
        """``(H, W) uint8``: each object's id where its mask is (later ids win overlaps), else 0."""
        out = np.zeros(self.frame_hw, np.uint8)
        for r in self.objects:
            out[r.mask] = r.object_id
        return out


@dataclass(slots=True)
class EngineStats:
    """Counters (mutable): frames stepped, bad inputs skipped, steps over budget, keyframes.

    ``keyframes_used``: frame indices of the most recent ``RECENT_KEYFRAMES`` keyframes decoded on
    (bounded; ``list(...)`` for JSON); ``keyframes_total``: all of them, counted."""

    frames: int = 0
    bad_frames: int = 0
    late_frames: int = 0
    keyframe_requests: int = 0
    keyframes_used: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_KEYFRAMES))
    keyframes_total: int = 0
    decodes_reused: int = 0
    track_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRACK_STATUSES, 0))

    def count_status(self, status: str) -> None:
        """One object-frame with a keyframe embedding ended with ``status`` (``TRACK_STATUSES``;
        "outside" counts as lost)."""
        key = status if status in self.track_status else "lost"
        self.track_status[key] += 1

    def add_keyframe(self, frame_index: int) -> None:
        """A keyframe was decoded on for the first time."""
        self.keyframes_used.append(frame_index)
        self.keyframes_total += 1


def prompt_key(prompt: Prompt) -> np.ndarray:
    """A prompt's coordinates and labels as one float vector (for the decode cache)."""
    parts = [a.reshape(-1) for a in (prompt.box_xyxy, prompt.points_xy, prompt.labels) if a is not None]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
