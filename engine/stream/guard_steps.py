"""The stream engine's drift-guard steps for one object on one frame (called by ``StreamEngine``):
the expectation (last good mask and anchor warped to this frame), the re-decode when a mask fails
the check (``GuardConfig.strategy``), and folding an accepted mask into the guard state.

The previous->current frame motion is the object's keyframe->frame fits chained while the keyframe
is the same, else one fit from the last good frame's grey image (object region, then global).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np

from engine.stream import guards
from engine.stream.correction import Candidate, batched_candidates
from engine.stream.events import Prompt
from engine.stream.guards import Expectation
from engine.stream.object_motion import MotionInfo, map_prompt
from engine.stream.results import MaskResult
from engine.stream.scheduler import Keyframe
from engine.stream.tracker import TrackedObject, TrackPrompt, interior_point_xy
from engine.types import Frame

_IDENTITY = np.eye(3, dtype=np.float64)


def _key_to_frame(motion: MotionInfo) -> np.ndarray:
    """The keyframe->frame matrix the engine actually warps by (identity when it skips the warp)."""
    return _IDENTITY if motion.is_identity else motion.matrix


def expectation(engine: Any, obj: TrackedObject, kf: Keyframe, motion: MotionInfo, frame_hw: tuple[int, int],
                timings: dict) -> Expectation | None:
    """``obj``'s expectation in the frame being stepped; None without guard state (or guards off)."""
    st = obj.guard
    if st is None or not engine.config.guard.enabled:
        return None
    if st.mask.shape != frame_hw or st.grey.shape != engine._small.shape:
        obj.guard = None  # the stream changed size: the next accepted mask starts afresh
        return None
    t0 = time.perf_counter()
    if st.keyframe_index == kf.frame_index:
        matrix = _key_to_frame(motion) @ np.linalg.inv(st.key_to_frame)
    else:
        est = engine.motion_estimator
        fit = est.region_motion(st.grey, engine._small, est.small_mask(st.mask), frame_hw)
        if fit is None:
            fit = est.global_motion(st.grey, engine._small, frame_hw)
        matrix = fit.matrix if fit.ok else _IDENTITY
    exp = guards.expect(st, matrix, frame_hw)
    timings["motion"] += (time.perf_counter() - t0) * 1e3
    return exp


def _proposals(engine: Any, exp: Expectation, kf: Keyframe, motion: MotionInfo, frame: Frame, timings: dict,
               min_iou: float | None) -> list[Candidate]:
    """The correction boxes (``guards.correction_boxes``) mapped into the keyframe, one batched decode."""
    cfg, ecfg = engine.config.guard, engine.config
    frame_hw = (int(frame.rgb.shape[0]), int(frame.rgb.shape[1]))
    t0 = time.perf_counter()
    inv = np.linalg.inv(_key_to_frame(motion))
    mapped = [map_prompt(Prompt.box(b, source="mask"), inv, kf.frame_hw)
              for b in guards.correction_boxes(exp, cfg, frame_hw)]
    boxes = [m.box_xyxy for m in mapped if m is not None and m.box_xyxy is not None][:cfg.max_candidates]
    if not boxes:
        return []
    matrix = None if motion.is_identity else motion.matrix
    stages = [boxes[:1], boxes[1:]] if cfg.staged and len(boxes) > 1 else [boxes]
    out: list[Candidate] = []
    decode_ms = 0.0
    for stage in stages:  # staged: the expected box alone first, the rest only if it fails its check
        cands, ms = batched_candidates(engine.predictor, np.stack(stage), exp, cfg, matrix, frame_hw,
                                       ecfg.mask_threshold, ecfg.outside_logit, min_iou, frame.rgb, engine._roi_margin)
        out, decode_ms = out + cands, decode_ms + ms
        if any(c.check.passed for c in cands):
            break
    timings["decode"] += decode_ms
    timings["postprocess"] += (time.perf_counter() - t0) * 1e3 - decode_ms
    return out


def _single(engine: Any, prompt: TrackPrompt, exp: Expectation, kf: Keyframe, motion: MotionInfo, frame: Frame,
            timings: dict, min_iou: float | None) -> list[Candidate]:
    res, low_res_logits = engine._decode_prompt(prompt, None, kf, motion, frame, timings)
    if not res.found:
        return []
    chk = guards.check(res.mask, exp, engine.config.guard, min_iou, frame.rgb)
    return [Candidate(res.mask, res.score, low_res_logits, chk)]


