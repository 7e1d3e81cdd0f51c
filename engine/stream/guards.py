"""Drift guards: keep a tracked object's mask consistent with what its motion predicts.

Per object the guard keeps the last good mask, an anchor (the user's prompt point, or the first
mask's interior point for a box, mapped through the motion since) and a reference area. Each
frame the expectation is that mask and anchor warped by the previous->current frame motion, the
reference area scaled by the same warp. A new mask fails the check when its area leaves
``[min_area_ratio, max_area_ratio]`` of the reference, its IoU with the expected mask falls under
``min_iou``, it no longer covers the anchor, or its colours (an 8x8x8 RGB histogram) moved more
than ``max_colour_dist`` (Bhattacharyya) from the object's: an occluder in front of the object
fits its place and size, not its colours. A failing mask is re-decoded from the expectation
(``GuardConfig.strategy``, see ``correction_boxes``); candidates are scored by
``candidate_score`` and the best one is kept when it passes the check, else the object is lost.

A new keyframe can show an object at another size than the old one did (an embedding many frames
old, or a real change). When a tracking decode fails on its area alone and the re-decode agrees
with it (the kept candidate's IoU with it >= ``confirm_iou``), the re-decode confirms it when
either it is the object's first tracking decode on the keyframe, or the re-decode came no closer
to the reference area than the decode did: the embedding then holds no mask nearer the reference
to find, and a re-decode on every frame of the keyframe would find the same mask again. The
accepted mask's area becomes the reference of the object's tracking decodes until the keyframe
changes (``GuardState.key_ref``). A mask that shrinks from frame to frame while re-decodes still
find it nearer its reference (the point start that decays) is drift, judged and corrected as
before. The long-term reference goes on as before and judges the next keyframe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from engine.motion import warp_mask
from engine.transforms import mask_to_box_xyxy

Strategy = Literal["auto", "proposals", "box", "mask_input", "combined"]


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Guard thresholds. A tracking decode passes with its area in ``[min_area_ratio,
    max_area_ratio]`` of the reference, IoU >= ``min_iou`` with the expected mask, the anchor
    covered and a colour distance <= ``max_colour_dist``; a re-decoded candidate fits with the
    looser ``fit_area_ratio`` and ``fit_min_iou`` (``reacquire_min_iou`` after a loss: it moved
    unseen). ``ref_rate``: weight of an accepted mask in the reference area and colour histogram
    (exponential moving averages). Correction boxes: the expected mask's box grown by each of
    ``margins`` (fraction of its size per side), boxes of ``anchor_scales`` times its size and
    squares of ``anchor_squares`` times the frame's shorter side (as the point proposals, so
    independent of a drifted mask), centred on the anchor. ``strategy``: "proposals" (all those
    boxes in one batched decode, scored against the expectation), "box" (the expected box grown
    by ``margins[1]``, plus the anchor point on point-capable models), "mask_input" (the
    tracking prompt again with the previous low-res logits as ``mask_input``; "box" without
    them), "combined" (the "mask_input" decode and the "proposals" boxes, best one kept) or
    "auto" ("proposals" for an object started from a box, "mask_input" for one started from a
    point). "proposals" is the default (the best over the DAVIS clips, ``bench/bench_stream.py``).
    ``max_candidates``: most prompts one correction decodes (the first of ``correction_boxes``, in
    its order); None: all. A live server caps it to bound a correcting frame's time. ``staged``:
    "proposals" decodes the first box (the expected mask's own) alone and keeps it when it passes
    its check, decoding the others only when it fails (a decode costs about the same per prompt,
    so most corrections cost one decode instead of all of them); False: all in one batch.
    ``confirm_iou``: IoU between a tracking decode failed on its area alone and its accepted
    correction from which the correction may confirm it (``confirms``); above 1 never."""

    enabled: bool = True
    min_area_ratio: float = 0.8
    max_area_ratio: float = 1.45
    min_iou: float = 0.5
    fit_area_ratio: tuple[float, float] = (0.5, 2.0)
    fit_min_iou: float = 0.3
    reacquire_min_iou: float = 0.2
    ref_rate: float = 0.05
    max_colour_dist: float = 0.6
    margins: tuple[float, ...] = (0.0, 0.1, 0.25)
    anchor_scales: tuple[float, ...] = (1.0, 1.4)
    anchor_squares: tuple[float, ...] = (0.45, 0.65)
    strategy: Strategy = "proposals"
    max_candidates: int | None = None
    staged: bool = False
    confirm_iou: float = 0.9

    def __post_init__(self) -> None:
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1 or None, got {self.max_candidates}")
        if not 0 < self.min_area_ratio <= 1 <= self.max_area_ratio:
            raise ValueError(f"need 0 < min_area_ratio <= 1 <= max_area_ratio, got {self.min_area_ratio}, "
                             f"{self.max_area_ratio}")
        lo, hi = self.fit_area_ratio
        if not 0 < lo <= self.min_area_ratio or hi < self.max_area_ratio:
            raise ValueError(f"fit_area_ratio must hold [min_area_ratio, max_area_ratio], "
                             f"got {self.fit_area_ratio}")
        if self.confirm_iou <= 0:
            raise ValueError(f"confirm_iou must be > 0 (above 1: never), got {self.confirm_iou}")
        if not 0 <= self.min_iou <= 1 or not 0 <= self.reacquire_min_iou <= 1:
            raise ValueError(f"min_iou and reacquire_min_iou must be in [0, 1], got {self.min_iou}, "
                             f"{self.reacquire_min_iou}")
        if not 0 < self.ref_rate <= 1:
            raise ValueError(f"ref_rate must be in (0, 1], got {self.ref_rate}")
        if self.strategy not in ("auto", "proposals", "box", "mask_input", "combined"):
            raise ValueError(f"strategy must be 'auto', 'proposals', 'box', 'mask_input' or 'combined', "
                             f"got {self.strategy!r}")
        if not self.margins or any(m < 0 for m in self.margins) or any(s <= 0 for s in self.anchor_scales):
            raise ValueError(f"margins must be non-empty and >= 0, anchor_scales > 0; got {self.margins}, "
                             f"{self.anchor_scales}")


