"""Re-decoding a drifted object: candidate prompts decoded on the keyframe, scored against the guard's
expectation in the current frame (``guards.check`` / ``guards.candidate_score``)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.deprecation import renamed_field
from engine.predictor import Predictor
from engine.types import Prediction
from engine.prompts import build_prompts
from engine.stream.decoding import Decoded, prompts_roi
from engine.stream.guards import Expectation, GuardCheck, GuardConfig, candidate_score, check


@dataclass(frozen=True, slots=True)
class Candidate:
    """One re-decoded mask: ``mask`` ``HxW bool`` (current frame), the decoder's predicted IoU,
    its low-res logits (float32 ``(256, 256)``, keyframe geometry) and its check."""

    mask: np.ndarray
    predicted_iou: float
    low_res_logits: np.ndarray | None
    check: GuardCheck

    low_res = renamed_field("low_res_logits", "low_res")  # the old name, with a DeprecationWarning

    @property
    def score(self) -> float:
        return candidate_score(self.check)


def decode_boxes(predictor: Predictor, boxes_xyxy: np.ndarray, roi_margin: float | None = None) -> Prediction:
    """One batched decode of ``(K, 4)`` boxes (keyframe pixels) on ``predictor.embedding`` through
    ``Predictor.decode`` (the one decode path): single-mask output, full-size logits for all K.
    ``roi_margin``: upscale only in the window around all K boxes (``decoding.prompts_roi``)."""
    emb, spec = predictor.embedding, predictor.spec
    prompts = build_prompts(emb.original_hw, emb.input_hw, box_xyxy=np.asarray(boxes_xyxy, np.float32),
                            uniform_scale=spec.uniform_scale)
    return predictor.decode(prompts, multimask_output=False, roi=prompts_roi(predictor, prompts, roi_margin))


def to_frame(logits: np.ndarray, matrix: np.ndarray | None, frame_hw: tuple[int, int], threshold: float,
             outside_logit: float) -> np.ndarray:
    """Keyframe full-size logits -> current-frame bool mask (``matrix`` keyframe->frame; None: same)."""
    if matrix is not None:
        logits = cv2.warpPerspective(logits, matrix, (frame_hw[1], frame_hw[0]), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=outside_logit)
    return logits > threshold


def score_decoded(decoded: Decoded, exp: Expectation, config: GuardConfig, matrix: np.ndarray | None,
                  frame_hw: tuple[int, int], threshold: float, outside_logit: float,
                  min_iou: float | None = None, rgb: np.ndarray | None = None) -> Candidate:
    """A decode (keyframe geometry) as a current-frame candidate checked against ``exp``."""
    mask = to_frame(decoded.logits, matrix, frame_hw, threshold, outside_logit)
    return Candidate(mask, decoded.score, decoded.low_res_logits, check(mask, exp, config, min_iou, rgb))


def batched_candidates(predictor: Predictor, boxes_key_xyxy: np.ndarray, exp: Expectation, config: GuardConfig,
                       matrix: np.ndarray | None, frame_hw: tuple[int, int], threshold: float,
                       outside_logit: float, min_iou: float | None = None,
                       rgb: np.ndarray | None = None, roi_margin: float | None = None) -> tuple[list[Candidate], float]:
    """Decode ``(K, 4)`` keyframe boxes in one call; every mask upsampled (in their window with
    ``roi_margin``), warped and checked. Returns the candidates and the decoder's time (ms)."""
    pred = decode_boxes(predictor, boxes_key_xyxy, roi_margin)
    decode_ms, k = pred.timings_ms["decode_ms"], len(pred.scores)
    postprocess_ms = pred.timings_ms["postprocess_ms"] / max(k, 1)
    out = []
    for i in range(k):
        dec = Decoded(pred.logits[i, 0], pred.low_res_logits[i, 0], float(pred.scores[i, 0]), decode_ms / k,
                      postprocess_ms)
        out.append(score_decoded(dec, exp, config, matrix, frame_hw, threshold, outside_logit, min_iou, rgb))
    return out, decode_ms