def _candidates(engine: Any, obj: TrackedObject, tp: TrackPrompt, exp: Expectation, kf: Keyframe,
                motion: MotionInfo, frame: Frame, timings: dict, min_iou: float | None) -> list[Candidate]:
    """Re-decodes of ``GuardConfig.strategy`` ("auto": "proposals" for a box start, "mask_input"
    for a point start); "mask_input" without low-res logits on this keyframe
    (a new keyframe, a loss) falls back to "box"."""
    cfg = engine.config.guard
    strategy = cfg.strategy
    if strategy == "auto":  # a point start's mask grows back with its logits; a box start's holds best by boxes
        strategy = "proposals" if obj.user_prompt.box_xyxy is not None else "mask_input"
    out: list[Candidate] = []
    mask_input = obj.low_res_logits if obj.low_res_keyframe == kf.frame_index else None
    if strategy in ("mask_input", "combined") and mask_input is not None:
        out += _single(engine, TrackPrompt(tp.prompt, mask_input, "track"), exp, kf, motion, frame, timings, min_iou)
    if strategy in ("proposals", "combined"):
        return out + _proposals(engine, exp, kf, motion, frame, timings, min_iou)
    if out:
        return out
    frame_hw = (int(frame.rgb.shape[0]), int(frame.rgb.shape[1]))
    box = guards.correction_boxes(exp, replace(cfg, anchor_scales=(), anchor_squares=()), frame_hw)
    if len(box) == 0:
        return []
    points = None if engine.spec.box_only else exp.anchor_xy[None]
    labels = None if points is None else np.ones(1, np.float32)
    prompt = TrackPrompt(Prompt(points, labels, box[min(1, len(box) - 1)], source="mask"), None, "track")
    return _single(engine, prompt, exp, kf, motion, frame, timings, min_iou)


def correct(engine: Any, obj: TrackedObject, tp: TrackPrompt, exp: Expectation, kf: Keyframe,
            motion: MotionInfo, frame: Frame, timings: dict,
            reacquire: bool = False) -> tuple[MaskResult, np.ndarray | None]:
    """Re-decode ``obj`` from its expectation; the best candidate if it passes the check
    ("drift_corrected", or "reacquired" after a loss), else a "lost" result."""
    cfg = engine.config.guard
    min_iou = cfg.reacquire_min_iou if reacquire else cfg.fit_min_iou
    cands = _candidates(engine, obj, tp, exp, kf, motion, frame, timings, min_iou)
    best = max(cands, key=lambda c: c.score, default=None)
    if best is None or not best.check.passed:
        res = engine._empty(obj.object_id, frame, kf.frame_index, "lost")
        ratio = float("nan") if best is None else best.check.area_ratio
        return replace(res, area_ratio=ratio, motion=motion), None
    status = "reacquired" if reacquire else "drift_corrected"
    return MaskResult(obj.object_id, frame.index, kf.frame_index, best.mask, best.predicted_iou, status,
                      None, motion, best.check.area_ratio), best.low_res_logits


def fold(engine: Any, obj: TrackedObject, tp: TrackPrompt, exp: Expectation | None, mask: np.ndarray,
         frame: Frame, kf: Keyframe, motion: MotionInfo, confirmed: bool = False) -> None:
    """Fold an accepted mask into ``obj``'s guard state (a first find starts it: the anchor is the
    user's first foreground point if the mask covers it, else the mask's interior point).
    ``confirmed``: a re-decode confirmed this frame's tracking decode (``guards.accept``)."""
    cfg = engine.config.guard
    if not cfg.enabled:
        return
    key_to_frame = _key_to_frame(motion)
    rgb, frame_index = frame.rgb, frame.index
    if obj.guard is not None and exp is not None:
        guards.accept(obj.guard, exp, mask, rgb, frame_index, engine._small, kf.frame_index, key_to_frame, cfg,
                      confirmed)
        return
    anchor = None
    pts, labels = tp.prompt.points_xy, tp.prompt.labels
    if pts is not None and labels is not None and np.any(labels == 1):
        first = pts[int(np.argmax(labels == 1))]
        if guards.anchor_inside(mask, first):
            anchor = first
    if anchor is None:
        anchor = interior_point_xy(mask)
    obj.guard = guards.new_state(mask, anchor, rgb, frame_index, engine._small, kf.frame_index, key_to_frame)
