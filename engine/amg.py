"""Segment everything: grid prompts, batched decoding, IoU/stability filtering, NMS, small-region cleanup.

Point-promptable models get a grid of single foreground points (3 candidates each, as SAM's
automatic mask generator). Box-only checkpoints (LiteMedSAM) get a grid of square boxes at several
scales instead. Filtering and stability are computed on the low-res logits cropped to the image
(256-px scale), which is ~20x cheaper than at full size; only kept masks are upsampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.predictor import Predictor
from engine.prompts import build_prompts
from engine.transforms import mask_to_box_xyxy, postprocess_logits


@dataclass(frozen=True, slots=True)
class AutoMaskConfig:
    """Knobs of automatic mask generation (defaults follow SAM's generator where they apply).

    ``points_per_side``: grid density; ``box_scales``: box side as a fraction of the image's short
    side (box-only models); ``pred_iou_thresh`` / ``stability_thresh``: keep masks above both;
    ``stability_offset``: logit offset of the stability score; ``nms_iou``: box-IoU NMS threshold;
    ``min_region_px``: holes and islands smaller than this (pixels, original frame) are removed.
    """

    points_per_side: int = 16
    points_per_batch: int = 64
    box_scales: tuple[float, ...] = (0.15, 0.3, 0.5)
    pred_iou_thresh: float = 0.86
    stability_thresh: float = 0.92
    stability_offset: float = 1.0
    nms_iou: float = 0.7
    min_region_px: int = 100

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be >= 1")


@dataclass(frozen=True, slots=True)
class AutoMask:
    """One automatic mask: ``mask`` bool HxW (original size) and its statistics."""

    mask: np.ndarray
    area_px: int
    bbox_xyxy: list[int]
    predicted_iou: float
    stability_score: float


def stability_score(logits: np.ndarray, offset: float) -> np.ndarray:
    """IoU between the masks thresholded at ``+offset`` and ``-offset``; ``(K, h, w)`` -> ``(K,)``."""
    inner = (logits > offset).sum(axis=(1, 2))
    outer = (logits > -offset).sum(axis=(1, 2))
    return inner / np.maximum(outer, 1)


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS on ``(K, 4)`` xyxy boxes; returns kept indices, best score first."""
    order = np.argsort(-scores)
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx1 - xx0 + 1, 0, None) * np.clip(yy1 - yy0 + 1, 0, None)
        iou = inter / (area[i] + area[rest] - inter)
        order = rest[iou <= iou_thresh]
    return np.array(keep, dtype=np.int64)


def remove_small_regions(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Fill holes and drop islands smaller than ``min_px`` pixels in a bool mask."""
    out = mask.copy()
    for fill_value in (True, False):  # holes first (components of the inverse), then islands
        target = ~out if fill_value else out
        n, labels, stats, _ = cv2.connectedComponentsWithStats(target.astype(np.uint8), connectivity=8)
        small = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] < min_px]
        if small:
            out[np.isin(labels, small)] = fill_value
    return out


def _grid_prompts(predictor: Predictor, cfg: AutoMaskConfig) -> list[dict]:
    h, w = predictor.embedding.original_hw
    n = cfg.points_per_side
    xs = (np.arange(n) + 0.5) / n * w
    ys = (np.arange(n) + 0.5) / n * h
    centres = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)
    if not predictor.spec.box_only:
        return [{"points_xy": centres[:, None, :]}]
    boxes = []
    for scale in cfg.box_scales:
        half = 0.5 * scale * min(h, w)
        b = np.concatenate([centres - half, centres + half], axis=1)
        boxes.append(np.clip(b, 0, [w, h, w, h]))
    return [{"box_xyxy": np.concatenate(boxes).astype(np.float32)}]


def generate_masks(predictor: Predictor, cfg: AutoMaskConfig | None = None, progress: bool = False) -> list[AutoMask]:
    """All masks of the image set on ``predictor`` (call ``set_image`` first), largest score first."""
    from tqdm import tqdm

    cfg = cfg or AutoMaskConfig()
    emb = predictor.embedding
    side = predictor.spec.input_size
    ih, iw = emb.input_hw
    prompts = _grid_prompts(predictor, cfg)[0]
    key = next(iter(prompts))
    allp = prompts[key]
    kept_low, kept_iou, kept_stab = [], [], []
    multimask = not predictor.spec.box_only
    for start in tqdm(range(0, len(allp), cfg.points_per_batch), desc="segment everything", disable=not progress):
        chunk = {key: allp[start:start + cfg.points_per_batch]}
        dp = build_prompts(emb.original_hw, emb.input_hw, uniform_scale=predictor.spec.uniform_scale, **chunk)
        iou, low = predictor.backend.decode(
            emb.features, dp.point_coords, dp.point_labels, dp.mask_input, dp.has_mask_input
        )
        sel = slice(1, None) if multimask else slice(0, 1)
        iou, low = iou[:, sel].reshape(-1), low[:, sel].reshape(-1, *low.shape[2:])
        crop = low[:, : max(1, ih * low.shape[1] // side), : max(1, iw * low.shape[2] // side)]
        stab = stability_score(crop, cfg.stability_offset)
        ok = (iou > cfg.pred_iou_thresh) & (stab > cfg.stability_thresh) & ((crop > 0).sum(axis=(1, 2)) > 0)
        kept_low.append(low[ok])
        kept_iou.append(iou[ok])
        kept_stab.append(stab[ok])
    if not kept_low or sum(len(k) for k in kept_iou) == 0:
        return []
    low = np.concatenate(kept_low)
    iou = np.concatenate(kept_iou)
    stab = np.concatenate(kept_stab)
    results: list[AutoMask] = []
    masks, boxes, scores = [], [], []
    for i in range(0, len(low), 64):
        full = postprocess_logits(low[i:i + 64, None], emb.input_hw, emb.original_hw, side)[:, 0] > 0
        for j, m in enumerate(full):
            m = remove_small_regions(m, cfg.min_region_px)
            box = mask_to_box_xyxy(m)
            if box is None:
                continue
            masks.append(m)
            boxes.append(box)
            scores.append(i + j)
    if not masks:
        return []
    idx = np.array(scores)
    keep = box_nms(np.stack(boxes), iou[idx], cfg.nms_iou)
    for k in keep:
        m = masks[k]
        results.append(AutoMask(m, int(m.sum()), [int(v) for v in boxes[k]], float(iou[idx[k]]), float(stab[idx[k]])))
    return results
