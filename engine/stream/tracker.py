"""Objects tracked across frames: ids, per-frame prompt refresh from the previous mask, lost/re-acquire.

Per frame each object's prompt (current-frame pixels) comes from its previous mask: the mask's box
padded by ``box_pad_frac`` of its size on each side, an interior point (distance-transform maximum)
for point-capable models, and the previous low-res logits as ``mask_input`` only when they were
decoded on the same keyframe (the logits live in that keyframe's geometry). An object whose score
falls under ``lost_score`` or whose mask vanishes is ``lost``; it is re-acquired from its last good
box on the next keyframe.

A user prompt is in the pixels of the frame it was given on (``TrackedObject.prompt_frame_index``,
stamped by the engine on the first step after ``add``/``refine``). With the async encoder its first
decode can come frames later, so the engine maps it into the keyframe from that frame, not from the
frame being stepped (see ``StreamEngine._prompt_motion``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from engine.deprecation import renamed_field
from engine.stream.events import Prompt
from engine.stream.guards import GuardState
from engine.transforms import mask_to_box_xyxy

ObjectStatus = Literal["new", "ok", "lost"]
MAX_OBJECT_ID = 255  # object ids are mask values (uint8)
PromptMode = Literal["user", "track", "reacquire"]


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """Prompt refresh and loss rules. ``lost_score``: predicted IoU under which an object is lost;
    ``min_area_px``: a smaller mask counts as vanished. ``use_mask_input``: feed the previous
    low-res logits back (same keyframe only); ``None`` = only for point-capable models. LiteMedSAM
    was trained on boxes alone and degrades with its logits fed back, so box-only models leave it off."""

    box_pad_frac: float = 0.05
    use_mask_input: bool | None = None
    interior_point: bool = True
    lost_score: float = 0.3
    min_area_px: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.box_pad_frac < 1:
            raise ValueError(f"box_pad_frac must be in [0, 1), got {self.box_pad_frac}")
        if self.min_area_px < 0:
            raise ValueError(f"min_area_px must be >= 0, got {self.min_area_px}")


@dataclass(frozen=True, slots=True)
class TrackPrompt:
    """Prompt of one object for one frame, in current-frame pixels.

    ``mask_input``: float32 ``(256, 256)`` low-res logits (keyframe geometry) or None.
    ``mode``: "user" (first decode of a user prompt), "track" (refreshed from the previous mask),
    "reacquire" (from the last good box after a loss).
    """

    prompt: Prompt
    mask_input: np.ndarray | None
    mode: PromptMode


@dataclass(slots=True)
class TrackedObject:
    """Mutable state of one object (owned by the ``Tracker``).

    ``prompt_frame_index``: frame the user prompt's pixels belong to (None until the engine steps
    the first frame after the prompt); ``prompt_grey``: that frame at the motion resolution
    (``hxw uint8``) and ``prompt_hw`` its full size, so a later first decode can fit the motion
    keyframe -> prompt frame. Both are dropped once the object has been found.
    """

    object_id: int
    user_prompt: Prompt
    status: ObjectStatus = "new"
    mask: np.ndarray | None = None  # HxW bool, last frame
    box_xyxy: np.ndarray | None = None  # float32 (4,), last frame
    last_good_box_xyxy: np.ndarray | None = None
    low_res_logits: np.ndarray | None = None  # float32 (256, 256), keyframe geometry
    low_res_keyframe: int | None = None
    low_res = renamed_field("low_res_logits", "low_res", settable=True)  # the old name, with a DeprecationWarning
    score: float = float("nan")
    score_at_keyframe: dict[int, float] = field(default_factory=dict)
    lost_on_keyframe: int | None = None
    frames_lost: int = 0
    key_regions: dict[int, np.ndarray] = field(default_factory=dict)  # frame index -> small bool mask
    decode_cache: Any = None  # (keyframe index, prompt key, decoded) of the engine's last decode
    box_motion: Any = None  # (keyframe index, MotionInfo keyframe -> the frame box_xyxy is in)
    prompt_frame_index: int | None = None
    prompt_grey: np.ndarray | None = None
    prompt_hw: tuple[int, int] | None = None
    guard: GuardState | None = None  # drift guard: last good mask, anchor, reference area (kept when lost)

    def remember_region(self, frame_index: int, region_small: np.ndarray, keep_from: int) -> None:
        """Keep the object's mask of a (candidate) keyframe for object motion; forget older ones."""
        self.key_regions = {k: v for k, v in self.key_regions.items() if k >= keep_from}
        self.key_regions[frame_index] = region_small


