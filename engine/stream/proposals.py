"""Point prompts on box-only checkpoints (LiteMedSAM): multi-scale box proposals around the point.

A point becomes K boxes centred on it (``scales`` x ``aspects``: sides a fraction of the image's
shorter side, width/height ratios), decoded in ONE batched decoder call; the kept mask is the
one that contains the point (and none of the background points) with the best
``predicted IoU x stability x fill x contrast``: SAM's stability score, the share of its box
prompt the mask fills (up to ``min_fill``: a box far larger than its mask did not frame an
object), the share of the box's border it leaves free (a mask cut off by its box is a piece)
and, given the image, how far the mask's colours are from those of a ring around it
(Bhattacharyya distance of 8x8x8 RGB histograms: an object stands out from its surroundings).
Of the masks scoring within ``whole_band`` of the best the largest is kept: a point inside an
object is more often meant for the object than for a part of it. Scoring runs on the low-res
logits; only the kept mask is upsampled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from engine.contract import LOW_RES_HW
from engine.predictor import Predictor
from engine.prompts import build_prompts
from engine.stream.decoding import Decoded
from engine.transforms import postprocess_logits, scale_xy


@dataclass(frozen=True, slots=True)
class ProposalConfig:
    """``scales``: box sides (geometric mean of width and height) as fractions of the image's
    shorter side; ``aspects``: width/height ratios of each; ``stability_offset``: logit offset of
    the stability score (SAM's ``area(logits > +o) / area(logits > -o)``); ``min_fill``: a mask
    filling less of its box than this is scored down in proportion; ``edge_penalty``: score
    times the share of the box's border the mask leaves free; ``contrast``: score by the colour
    contrast with the mask's surroundings when the image is given; ``whole_band``: of the
    masks scoring at least this fraction of the best, the largest is kept (the whole object
    rather than a part of it; 1 keeps the best)."""

    scales: tuple[float, ...] = (0.1, 0.18, 0.3, 0.45, 0.65, 0.9)
    aspects: tuple[float, ...] = (1.0, 2.0, 0.5)
    stability_offset: float = 1.0
    min_fill: float = 0.3
    contrast: bool = True
    edge_penalty: bool = True
    whole_band: float = 0.7

    def __post_init__(self) -> None:
        if not self.scales or any(not 0 < s <= 2 for s in self.scales):
            raise ValueError(f"ProposalConfig.scales must be non-empty fractions in (0, 2], got {self.scales}")
        if not self.aspects or any(not 0.1 <= a <= 10 for a in self.aspects):
            raise ValueError(f"ProposalConfig.aspects must be non-empty width/height ratios in [0.1, 10], "
                             f"got {self.aspects}")
        if not 0 <= self.min_fill <= 1:
            raise ValueError(f"ProposalConfig.min_fill must be in [0, 1], got {self.min_fill}")
        if not 0 < self.whole_band <= 1:
            raise ValueError(f"ProposalConfig.whole_band must be in (0, 1], got {self.whole_band}")


@dataclass(frozen=True, slots=True)
class ProposalResult:
    """Outcome of one point->boxes decode. ``boxes_xyxy`` float32 ``(K, 4)`` original pixels;
    ``iou``/``stability``/``quality`` (the score ranked by; -inf where not ``contains``) float32
    ``(K,)``; ``contains`` bool ``(K,)``; ``chosen`` index or -1;
    ``decoded``: the kept mask (full-size logits, low-res logits, score), None when ``chosen`` is -1."""

    boxes_xyxy: np.ndarray
    iou: np.ndarray
    stability: np.ndarray
    contains: np.ndarray
    chosen: int
    decoded: Decoded | None
    quality: np.ndarray | None = None

    @property
    def logits(self) -> np.ndarray | None:
        return None if self.decoded is None else self.decoded.logits

    @property
    def score(self) -> float:
        return float(self.iou[self.chosen]) if self.chosen >= 0 else 0.0


def point_box_proposals(point_xy: np.ndarray, image_hw: tuple[int, int], scales: tuple[float, ...],
                        aspects: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """Boxes centred on ``point_xy``, clipped, ``(len(aspects) * len(scales), 4)`` float32, aspect
    by aspect: width ``s * min(H, W) * sqrt(a)``, height ``s * min(H, W) / sqrt(a)``."""
    h, w = image_hw
    x, y = float(point_xy[0]), float(point_xy[1])
    side = np.asarray(scales, np.float64) * min(h, w) / 2
    root = np.sqrt(np.asarray(aspects, np.float64))
    half = np.stack([np.outer(root, side).ravel(), np.outer(1 / root, side).ravel()], axis=1)
    boxes = np.concatenate([np.array([[x, y]]) - half, np.array([[x, y]]) + half], axis=1)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    return boxes.astype(np.float32)


def fill_ratios(masks: np.ndarray, boxes_low: np.ndarray) -> np.ndarray:
    """Share of each box (``(K, 4)`` low-res pixels) that its mask (``(K, h, w)`` bool) covers, ``(K,)``."""
    areas = np.maximum((boxes_low[:, 2] - boxes_low[:, 0]) * (boxes_low[:, 3] - boxes_low[:, 1]), 1.0)
    return (masks.sum(axis=(1, 2)) / areas).astype(np.float32)


def edge_cover(masks: np.ndarray, boxes_low: np.ndarray) -> np.ndarray:
    """Share of each box's border (``(K, 4)`` integer low-res pixels; sides on the grid's edge left
    out) that its mask (``(K, h, w)`` bool) covers, ``(K,)``: a mask cut off by its box covers much
    of it, an object inside its box touches it at a few points."""
    h, w = masks.shape[1:]
    out = np.zeros(len(masks), np.float32)
    for i, (m, b) in enumerate(zip(masks, boxes_low.astype(np.int64))):
        x0, y0 = min(max(b[0], 0), w - 1), min(max(b[1], 0), h - 1)
        x1, y1 = min(max(b[2] - 1, x0), w - 1), min(max(b[3] - 1, y0), h - 1)
        sides = [m[y0:y1 + 1, x] for x, edge in ((x0, x0 == 0), (x1, x1 == w - 1)) if not edge]
        sides += [m[y, x0:x1 + 1] for y, edge in ((y0, y0 == 0), (y1, y1 == h - 1)) if not edge]
        n = sum(len(v) for v in sides)
        out[i] = sum(int(v.sum()) for v in sides) / n if n else 0.0
    return out


def colour_contrast(image_rgb: np.ndarray, masks: np.ndarray, ring_frac: float = 0.15) -> np.ndarray:
    """Bhattacharyya distance (0..1) between the 8x8x8 RGB histogram of each mask (``(K, h, w)``
    bool, the pixels of ``image_rgb`` ``hxwx3 uint8``) and that of a ring around it, ``ring_frac``
    times the mask's square-root area wide (at least 3 px); 0 for an empty mask or ring."""
    out = np.zeros(len(masks), np.float32)
    for i, m in enumerate(masks):
        area = int(m.sum())
        if area == 0:
            continue
        k = max(3, int(ring_frac * np.sqrt(area)))
        m8 = m.astype(np.uint8)
        ring = cv2.dilate(m8, np.ones((k, k), np.uint8)) - m8
        if not ring.any():
            continue
        hists = [cv2.calcHist([image_rgb], [0, 1, 2], x, [8, 8, 8], [0, 256] * 3) for x in (m8, ring)]
        out[i] = cv2.compareHist(hists[0] / hists[0].sum(), hists[1] / hists[1].sum(), cv2.HISTCMP_BHATTACHARYYA)
    return out


