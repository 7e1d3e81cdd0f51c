"""Segment everything: grid prompts, batched decoding, IoU/stability filtering, NMS, small-region cleanup.

Point-promptable models get a grid of single foreground points (3 candidates each), as SAM's
``SamAutomaticMaskGenerator`` with one crop layer. Box-only checkpoints (LiteMedSAM) get a grid
of square boxes at several scales instead (one candidate each). The stages follow SAM's order:

1. decode the grid in batches; keep candidates with predicted IoU ``> pred_iou_thresh``;
2. upsample those to the original size, keep stability ``>= stability_thresh``, take tight boxes;
3. box NMS by predicted IoU;
4. with ``min_region_px > 0``: fill small holes, drop small islands, and NMS again preferring
   masks the cleanup left unchanged.

Candidates are held as bit-packed full-size masks (``H*W/8`` bytes each), so memory stays bounded
on large images. The decoder dominates the cost (it runs once per grid point); the upsampling of
step 2 is paid per surviving candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.predictor import Predictor
from engine.prompts import build_prompts
from engine.transforms import mask_to_box_xyxy, postprocess_logits

_UPSAMPLE_CHUNK = 16  # full-size float32 logits held at once (16 x 8 MB at 1080p)


@dataclass(frozen=True, slots=True)
class AutoMaskConfig:
    """Knobs of automatic mask generation (SAM's generator defaults where they apply).

    ``points_per_side``: grid density (SAM: 32; 16 here for CPU budgets); ``box_scales``: box side
    as a fraction of the image's short side (box-only models); ``pred_iou_thresh`` /
    ``stability_thresh``: keep masks above both, ``None`` for the model kind's default (see
    ``thresholds``); ``stability_offset``: logit offset of the stability score; ``nms_iou``:
    box-IoU NMS threshold; ``min_region_px``: holes and islands smaller than this (pixels,
    original frame) are removed, 0 turns the cleanup off (SAM's default).
    """

    points_per_side: int = 16
    points_per_batch: int = 64
    box_scales: tuple[float, ...] = (0.15, 0.3, 0.5)
    pred_iou_thresh: float | None = None
    stability_thresh: float | None = None
    stability_offset: float = 1.0
    nms_iou: float = 0.7
    min_region_px: int = 100

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.box_scales or not all(0.0 < s <= 1.0 for s in self.box_scales):
            raise ValueError(f"box_scales must be a non-empty tuple of fractions in (0, 1], got {self.box_scales!r}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.stability_offset <= 0:
            raise ValueError(f"stability_offset must be > 0 (logit units), got {self.stability_offset}")
        if self.min_region_px < 0:
            raise ValueError(f"min_region_px must be >= 0 (0 turns the cleanup off), got {self.min_region_px}")

    def thresholds(self, box_only: bool) -> tuple[float, float]:
        """``(pred_iou_thresh, stability_thresh)`` with ``None`` resolved for the model kind.

        Point models: SAM's 0.88 / 0.95. Box-only (LiteMedSAM): its IoU head reads 0.4-0.9 on
        natural images and SAM's values keep no mask there; 0.7 / 0.8 keep a few masks per image
        at ``points_per_side=4``.
        """
        iou, stab = (0.7, 0.8) if box_only else (0.88, 0.95)
        return (iou if self.pred_iou_thresh is None else self.pred_iou_thresh,
                stab if self.stability_thresh is None else self.stability_thresh)


@dataclass(frozen=True, slots=True)
class AutoMask:
    """One automatic mask: ``mask`` bool HxW (original size) and its statistics."""

    mask: np.ndarray
    area_px: int
    bbox_xyxy: list[int]
    predicted_iou: float
    stability_score: float

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_:
            raise ValueError(f"mask must be a 2-D bool array, got shape {self.mask.shape} dtype {self.mask.dtype}")


def stability_score(logits: np.ndarray, offset: float, threshold: float = 0.0) -> np.ndarray:
    """IoU of the masks thresholded at ``threshold + offset`` and ``threshold - offset``.

    ``(K, h, w)`` logits -> ``(K,)``; 0 for a mask that is empty at both thresholds.
    """
    inner = (logits > threshold + offset).sum(axis=(1, 2))
    outer = (logits > threshold - offset).sum(axis=(1, 2))
    return inner / np.maximum(outer, 1)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS on ``(K, 4)`` xyxy boxes; kept indices, best first.

    SAM's convention (``torchvision.ops.batched_nms`` on its mask boxes): area ``(x2 - x1) *
    (y2 - y1)`` and intersection ``max(0, min x2 - max x1) * ...`` with no ``+1``, although the
    mask boxes hold inclusive pixel indices. A box is dropped when its IoU with a kept,
    higher-scoring box exceeds ``iou_thresh``; an IoU of 0/0 (two zero-area boxes) drops nothing,
    as in torchvision. Equal scores keep the input order.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])
        hi = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (area[i] + area[rest] - inter)
        order = rest[~(iou > iou_thresh)]  # NaN (0/0) keeps the box, as torchvision's ``>`` test does
    return np.array(keep, dtype=np.int64)


def remove_small_regions(mask: np.ndarray, min_px: int) -> tuple[np.ndarray, bool]:
    """Fill holes, then drop islands, smaller than ``min_px`` pixels (8-connected) in a bool mask.

    As SAM's ``remove_small_regions``: when every island is small the largest is kept, so a
    non-empty mask stays non-empty. Returns the new mask and whether it changed.
    """
    out = mask.copy()
    for fill_value in (True, False):  # holes are components of the inverse, islands of the mask
        target = ~out if fill_value else out
        n, labels, stats, _ = cv2.connectedComponentsWithStats(target.astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        small = np.flatnonzero(areas < min_px) + 1
        if not fill_value and small.size == n - 1 and n > 1:
            small = small[small != int(np.argmax(areas)) + 1]
        if small.size:
            out[np.isin(labels, small)] = fill_value
    return out, not np.array_equal(out, mask)


def point_grid(points_per_side: int, original_hw: tuple[int, int]) -> np.ndarray:
    """``(n*n, 2)`` float32 cell centres in pixels, x fastest (SAM's ``build_point_grid``)."""
    h, w = original_hw
    frac = (np.arange(points_per_side) + 0.5) / points_per_side
    xy = np.stack(np.meshgrid(frac * w, frac * h), axis=-1)
    return xy.reshape(-1, 2).astype(np.float32)


def box_grid(points_per_side: int, box_scales: tuple[float, ...], original_hw: tuple[int, int]) -> np.ndarray:
    """``(len(box_scales)*n*n, 4)`` float32 square boxes (side ``scale * short side``) centred on
    the point grid, clipped to the image, one scale after the other."""
    h, w = original_hw
    centres = point_grid(points_per_side, original_hw)
    boxes = []
    for scale in box_scales:
        half = 0.5 * scale * min(h, w)
        boxes.append(np.clip(np.concatenate([centres - half, centres + half], axis=1), 0, [w, h, w, h]))
    return np.concatenate(boxes).astype(np.float32)


@dataclass(slots=True)
class _Candidates:
    """Masks that passed the IoU and stability filters (bit-packed, original size)."""

    packed: list[np.ndarray]
    boxes: list[np.ndarray]
    iou: list[float]
    stability: list[float]

    def add(self, logits: np.ndarray, iou: np.ndarray, offset: float, thresh: float) -> None:
        """Keep the ``(K, H, W)`` full-size logits with stability ``>= thresh`` and a non-empty mask."""
        stab = stability_score(logits, offset)
        for k in np.flatnonzero(stab >= thresh):
            mask = logits[k] > 0
            box = mask_to_box_xyxy(mask)
            if box is not None:
                self.packed.append(np.packbits(mask, axis=None))
                self.boxes.append(box)
                self.iou.append(float(iou[k]))
                self.stability.append(float(stab[k]))

    def mask(self, i: int, original_hw: tuple[int, int]) -> np.ndarray:
        n = original_hw[0] * original_hw[1]
        return np.unpackbits(self.packed[i], count=n).astype(bool).reshape(original_hw)


def _decode_grid(predictor: Predictor, cfg: AutoMaskConfig, progress: bool) -> _Candidates:
    """Stages 1-2: batched decoding of the grid, IoU filter, upsampling, stability filter."""
    from tqdm import tqdm

    emb, spec = predictor.embedding, predictor.spec
    if spec.box_only:
        key, grid = "box_xyxy", box_grid(cfg.points_per_side, cfg.box_scales, emb.original_hw)
    else:
        key, grid = "points_xy", point_grid(cfg.points_per_side, emb.original_hw)[:, None, :]
    sel = slice(0, 1) if spec.box_only else slice(1, None)  # LiteMedSAM is trained single-mask
    iou_thresh, stab_thresh = cfg.thresholds(spec.box_only)
    found = _Candidates([], [], [], [])
    starts = range(0, len(grid), cfg.points_per_batch)
    for start in tqdm(starts, desc="segment everything", disable=not progress):
        chunk = {key: grid[start:start + cfg.points_per_batch]}
        dp = build_prompts(emb.original_hw, emb.input_hw, uniform_scale=spec.uniform_scale, **chunk)
        iou, low = predictor.backend.decode(
            emb.features, dp.point_coords, dp.point_labels, dp.mask_input, dp.has_mask_input
        )
        iou, low = iou[:, sel].reshape(-1), low[:, sel].reshape(-1, 1, *low.shape[2:])
        ok = np.flatnonzero(iou > iou_thresh)
        for i in range(0, len(ok), _UPSAMPLE_CHUNK):
            idx = ok[i:i + _UPSAMPLE_CHUNK]
            full = postprocess_logits(low[idx], emb.input_hw, emb.original_hw, spec.input_size)[:, 0]
            found.add(full, iou[idx], cfg.stability_offset, stab_thresh)
    return found


def _cleanup(masks: list[np.ndarray], min_px: int, nms_iou: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Stage 4: small-region removal, then NMS preferring unchanged masks; kept masks and indices."""
    cleaned, unchanged = [], []
    for m in masks:
        m, changed = remove_small_regions(m, min_px)
        cleaned.append(m)
        unchanged.append(0.0 if changed else 1.0)
    boxes = np.stack([mask_to_box_xyxy(m) for m in cleaned])
    keep = box_nms(boxes, np.array(unchanged), nms_iou)
    return [cleaned[k] for k in keep], keep


def generate_masks(predictor: Predictor, cfg: AutoMaskConfig | None = None, progress: bool = False) -> list[AutoMask]:
    """All masks of the image set on ``predictor`` (call ``set_image`` first).

    Returns masks whose boxes overlap by box IoU <= ``nms_iou``, sorted by predicted IoU, highest
    first; ``[]`` when no candidate passes the filters.
    """
    cfg = cfg or AutoMaskConfig()
    original_hw = predictor.embedding.original_hw  # raises the "set an image first" error
    found = _decode_grid(predictor, cfg, progress)
    if not found.packed:
        return []
    keep = box_nms(np.stack(found.boxes), np.array(found.iou), cfg.nms_iou)
    masks = [found.mask(int(k), original_hw) for k in keep]
    if cfg.min_region_px > 0:
        masks, kept = _cleanup(masks, cfg.min_region_px, cfg.nms_iou)
        keep = keep[kept]
    results = []
    for k, m in zip(keep, masks):
        box = mask_to_box_xyxy(m)
        results.append(AutoMask(m, int(m.sum()), [int(v) for v in box], found.iou[k], found.stability[k]))
    results.sort(key=lambda r: -r.predicted_iou)
    return results
