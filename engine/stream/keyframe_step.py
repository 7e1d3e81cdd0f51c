"""The stream engine's keyframe step for one frame (called by ``StreamEngine.step``): pick the
keyframe to decode on, fit each object's keyframe->frame motion (the global fit as fallback) and
request a new keyframe when the policy says so (``KeyframePolicy.reason``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.stream.object_motion import MotionInfo
from engine.stream.scheduler import Keyframe
from engine.types import Frame


def schedule(
    engine: Any, frame: Frame, small: np.ndarray, frame_hw: tuple[int, int]
) -> tuple[Keyframe | None, str | None, bool, dict[int, MotionInfo], MotionInfo | None]:
    """Pick the keyframe to decode on, fit its motion to ``frame``, request a new keyframe if due.

    Returns (keyframe, reason, submitted, per-object motion, global motion or None)."""
    kf = engine.encoder.latest()
    reason = None
    if kf is None:
        reason = "first"
    elif kf.frame_hw != frame_hw:
        reason, kf = "resize", None
    elif frame.index < kf.frame_index:  # indices went back: another source on the same engine
        reason, kf = "restart", None
        engine.tracker.forget_keyframes()
        engine._seen_keyframe = -1
    since = 0 if kf is None else frame.index - kf.frame_index
    if reason is None and engine.policy.mode == "interval":
        reason = engine.policy.reason(since)
    motions: dict[int, MotionInfo] = {}
    glob = None
    if kf is not None and since != 0 and (reason is None or engine.encoder.asynchronous):
        t0 = time.perf_counter()
        motions, glob = object_motions(engine, kf, small, frame_hw)
        engine._motion_ms += (time.perf_counter() - t0) * 1e3
        fits = list(motions.values()) or ([glob] if glob is not None else [])
        if reason is None and fits:
            reason = engine.policy.reason(
                since, max(m.corner_px for m in fits), min(m.inlier_ratio for m in fits),
                all(m.ok for m in fits), engine.tracker.score_drop(kf.frame_index))
    submitted = False
    if reason is not None:
        engine.stats.keyframe_requests += 1
        submitted = engine.encoder.submit(frame, small)
        if not engine.encoder.asynchronous:
            kf, motions, glob = engine.encoder.latest(), {}, None
    return kf, reason, submitted, motions, glob


def object_motions(
    engine: Any, kf: Keyframe, small: np.ndarray, frame_hw: tuple[int, int]
) -> tuple[dict[int, MotionInfo], MotionInfo | None]:
    """Each object's keyframe->frame fit (from its keyframe mask), the global fit as fallback."""
    est = engine.motion_estimator
    glob: MotionInfo | None = None
    out: dict[int, MotionInfo] = {}
    for obj in engine.tracker.objects:
        if obj.status == "lost" and obj.lost_on_keyframe == kf.frame_index:
            continue  # waits for the next keyframe: not decoded on this one
        region = obj.key_regions.get(kf.frame_index)
        fit = None if region is None else est.region_motion(kf.grey, small, region, frame_hw)
        if fit is None:
            glob = glob or est.global_motion(kf.grey, small, frame_hw)
            fit = glob
        out[obj.object_id] = fit
    if glob is None and (engine._hover is not None or (not out and engine.policy.mode == "auto")):
        glob = est.global_motion(kf.grey, small, frame_hw)  # the hover preview / auto keyframes need it
    return out, glob