@dataclass(slots=True)
class GuardState:
    """An object's last good mask (``HxW bool``, pixels of frame ``frame_index``), its ``anchor_xy``
    float32 ``(2,)``, reference area (px) and colour histogram (``colour_hist``) there, that frame
    at the motion resolution
    (``grey``, ``hxw uint8``) and the keyframe->that frame motion (``keyframe_index``, 3x3)."""

    mask: np.ndarray
    anchor_xy: np.ndarray
    ref_area_px: float
    colour_hist: np.ndarray
    frame_index: int
    grey: np.ndarray
    keyframe_index: int
    key_to_frame: np.ndarray
    key_ref: tuple[int, float] | None = None  # (keyframe index, reference area px) of a confirmed decode


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the current frame should show: the last good mask warped (``HxW bool``), the anchor
    (``(2,)`` float32, current-frame pixels), the reference area (px), the object's colour
    histogram (float32 ``(8, 8, 8)``, sums to 1) and the keyframe reference (``GuardState.key_ref``,
    its area scaled as the reference's)."""

    mask: np.ndarray
    anchor_xy: np.ndarray
    ref_area_px: float
    colour_hist: np.ndarray
    key_ref: tuple[int, float] | None = None

    def tracking_ref_px(self, keyframe_index: int | None) -> float:
        """The reference area a tracking decode on ``keyframe_index`` is judged against."""
        if self.key_ref is not None and self.key_ref[0] == keyframe_index:
            return self.key_ref[1]
        return self.ref_area_px


@dataclass(frozen=True, slots=True)
class GuardCheck:
    """A mask against the expectation: area ratio to the reference (``ref_px``, px), IoU with the
    expected mask, whether it covers the anchor, the verdict, the colour histogram distance, and
    whether all but the area passed (``shape_ok``)."""

    area_ratio: float
    iou: float
    anchor_inside: bool
    passed: bool
    colour_dist: float = 0.0
    shape_ok: bool = False
    ref_px: float = 0.0


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` (ends exclusive) of a bool mask's set pixels, or None when it has none."""
    box = mask_to_box_xyxy(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = (int(v) for v in box)
    return y0, y1 + 1, x0, x1 + 1


def map_point(xy: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``(2,)`` point through a 3x3 homography, float32."""
    p = cv2.perspectiveTransform(np.asarray(xy, np.float64).reshape(1, 1, 2), matrix)
    return p.reshape(2).astype(np.float32)


def expect(state: GuardState, matrix: np.ndarray, frame_hw: tuple[int, int]) -> Expectation:
    """The expectation in the current frame, ``matrix`` mapping the state's frame to it."""
    warped = warp_mask(np.asarray(state.mask, bool), matrix, frame_hw)
    before = float(state.mask.sum())
    scale = max(float(warped.sum()) / before if before > 0 else 1.0, 1e-3)
    key_ref = None if state.key_ref is None else (state.key_ref[0], state.key_ref[1] * scale)
    return Expectation(warped, map_point(state.anchor_xy, matrix), state.ref_area_px * scale,
                       state.colour_hist, key_ref)


def colour_hist(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """8x8x8 RGB histogram (float32, sums to 1; all zero for an empty mask) of ``mask``'s pixels of
    ``rgb`` (``HxWx3 uint8``), on every second row and column."""
    sub = mask[::2, ::2]
    box = _bbox(sub)
    if box is None:
        return np.zeros((8, 8, 8), np.float32)
    y0, y1, x0, x1 = box  # only the mask's box counts: the same histogram, a fraction of the pixels
    pixels = np.ascontiguousarray(rgb[2 * y0:2 * y1:2, 2 * x0:2 * x1:2])
    h = cv2.calcHist([pixels], [0, 1, 2], sub[y0:y1, x0:x1].astype(np.uint8), [8, 8, 8], [0, 256] * 3)
    total = float(h.sum())
    return (h / total if total > 0 else h).astype(np.float32)


def colour_dist(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance of two histograms (0 same, 1 disjoint)."""
    if not a.any() or not b.any():
        return 1.0
    return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))


def anchor_inside(mask: np.ndarray, xy: np.ndarray) -> bool:
    """Whether the pixel under ``xy`` (``(2,)``) is in ``mask``."""
    h, w = mask.shape
    x, y = int(np.floor(xy[0])), int(np.floor(xy[1]))
    return bool(0 <= x < w and 0 <= y < h and mask[y, x])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return 0.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def check(mask: np.ndarray, exp: Expectation, config: GuardConfig, fit_min_iou: float | None = None,
          rgb: np.ndarray | None = None, keyframe_index: int | None = None) -> GuardCheck:
    """Judge ``mask`` (``HxW bool``, current frame ``rgb``; None skips the colours) against ``exp``:
    a tracking decode on ``keyframe_index`` (strict thresholds, against ``tracking_ref_px``), or
    with ``fit_min_iou`` a re-decoded candidate (``fit_area_ratio``, against the reference)."""
    ref = exp.ref_area_px if fit_min_iou is not None else exp.tracking_ref_px(keyframe_index)
    ratio = float(np.count_nonzero(mask)) / max(ref, 1.0)
    overlap = iou(mask, exp.mask)
    inside = anchor_inside(mask, exp.anchor_xy)
    lo, hi = (config.min_area_ratio, config.max_area_ratio) if fit_min_iou is None else config.fit_area_ratio
    need = config.min_iou if fit_min_iou is None else fit_min_iou
    colours = 0.0 if rgb is None else colour_dist(colour_hist(rgb, mask), exp.colour_hist)
    shape_ok = bool(overlap >= need and inside and colours <= config.max_colour_dist)
    return GuardCheck(ratio, overlap, inside, shape_ok and lo <= ratio <= hi, colours, shape_ok, ref)


def candidate_score(chk: GuardCheck) -> float:
    """Higher is better: IoU with the expected mask times area agreement; -1 without the anchor."""
    if not chk.anchor_inside:
        return -1.0
    r = chk.area_ratio
    return chk.iou * (min(r, 1 / r) if r > 0 else 0.0)


def grow_box(box_xyxy: np.ndarray, frac: float, frame_hw: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    dx, dy = frac * (x1 - x0), frac * (y1 - y0)
    h, w = frame_hw
    return np.array([max(0.0, x0 - dx), max(0.0, y0 - dy), min(w, x1 + dx), min(h, y1 + dy)], np.float32)


def correction_boxes(exp: Expectation, config: GuardConfig, frame_hw: tuple[int, int]) -> np.ndarray:
    """Boxes (current-frame pixels, ``(K, 4)`` float32) to re-decode from: the expected mask's box
    grown by each margin, and boxes of ``anchor_scales`` times its size centred on the anchor.
    Empty ``(0, 4)`` when the expected mask left the frame."""
    box = mask_to_box_xyxy(exp.mask)
    if box is None:
        return np.zeros((0, 4), np.float32)
    box = box + np.array([0, 0, 1, 1], np.float32)
    boxes = [grow_box(box, m, frame_hw) for m in config.margins]
    half = (box[2:] - box[:2]) / 2
    h, w = frame_hw
    for s in config.anchor_scales:
        b = np.concatenate([exp.anchor_xy - s * half, exp.anchor_xy + s * half])
        boxes.append(np.clip(b, 0, [w, h, w, h]).astype(np.float32))
    for s in config.anchor_squares:
        b = np.concatenate([exp.anchor_xy - s * min(h, w) / 2, exp.anchor_xy + s * min(h, w) / 2])
        boxes.append(np.clip(b, 0, [w, h, w, h]).astype(np.float32))
    return np.stack(boxes)


def new_state(mask: np.ndarray, anchor_xy: np.ndarray, rgb: np.ndarray, frame_index: int, grey: np.ndarray,
              keyframe_index: int, key_to_frame: np.ndarray) -> GuardState:
    """The guard state of a freshly found object (``rgb``: the frame it was found on)."""
    return GuardState(mask, np.asarray(anchor_xy, np.float32), float(np.count_nonzero(mask)),
                      colour_hist(rgb, mask), frame_index, grey, keyframe_index, key_to_frame)


def recentre(mask: np.ndarray, anchor_xy: np.ndarray, pull: float = 0.5) -> np.ndarray:
    """The anchor kept inside an accepted mask (``HxW bool``): the pixel maximising its distance to
    the mask's border minus ``pull`` times its distance to ``anchor_xy``, float32 ``(2,)``. Motion
    errors walk a mapped anchor towards the border; this keeps it near where it was, but deep."""
    box = _bbox(mask)
    if box is None:
        return anchor_xy
    h, w = mask.shape
    y0, y1, x0, x1 = box
    if np.all(np.isfinite(anchor_xy)):
        # Outside the mask the score is -pull * away (<= 0), best at the pixels nearest the anchor,
        # which lie in the 3x3 pixels around its (clamped) floor. So the frame's maximum, and its
        # first row-major occurrence, lie in the mask's box joined with those pixels; there the
        # distance transform (with a zero border, as the frame's) equals the frame's.
        cy = min(max(int(np.floor(anchor_xy[1])), 0), h - 1)
        cx = min(max(int(np.floor(anchor_xy[0])), 0), w - 1)
        y0, y1 = min(y0, max(cy - 1, 0)), max(y1, min(cy + 2, h))
        x0, x1 = min(x0, max(cx - 1, 0)), max(x1, min(cx + 2, w))
    else:
        y0, y1, x0, x1 = 0, h, 0, w
    dist = cv2.distanceTransform(np.pad(mask[y0:y1, x0:x1], 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    away = np.hypot(xs - anchor_xy[0], ys - anchor_xy[1])
    y, x = np.unravel_index(int(np.argmax(dist - pull * away)), dist.shape)
    return np.array([x + x0, y + y0], np.float32)


def confirms(failed: GuardCheck, failed_mask: np.ndarray, corrected: np.ndarray, config: GuardConfig,
             first: bool) -> bool:
    """Whether an accepted correction ``corrected`` confirms the tracking decode ``failed_mask``
    that failed its check ``failed`` on its area alone (``HxW bool`` masks, current frame): they
    agree (IoU >= ``confirm_iou``), and ``first`` (the object's first tracking decode on this
    keyframe) or the correction's area is no nearer the reference than the decode's."""
    if not failed.shape_ok or iou(failed_mask, corrected) < config.confirm_iou:
        return False
    ref = failed.ref_px
    return first or abs(np.count_nonzero(corrected) - ref) >= abs(np.count_nonzero(failed_mask) - ref)


def accept(state: GuardState, exp: Expectation, mask: np.ndarray, rgb: np.ndarray, frame_index: int,
           grey: np.ndarray, keyframe_index: int, key_to_frame: np.ndarray, config: GuardConfig,
           confirmed: bool = False) -> None:
    """Fold an accepted mask in: the anchor follows the motion, the reference area moves towards
    the mask's by ``ref_rate``. ``confirmed`` (``confirms``): the mask's area becomes the
    reference of tracking decodes on ``keyframe_index``; else a keyframe reference held is carried
    on while the keyframe is the same."""
    area = float(np.count_nonzero(mask))
    if confirmed:
        state.key_ref = (keyframe_index, area)
    else:
        held = exp.key_ref
        state.key_ref = held if held is not None and held[0] == keyframe_index else None
    state.ref_area_px = (1 - config.ref_rate) * exp.ref_area_px + config.ref_rate * area
    state.colour_hist = (1 - config.ref_rate) * exp.colour_hist + config.ref_rate * colour_hist(rgb, mask)
    state.mask, state.anchor_xy = mask, recentre(mask, exp.anchor_xy)
    state.frame_index, state.grey = frame_index, grey
    state.keyframe_index, state.key_to_frame = keyframe_index, key_to_frame
