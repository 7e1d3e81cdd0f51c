"""The stream engine: keyframe encodes, per-frame decodes with motion compensation, object tracking.

One ``step(frame)``: downscaled grey image -> newest finished keyframe -> keyframe->frame motion
``H`` per object (its own corners; the global fit as fallback, see ``object_motion``) -> keyframe
decision (a poor fit forces one) -> for every object its prompt (current-frame pixels) mapped into
the keyframe with ``H^-1`` -> decode on the keyframe embedding -> full-size logits warped back with
``H`` -> mask in the current frame.

A user prompt belongs to the frame stepped first after it was given; its first decode may come
later (async encoder), so it is mapped into the keyframe from that frame (``_prompt_motion``).
Frame indices that go backwards (another source fed to the same engine) restart the keyframes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from engine.backends.base import Backend
from engine.models.registry import ModelSpec
from engine.predictor import Predictor
from engine.stream import guard_steps, guards, keyframe_step
from engine.stream.decoding import Decoded, decode_prompt, effective_roi_margin
from engine.stream.engine_config import EngineConfig
from engine.stream.events import HoverEvent, Prompt, PromptEvent, ReleaseEvent, SelectEvent
from engine.stream.latency import LatencyRecorder
from engine.stream.object_motion import MotionEstimator, MotionInfo, map_prompt
from engine.stream.proposals import decode_point_proposals
from engine.stream.results import EngineStats, MaskResult, MaskStatus, StepResult, prompt_key
from engine.stream.scheduler import AsyncEncoder, Keyframe, KeyframePolicy
from engine.stream.tracker import TrackedObject, Tracker, TrackPrompt
from engine.transforms import preprocess
from engine.types import Embedding, Frame

MotionModel = Literal["homography", "affine", "none"]
_IDENTITY = np.eye(3, dtype=np.float64)


class StreamEngine:
    """Selects and tracks objects in a stream; decodes every frame on the newest keyframe embedding.

    >>> eng = StreamEngine.from_name("lite_medsam", policy=KeyframePolicy(interval=5))  # doctest: +SKIP
    >>> oid = eng.add_object(Prompt.box([100, 80, 300, 260]))
    >>> for res in eng.run(source): mask = res.objects[0].mask     # HxW bool per frame
    """

    def __init__(
        self,
        backend: Backend,
        spec: ModelSpec,
        policy: KeyframePolicy | None = None,
        motion: MotionModel = "homography",
        async_encoder: bool = False,
        config: EngineConfig | None = None,
    ) -> None:
        if motion not in ("homography", "affine", "none"):
            raise ValueError(f"motion must be 'homography', 'affine' or 'none', got {motion!r}")
        self.predictor = Predictor(backend, spec)
        self.spec = spec
        self.policy = policy or KeyframePolicy()
        self.motion = motion
        self.config = config or EngineConfig()
        self.encoder = AsyncEncoder(self._encode, asynchronous=async_encoder, nice=self.config.encoder_nice,
                                    max_consecutive_errors=self.config.max_encoder_errors,
                                    turn=getattr(backend, "encode_turn", None))  # a backend shared by sessions
        self.tracker = Tracker(self.config.tracker, points_supported=not spec.box_only)
        self._roi_margin = effective_roi_margin(self.config.roi_margin, backend, self.tracker.feeds_masks_back)
        self.motion_estimator = MotionEstimator(motion, self.config.motion_downscale_to,
                                                max_corners=self.config.motion_corners)
        self.latency = LatencyRecorder()
        self.stats = EngineStats()
        self._hover: Prompt | None = None
        self._seen_keyframe = -1
        self._motion_ms = 0.0
        self._small = np.zeros((0, 0), np.uint8)  # the frame being stepped, at the motion resolution

    @classmethod
    def from_name(
        cls,
        name: str,
        checkpoint: Path | None = None,
        device: str = "cpu",
        backend: str = "torch",
        threads: int | None = None,
        **kwargs: Any,
    ) -> "StreamEngine":
        """Engine over a registered model on runtime ``backend`` (``engine.backends.factory``).

        ``threads``: intra-op threads of an onnxruntime backend's sessions (spinning off, as the
        encoder worker and the decoder share the cores); torch's are process-wide
        (``torch.set_num_threads``), set by the caller.
        """
        from engine.backends.factory import create_backend
        from engine.models.registry import get_spec

        return cls(create_backend(backend, name, checkpoint, device, threads=threads), get_spec(name), **kwargs)

    # --- objects and events ---------------------------------------------------------------------
    def add_object(self, prompt: Prompt, object_id: int | None = None) -> int:
        """Track a new object from a prompt in the pixels of the frame the next ``step`` gets (it is
        decoded there or, without an embedding yet, later, mapped from that frame); returns its id
        (``object_id``, or the next free one in 1..255, see ``Tracker.add``)."""
        return self.tracker.add(prompt, object_id)

    def remove_object(self, object_id: int | None = None) -> None:
        """Stop tracking ``object_id`` (None: all)."""
        self.tracker.remove(object_id)

    def handle(self, event: PromptEvent) -> int | None:
        """Apply a prompt-source event; returns the id of a selected object, else None."""
        if isinstance(event, SelectEvent):
            if event.object_id is None or event.object_id not in self.tracker:  # released meanwhile: new
                return self.add_object(event.prompt)
            self.tracker.refine(event.object_id, event.prompt)
            return event.object_id
        if isinstance(event, ReleaseEvent):
            self.remove_object(event.object_id)
        elif isinstance(event, HoverEvent):
            self._hover = event.prompt
        else:
            raise TypeError(f"unknown prompt event {type(event).__name__}")
        return None

    # --- the frame loop ---------------------------------------------------------------------------
    def run(
        self, frames: Iterable[Any], events: Callable[[Frame], Iterable[PromptEvent]] | None = None
    ) -> Iterator[StepResult]:
        """Step over ``frames`` (a FrameSource or any iterable), timing the wait for each frame as
        ``capture``; ``events(frame)`` may return prompt events applied before that frame's step."""
        for _, result in self.run_frames(frames, events):
            yield result

    def run_frames(
        self, frames: Iterable[Any], events: Callable[[Frame], Iterable[PromptEvent]] | None = None
    ) -> Iterator[tuple[Any, StepResult]]:
        """As ``run``, yielding ``(frame, result)`` pairs (for drawing overlays)."""
        it = iter(frames)
        while True:
            t0 = time.perf_counter()
            try:
                frame = next(it)
            except StopIteration:
                return
            capture_ms = (time.perf_counter() - t0) * 1e3
            if events is not None and isinstance(frame, Frame):
                for ev in events(frame):
                    self.handle(ev)
            yield frame, self.step(frame, capture_ms)

    def step(self, frame: Frame, capture_ms: float | None = None) -> StepResult:
        """Process one frame; never waits for the encoder. A non-Frame input is counted and skipped."""
        t0 = time.perf_counter()
        if not isinstance(frame, Frame):
            self.stats.bad_frames += 1
            return StepResult(-1, -1, "bad_frame", (), (0, 0))
        self.stats.frames += 1
        frame_hw = (int(frame.rgb.shape[0]), int(frame.rgb.shape[1]))
        small = self.motion_estimator.small_grey(frame.rgb)
        self._small = small
        self.tracker.stamp_prompts(frame.index, small, frame_hw)
        self._motion_ms = (time.perf_counter() - t0) * 1e3
        kf, reason, submitted, motions, glob = keyframe_step.schedule(self, frame, small, frame_hw)
        timings = {"motion": self._motion_ms, "decode": 0.0, "postprocess": 0.0}
        if capture_ms is not None:
            timings["capture"] = capture_ms
        if kf is None:
            objs = tuple(self._empty(o.object_id, frame, -1, "no_embedding") for o in self.tracker.objects)
            for o in objs:
                self.stats.count_status(o.status)
            return self._finish(StepResult(frame.index, -1, "no_embedding", objs, frame_hw, 0, reason, submitted,
                                           glob, None, timings), t0)
        if kf.frame_index != self._seen_keyframe:
            self._seen_keyframe = kf.frame_index
            self.stats.add_keyframe(kf.frame_index)
            self.latency.add("encode", kf.encode_ms)
        self.predictor.set_embedding(kf.embedding)
        ident = MotionInfo.identity()
        results = []
        for obj in self.tracker.objects:
            res = self._track_object(obj, kf, motions.get(obj.object_id, ident), frame, timings)
            self.stats.count_status(res.status)
            if res.found and (submitted or frame.index == kf.frame_index):
                obj.remember_region(frame.index, self.motion_estimator.small_mask(res.mask), kf.frame_index)
            if res.found and kf.frame_index not in obj.key_regions and res.motion is not None:
                # no mask on the keyframe's own frame: this one, warped back, so the next frames fit
                # the object's motion (region corners, cached) instead of the whole frame's, each time
                obj.key_regions[kf.frame_index] = self.motion_estimator.keyframe_region(res.mask, res.motion.matrix)
            results.append(res)
        hover = None
        if self._hover is not None:
            tp = TrackPrompt(self._hover, None, "user")
            hover = self._decode_prompt(tp, None, kf, glob or ident, frame, timings)[0]
        age = frame.index - kf.frame_index
        self.latency.add_age(age)
        return self._finish(StepResult(frame.index, kf.frame_index, "ok", tuple(results), frame_hw, age, reason,
                                       submitted, glob, hover, timings), t0)

    def _finish(self, result: StepResult, t0: float) -> StepResult:
        frame_ms = (time.perf_counter() - t0) * 1e3
        result.timings_ms["frame"] = frame_ms
        self.latency.add_many(result.timings_ms)
        self.latency.tick()
        self.stats.late_frames += frame_ms > self.config.frame_budget_ms
        return result

    def _encode(self, rgb: np.ndarray, frame_index: int) -> Embedding:
        """Encoder worker body: touches the backend only (never the decoder's predictor state). A
        backend with ``prepare_image_side`` (ONNX Runtime on the CPU) computes the decoder's image
        side here too, off the per-frame path."""
        x, input_hw = preprocess(rgb, self.spec.input_size, self.spec.pixel_norm, self.spec.resize)  # type: ignore[arg-type]
        backend = self.predictor.backend
        features = backend.encode(x)
        prepare = getattr(backend, "prepare_image_side", None)
        if prepare is not None:
            prepare(features)
        return Embedding(features, (rgb.shape[0], rgb.shape[1]), input_hw, frame_index)

    # --- per object -------------------------------------------------------------------------------
    def _empty(self, object_id: int, frame: Frame, kf_index: int, status: MaskStatus) -> MaskResult:
        return MaskResult(object_id, frame.index, kf_index, np.zeros(frame.rgb.shape[:2], bool), 0.0, status)

    def _track_object(
        self, obj: TrackedObject, kf: Keyframe, motion: MotionInfo, frame: Frame, timings: dict
    ) -> MaskResult:
        frame_hw = (int(frame.rgb.shape[0]), int(frame.rgb.shape[1]))
        tp = self.tracker.prompt_for(obj, kf.frame_index, frame_hw)
        if tp is None:
            return self._empty(obj.object_id, frame, kf.frame_index, "lost")
        confirmed = False  # a tracking decode failed on its area, confirmed by its re-decode (guards.confirms)
        exp = None if tp.mode == "user" else guard_steps.expectation(self, obj, kf, motion, frame_hw, timings)
        if tp.mode == "reacquire" and exp is not None:
            result, low_res_logits = guard_steps.correct(self, obj, tp, exp, kf, motion, frame, timings, True)
        else:
            prompt_motion = None
            if tp.mode == "user":
                prompt_motion = self._prompt_motion(obj, kf, motion, frame.index, timings)
            elif tp.mode == "track" and self.config.track_prompt_own_motion and obj.box_motion is not None \
                    and obj.box_motion[0] == kf.frame_index:
                prompt_motion = obj.box_motion[1]  # the box is in the pixels of the frame it was found on
            result, low_res_logits = self._decode_prompt(tp, obj, kf, motion, frame, timings, prompt_motion)
            if exp is not None and result.status == "ok":
                chk = guards.check(result.mask, exp, self.config.guard, rgb=frame.rgb, keyframe_index=kf.frame_index)
                result = replace(result, area_ratio=chk.area_ratio)
                if not chk.passed:  # never reuse a decode that failed its check: it would fail again
                    obj.decode_cache = None
                    failed, first = result.mask, obj.guard is not None and obj.guard.keyframe_index != kf.frame_index
                    result, low_res_logits = guard_steps.correct(self, obj, tp, exp, kf, motion, frame, timings, False)
                    confirmed = result.found and guards.confirms(chk, failed, result.mask, self.config.guard, first)
            elif tp.mode == "reacquire" and result.status == "ok":
                result = replace(result, status="reacquired")
        t0 = time.perf_counter()
        try:
            if not result.found:  # outside the keyframe, or nothing fitted: try again on the next keyframe
                self.tracker.mark_lost(obj, kf.frame_index)
                return result
            if self.tracker.update(obj, result.mask, result.score, low_res_logits, kf.frame_index) != "ok":
                return MaskResult(obj.object_id, frame.index, kf.frame_index, np.zeros(frame_hw, bool),
                                  result.score, "lost", None, motion, result.area_ratio)
            obj.box_motion = (kf.frame_index, motion)
            guard_steps.fold(self, obj, tp, exp, result.mask, frame, kf, motion, confirmed)
            return MaskResult(obj.object_id, frame.index, kf.frame_index, result.mask, result.score, result.status,
                              obj.box_xyxy, motion, result.area_ratio)
        finally:
            timings["postprocess"] += (time.perf_counter() - t0) * 1e3

    def _prompt_motion(
        self, obj: TrackedObject, kf: Keyframe, motion: MotionInfo, frame_index: int, timings: dict
    ) -> MotionInfo:
        """Keyframe -> prompt frame for ``obj``'s user prompt: ``motion`` if given on this frame,
        identity if on the keyframe, else a global fit keyframe -> the prompt frame's grey image
        (identity if it fails). A prompt frame of another size is taken as this frame."""
        p = obj.prompt_frame_index
        if p is None or p == frame_index:
            return motion
        if p == kf.frame_index:
            return MotionInfo.identity()
        if obj.prompt_grey is None or obj.prompt_hw != kf.frame_hw:
            return motion
        t0 = time.perf_counter()
        fit = self.motion_estimator.global_motion(kf.grey, obj.prompt_grey, kf.frame_hw)
        timings["motion"] += (time.perf_counter() - t0) * 1e3
        return fit

    def _decode_prompt(
        self, tp: TrackPrompt, obj: TrackedObject | None, kf: Keyframe, motion: MotionInfo, frame: Frame,
        timings: dict, prompt_motion: MotionInfo | None = None,
    ) -> tuple[MaskResult, np.ndarray | None]:
        """Map ``tp`` into the keyframe, decode, warp the logits back: (result, low-res logits).

        ``motion``: keyframe -> current frame (warps the logits back); ``prompt_motion``: keyframe ->
        the frame ``tp``'s pixels belong to (None: the current frame, i.e. ``motion``)."""
        t0 = time.perf_counter()
        object_id = 0 if obj is None else obj.object_id
        key_hw = kf.frame_hw
        matrix = motion.matrix
        identity = motion.is_identity
        pm = motion if prompt_motion is None else prompt_motion
        inv = _IDENTITY if pm.is_identity else np.linalg.inv(pm.matrix)
        prompt = map_prompt(tp.prompt, inv, key_hw)
        if prompt is None:
            return self._empty(object_id, frame, kf.frame_index, "outside"), None
        key = prompt_key(prompt)
        cached = None if obj is None else obj.decode_cache
        tol = self.config.reuse_decode_px
        reused = (tol > 0 and tp.mode == "track" and cached is not None and cached[0] == kf.frame_index
                and (tp.mask_input is None or tp.mask_input is cached[2].low_res_logits)
                and cached[1].shape == key.shape
                and float(np.max(np.abs(cached[1] - key))) <= tol)
        if reused:
            dec = cached[2]  # same keyframe, (almost) the same prompt there: the same answer
            self.stats.decodes_reused += 1
        else:
            dec = self._decode(prompt, tp.mask_input, tp.mode == "user", kf.rgb_small)
            if obj is not None:
                obj.decode_cache = None if dec is None else (kf.frame_index, key, dec)
        t1 = time.perf_counter()
        postprocess_ms = 0.0 if dec is None or reused else dec.postprocess_ms  # a reused decode upsampled nothing now
        timings["decode"] += (t1 - t0) * 1e3 - postprocess_ms  # prompt mapping + decoder
        timings["postprocess"] += postprocess_ms
        if dec is None:
            return self._empty(object_id, frame, kf.frame_index, "lost"), None
        logits = dec.logits
        if not identity:
            h, w = frame.rgb.shape[:2]
            logits = cv2.warpPerspective(logits, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT, borderValue=self.config.outside_logit)
        mask = logits > self.config.mask_threshold
        timings["postprocess"] += (time.perf_counter() - t1) * 1e3  # warp back + threshold
        return MaskResult(object_id, frame.index, kf.frame_index, mask, dec.score, "ok"), dec.low_res_logits

    def _decode(self, prompt: Prompt, mask_input: np.ndarray | None, first: bool,
                key_rgb: np.ndarray | None = None) -> Decoded | None:
        """Decode one keyframe-frame prompt; None when a point on a box-only model finds nothing.
        ``key_rgb``: the keyframe (any size, ``hxwx3 uint8``) the point proposals are scored on."""
        cfg = self.config
        if self.spec.box_only and prompt.box_xyxy is None:
            points: np.ndarray = prompt.points_xy  # type: ignore[assignment]
            prop = decode_point_proposals(self.predictor, points, prompt.labels, cfg.proposals, cfg.mask_threshold,
                                          key_rgb)
            return prop.decoded
        single_point = prompt.points_xy is not None and len(prompt.points_xy) == 1
        multimask = first and prompt.box_xyxy is None and single_point and not self.spec.box_only
        return decode_prompt(self.predictor, prompt, mask_input, multimask, self._roi_margin)

    @property
    def last_grey(self) -> np.ndarray:
        """The last stepped frame at the motion resolution (``hxw uint8``; ``(0, 0)`` before the first)."""
        return self._small

    def close(self) -> None:
        """Stop the encoder worker."""
        self.encoder.close()

    def __enter__(self) -> "StreamEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