def stability_scores(low_res_logits: np.ndarray, valid_hw: tuple[int, int], offset: float) -> np.ndarray:
    """``area(l > +offset) / area(l > -offset)`` per mask over the valid (unpadded) region, ``(K,)``."""
    lo = low_res_logits[:, : valid_hw[0], : valid_hw[1]]
    inner = (lo > offset).sum(axis=(1, 2)).astype(np.float64)
    outer = (lo > -offset).sum(axis=(1, 2)).astype(np.float64)
    return np.where(outer > 0, inner / np.maximum(outer, 1), 0.0).astype(np.float32)


def to_low_res_xy(points_xy: np.ndarray, predictor: Predictor) -> np.ndarray:
    """Original-frame pixels ``(N, 2)`` -> integer indices into the 256x256 low-res logits ``(N, 2)``."""
    emb, spec = predictor.embedding, predictor.spec
    inp = np.asarray(points_xy, np.float32) * scale_xy(emb.original_hw, emb.input_hw, spec.uniform_scale)
    low = inp * (LOW_RES_HW[1] / spec.input_size)
    return np.clip(np.floor(low), 0, LOW_RES_HW[1] - 1).astype(np.int64)


def proposal_quality(base: np.ndarray, masks: np.ndarray, boxes_low: np.ndarray, contains: np.ndarray,
                     config: ProposalConfig, image_rgb: np.ndarray | None) -> np.ndarray:
    """``base`` (``(K,)``, IoU x stability) times the fill, free-border and colour-contrast terms of
    ``config`` for low-res ``masks`` (``(K, h, w)`` bool) in their boxes (``(K, 4)`` low-res
    pixels); -inf where not ``contains``. float32 ``(K,)``."""
    score = base.astype(np.float64)
    if config.min_fill > 0:
        score = score * np.minimum(1.0, fill_ratios(masks, boxes_low) / config.min_fill)
    if config.edge_penalty:
        score = score * (1.0 - edge_cover(masks, boxes_low))
    if config.contrast and image_rgb is not None and np.any(contains):
        hw = masks.shape[1:]
        small = cv2.resize(np.ascontiguousarray(image_rgb), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        score = score * np.where(contains, colour_contrast(small, masks * contains[:, None, None]), 0.0)
    return np.where(contains, score, -np.inf).astype(np.float32)


def decode_point_proposals(
    predictor: Predictor,
    points_xy: np.ndarray,
    labels: np.ndarray,
    config: ProposalConfig | None = None,
    threshold: float = 0.0,
    image_rgb: np.ndarray | None = None,
) -> ProposalResult:
    """Decode box proposals around the first foreground point of ``points_xy`` (keyframe pixels).

    ``points_xy`` float32 ``(N, 2)``, ``labels`` ``(N,)`` of 1/0; background points veto masks
    that contain them. One batched decode of ``len(config.scales) * len(config.aspects)`` boxes.
    ``image_rgb``: the keyframe (``HxWx3 uint8``, any size: resized to the low-res grid) for the
    colour contrast; None scores without it.
    """
    config = config or ProposalConfig()
    emb, spec = predictor.embedding, predictor.spec
    points_xy, labels = np.asarray(points_xy, np.float32).reshape(-1, 2), np.asarray(labels, np.float32).reshape(-1)
    fg = points_xy[labels == 1]
    if len(fg) == 0:
        raise ValueError("point-to-box proposals need a foreground point (label 1)")
    boxes = point_box_proposals(fg[0], emb.original_hw, config.scales, config.aspects)
    prompts = build_prompts(emb.original_hw, emb.input_hw, box_xyxy=boxes, uniform_scale=spec.uniform_scale)
    t0 = time.perf_counter()
    iou4, low4 = predictor.backend.decode(
        emb.features, prompts.point_coords, prompts.point_labels, prompts.mask_input, prompts.has_mask_input
    )
    t1 = time.perf_counter()
    iou, low = iou4[:, 0].astype(np.float32), np.ascontiguousarray(low4[:, 0], dtype=np.float32)
    valid = tuple(int(np.ceil(v * LOW_RES_HW[0] / spec.input_size)) for v in emb.input_hw)
    stab = stability_scores(low, valid, config.stability_offset)  # type: ignore[arg-type]
    idx = to_low_res_xy(points_xy, predictor)
    inside = low[:, idx[:, 1], idx[:, 0]] > threshold  # (K, N)
    contains = np.all(inside == (labels == 1)[None], axis=1)
    masks = low[:, : valid[0], : valid[1]] > threshold
    corners = to_low_res_xy(boxes.reshape(-1, 2), predictor).reshape(-1, 4).astype(np.float32)
    quality = proposal_quality(iou * stab, masks, corners, contains, config, image_rgb)
    chosen = int(np.argmax(quality)) if np.any(contains) else -1
    if chosen >= 0 and config.whole_band < 1:  # the largest mask scoring near the best: the whole object
        near = quality >= config.whole_band * quality[chosen]
        chosen = int(np.argmax(np.where(near, masks.sum(axis=(1, 2)), -1)))
    decoded = None
    if chosen >= 0:
        logits = postprocess_logits(low[chosen][None, None], emb.input_hw, emb.original_hw, spec.input_size)[0, 0]
        decoded = Decoded(logits, low[chosen], float(iou[chosen]), (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)
    return ProposalResult(boxes, iou, stab, contains, chosen, decoded, quality)
