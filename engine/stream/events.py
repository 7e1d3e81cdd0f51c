"""Plain event and prompt types exchanged between prompt sources, the tracker and the engine.

Coordinates are pixels of the *current frame* (x right, y down) unless a name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

PromptSourceKind = Literal["cursor", "gaze", "box", "cli", "mask"]


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the user pointed at, in current-frame pixels.

    ``points_xy`` float32 ``(N, 2)`` with ``labels`` float32 ``(N,)`` (1 foreground, 0 background),
    and/or ``box_xyxy`` float32 ``(4,)``. ``source`` records where it came from.
    """

    points_xy: np.ndarray | None = None
    labels: np.ndarray | None = None
    box_xyxy: np.ndarray | None = None
    source: PromptSourceKind = "cli"

    def __post_init__(self) -> None:
        if self.points_xy is None and self.box_xyxy is None:
            raise ValueError("empty Prompt: give points_xy (with labels) and/or box_xyxy")
        if self.points_xy is not None:
            pts = np.asarray(self.points_xy, dtype=np.float32).reshape(-1, 2)
            labels = np.ones(len(pts), np.float32) if self.labels is None else np.asarray(self.labels, np.float32)
            if labels.shape != (len(pts),):
                raise ValueError(f"Prompt.labels must have shape ({len(pts)},), got {labels.shape}")
            if not np.all(np.isin(labels, (0.0, 1.0))):
                raise ValueError(f"Prompt.labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
            object.__setattr__(self, "points_xy", pts)
            object.__setattr__(self, "labels", labels)
        elif self.labels is not None:
            raise ValueError("Prompt.labels were given without points_xy")
        if self.box_xyxy is not None:
            box = np.asarray(self.box_xyxy, dtype=np.float32).reshape(-1)
            if box.shape != (4,) or box[2] < box[0] or box[3] < box[1]:
                raise ValueError(f"Prompt.box_xyxy must be [x0, y0, x1, y1] with x0 <= x1, y0 <= y1, got {box}")
            object.__setattr__(self, "box_xyxy", box)
        for name in ("points_xy", "box_xyxy"):
            arr = getattr(self, name)
            if arr is not None and not np.all(np.isfinite(arr)):
                raise ValueError(f"Prompt.{name} contains NaN or infinite values: {arr.tolist()}")

    @classmethod
    def point(cls, x: float, y: float, label: int = 1, source: PromptSourceKind = "cli") -> "Prompt":
        return cls(np.array([[x, y]], np.float32), np.array([label], np.float32), None, source)

    @classmethod
    def box(cls, box_xyxy: object, source: PromptSourceKind = "cli") -> "Prompt":
        return cls(None, None, np.asarray(box_xyxy, np.float32), source)

    @property
    def has_foreground_point(self) -> bool:
        return self.labels is not None and bool(np.any(self.labels == 1))


@dataclass(frozen=True, slots=True)
class CursorEvent:
    """One mouse event in frame pixels. ``kind``: "down", "move" or "up"; ``button``: "left"/"right"."""

    kind: Literal["down", "move", "up"]
    x: float
    y: float
    button: Literal["left", "right", "none"] = "left"
    shift: bool = False
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class SelectEvent:
    """Select a new object (``object_id`` None) or add a prompt to object ``object_id``."""

    prompt: Prompt
    object_id: int | None = None
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class ReleaseEvent:
    """Stop tracking ``object_id`` (None: every object)."""

    object_id: int | None = None
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class HoverEvent:
    """A transient preview prompt (hover mode); ``None`` clears the preview."""

    prompt: Prompt | None
    timestamp_ns: int = 0


PromptEvent = SelectEvent | ReleaseEvent | HoverEvent