def pad_box(box_xyxy: np.ndarray, frac: float, frame_hw: tuple[int, int]) -> np.ndarray:
    """Grow a box by ``frac`` of its width/height on each side, clipped to the frame (float32)."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    dx, dy = frac * (x1 - x0), frac * (y1 - y0)
    h, w = frame_hw
    return np.array([max(0.0, x0 - dx), max(0.0, y0 - dy), min(w, x1 + dx), min(h, y1 + dy)], np.float32)


def interior_point_xy(mask: np.ndarray) -> np.ndarray | None:
    """The mask pixel farthest from its border (distance-transform maximum), float32 ``(2,)``."""
    if not mask.any():
        return None
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], np.float32)


class Tracker:
    """Objects with ids; builds each frame's prompts and folds decoded masks back in."""

    def __init__(self, config: TrackerConfig | None = None, points_supported: bool = True) -> None:
        self.config = config or TrackerConfig()
        self.points_supported = points_supported
        self._objects: dict[int, TrackedObject] = {}
        self._next_id = 1  # where the search for a free id starts (round robin over 1..255)

    # --- membership ---------------------------------------------------------------------------
    def add(self, prompt: Prompt, object_id: int | None = None) -> int:
        """Start tracking an object from a user prompt; returns its id: ``object_id``, or (None) the
        next id not tracked now, round robin over 1..255: 1, 2, 3, ... as long as they last (callers
        that key logs by id see a new id per selection), then the ids of released objects again,
        least recently issued first. Raises only when all 255 are tracked."""
        if not isinstance(prompt, Prompt):
            raise TypeError(f"expected an engine.stream.events.Prompt, got {type(prompt).__name__}")
        auto = object_id is None
        if auto:
            order = [(self._next_id - 1 + k) % MAX_OBJECT_ID + 1 for k in range(MAX_OBJECT_ID)]
            object_id = next((i for i in order if i not in self._objects), 0)
            if object_id == 0:
                raise ValueError(f"all {MAX_OBJECT_ID} object ids are tracked (ids are mask values); release "
                                 "objects first (remove_object / a ReleaseEvent, key 'c' in the demos)")
        if object_id in self._objects:
            raise ValueError(f"object id {object_id} is already tracked; remove it first or pick another id")
        if not 1 <= object_id <= MAX_OBJECT_ID:
            raise ValueError(f"object ids must be in 1..{MAX_OBJECT_ID} (they are mask values), got {object_id}")
        self._objects[object_id] = TrackedObject(object_id, prompt)
        if auto:
            self._next_id = object_id % MAX_OBJECT_ID + 1
        return object_id

    def refine(self, object_id: int, prompt: Prompt) -> None:
        """Replace an object's prompt with a new user prompt (decoded on the next frame)."""
        obj = self.get(object_id)
        self._objects[object_id] = TrackedObject(object_id, prompt, last_good_box_xyxy=obj.last_good_box_xyxy)

    def remove(self, object_id: int | None = None) -> None:
        """Stop tracking ``object_id`` (None: all objects). Unknown ids are ignored."""
        if object_id is None:
            self._objects.clear()
        else:
            self._objects.pop(object_id, None)

    def get(self, object_id: int) -> TrackedObject:
        try:
            return self._objects[object_id]
        except KeyError:
            raise KeyError(f"no tracked object with id {object_id}; tracked: {sorted(self._objects)}") from None

    @property
    def objects(self) -> list[TrackedObject]:
        return list(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._objects

    @property
    def feeds_masks_back(self) -> bool:
        """Whether tracking prompts carry the previous low-res logits as ``mask_input``."""
        use = self.config.use_mask_input
        return self.points_supported if use is None else bool(use)

    # --- per frame ----------------------------------------------------------------------------
    def stamp_prompts(self, frame_index: int, grey: np.ndarray, frame_hw: tuple[int, int]) -> None:
        """Record the frame user prompts given since the last step belong to (the one stepped now):
        ``grey`` is it at the motion resolution (``hxw uint8``), ``frame_hw`` its full size."""
        for obj in self._objects.values():
            if obj.prompt_frame_index is None:
                obj.prompt_frame_index, obj.prompt_grey, obj.prompt_hw = frame_index, grey, frame_hw

    def forget_keyframes(self) -> None:
        """Drop every object's per-keyframe state (the keyframes restart: another source)."""
        for obj in self._objects.values():
            obj.key_regions, obj.decode_cache, obj.score_at_keyframe, obj.box_motion = {}, None, {}, None
            obj.low_res_logits = obj.low_res_keyframe = obj.lost_on_keyframe = None
            obj.guard = None

    def prompt_for(self, obj: TrackedObject, keyframe_index: int, frame_hw: tuple[int, int]) -> TrackPrompt | None:
        """This frame's prompt for ``obj`` (current-frame pixels), or None (lost, wait for a keyframe)."""
        cfg = self.config
        if obj.status == "new":
            return TrackPrompt(obj.user_prompt, None, "user")
        if obj.status == "lost":
            if obj.lost_on_keyframe == keyframe_index:
                return None
            if obj.last_good_box_xyxy is None:  # never found: try the user's prompt again
                return TrackPrompt(obj.user_prompt, None, "user")
            box = pad_box(obj.last_good_box_xyxy, cfg.box_pad_frac, frame_hw)
            return TrackPrompt(Prompt.box(box, source="mask"), None, "reacquire")
        box = pad_box(obj.box_xyxy, cfg.box_pad_frac, frame_hw)  # type: ignore[arg-type]
        points = labels = None
        if cfg.interior_point and self.points_supported and obj.mask is not None:
            pt = interior_point_xy(obj.mask)
            if pt is not None:
                points, labels = pt[None], np.ones(1, np.float32)
        mask_input = obj.low_res_logits if self.feeds_masks_back and obj.low_res_keyframe == keyframe_index else None
        return TrackPrompt(Prompt(points, labels, box, source="mask"), mask_input, "track")

    def update(
        self,
        obj: TrackedObject,
        mask: np.ndarray,
        score: float,
        low_res_logits: np.ndarray | None,
        keyframe_index: int,
    ) -> ObjectStatus:
        """Fold one decoded mask (current frame, HxW bool) in; returns the object's new status."""
        box = mask_to_box_xyxy(mask)
        area = int(mask.sum())
        obj.score = float(score)
        if box is None or area < self.config.min_area_px or score < self.config.lost_score:
            self.mark_lost(obj, keyframe_index)
            return obj.status
        box = box + np.array([0, 0, 1, 1], np.float32)  # inclusive indices -> pixel-edge box
        obj.status, obj.mask, obj.box_xyxy, obj.last_good_box_xyxy = "ok", mask, box, box
        obj.prompt_grey = None  # found: its user prompt is not decoded again (a refine starts afresh)
        obj.low_res_logits, obj.low_res_keyframe, obj.frames_lost = low_res_logits, keyframe_index, 0
        if keyframe_index not in obj.score_at_keyframe:  # only the current keyframe's is kept
            obj.score_at_keyframe = {keyframe_index: float(score)}
        obj.lost_on_keyframe = None
        return obj.status

    def mark_lost(self, obj: TrackedObject, keyframe_index: int) -> None:
        """Lose ``obj`` on this keyframe; it is tried again from its last good box (or, if it was
        never found, its user prompt) on the next one."""
        obj.status, obj.mask, obj.low_res_logits, obj.low_res_keyframe = "lost", None, None, None
        obj.lost_on_keyframe = keyframe_index
        obj.frames_lost += 1

    def score_drop(self, keyframe_index: int) -> float:
        """Largest fall of an object's score since its first decode on ``keyframe_index``."""
        drops = [o.score_at_keyframe[keyframe_index] - o.score for o in self._objects.values()
                 if o.status == "ok" and keyframe_index in o.score_at_keyframe]
        return max(drops, default=0.0)
