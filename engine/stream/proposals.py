"""Point prompts on box-only checkpoints (LiteMedSAM): multi-scale box proposals around the point.

A point becomes K square boxes centred on it (sides a fraction of the image's shorter side),
decoded in ONE batched decoder call; the kept mask is the one that contains the point (and none
of the background points) with the best ``predicted IoU x stability``. Scoring runs on the
256x256 low-res logits; only the kept mask is upsampled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from engine.contract import LOW_RES_HW
from engine.predictor import Predictor
from engine.prompts import build_prompts
from engine.stream.decoding import Decoded
from engine.transforms import postprocess_logits, scale_xy


@dataclass(frozen=True, slots=True)
class ProposalConfig:
    """``scales``: box sides as fractions of the image's shorter side; ``stability_offset``: logit
    offset of the stability score (SAM's ``area(logits > +o) / area(logits > -o)``)."""

    scales: tuple[float, ...] = (0.1, 0.18, 0.3, 0.45, 0.65)
    stability_offset: float = 1.0

    def __post_init__(self) -> None:
        if not self.scales or any(not 0 < s <= 2 for s in self.scales):
            raise ValueError(f"ProposalConfig.scales must be non-empty fractions in (0, 2], got {self.scales}")


@dataclass(frozen=True, slots=True)
class ProposalResult:
    """Outcome of one point->boxes decode. ``boxes_xyxy`` float32 ``(K, 4)`` original pixels;
    ``iou``/``stability`` float32 ``(K,)``; ``contains`` bool ``(K,)``; ``chosen`` index or -1;
    ``decoded``: the kept mask (full-size logits, low-res logits, score), None when ``chosen`` is -1."""

    boxes_xyxy: np.ndarray
    iou: np.ndarray
    stability: np.ndarray
    contains: np.ndarray
    chosen: int
    decoded: Decoded | None

    @property
    def logits(self) -> np.ndarray | None:
        return None if self.decoded is None else self.decoded.logits

    @property
    def score(self) -> float:
        return float(self.iou[self.chosen]) if self.chosen >= 0 else 0.0


def point_box_proposals(point_xy: np.ndarray, image_hw: tuple[int, int], scales: tuple[float, ...]) -> np.ndarray:
    """Square boxes centred on ``point_xy`` with sides ``scale * min(H, W)``, clipped: ``(K, 4)`` float32."""
    h, w = image_hw
    x, y = float(point_xy[0]), float(point_xy[1])
    half = np.asarray(scales, np.float64)[:, None] * min(h, w) / 2
    boxes = np.concatenate([np.array([[x, y]]) - half, np.array([[x, y]]) + half], axis=1)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    return boxes.astype(np.float32)


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


def decode_point_proposals(
    predictor: Predictor,
    points_xy: np.ndarray,
    labels: np.ndarray,
    config: ProposalConfig | None = None,
    threshold: float = 0.0,
) -> ProposalResult:
    """Decode box proposals around the first foreground point of ``points_xy`` (keyframe pixels).

    ``points_xy`` float32 ``(N, 2)``, ``labels`` ``(N,)`` of 1/0; background points veto masks
    that contain them. One batched decode of ``len(config.scales)`` boxes.
    """
    config = config or ProposalConfig()
    emb, spec = predictor.embedding, predictor.spec
    points_xy, labels = np.asarray(points_xy, np.float32).reshape(-1, 2), np.asarray(labels, np.float32).reshape(-1)
    fg = points_xy[labels == 1]
    if len(fg) == 0:
        raise ValueError("point-to-box proposals need a foreground point (label 1)")
    boxes = point_box_proposals(fg[0], emb.original_hw, config.scales)
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
    quality = np.where(contains, iou * stab, -np.inf)
    chosen = int(np.argmax(quality)) if np.any(contains) else -1
    decoded = None
    if chosen >= 0:
        logits = postprocess_logits(low[chosen][None, None], emb.input_hw, emb.original_hw, spec.input_size)[0, 0]
        decoded = Decoded(logits, low[chosen], float(iou[chosen]), (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)
    return ProposalResult(boxes, iou, stab, contains, chosen, decoded)
