"""``EngineConfig``: the stream engine's knobs (``engine.stream.engine.StreamEngine``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.stream import guards
from engine.stream.proposals import ProposalConfig
from engine.stream.tracker import TrackerConfig


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Engine knobs. ``motion_downscale_to``: long side (px) of the grey frames motion runs on;
    ``frame_budget_ms``: a step slower than this counts as late; ``outside_logit``: logit given to
    pixels warped in from outside the keyframe. ``reuse_decode_px``: when an object's prompt,
    mapped into the keyframe, moved at most this many keyframe pixels since its last decode on the
    same keyframe, that decode is reused (only warped by the new motion); 0 decodes every frame.
    ``motion_corners``: most corners an object's motion fit tracks. ``track_prompt_own_motion``: a
    tracking prompt (the object's last box, in the pixels of the frame it was found on) goes into
    the keyframe through that frame's motion, not the current frame's, so under camera or object
    motion it names where the object was rather than a box shifted by one frame's motion (and a
    reused decode stays reusable when frames are skipped); False: the current frame's (``arsel
    track``). ``encoder_nice``: the async encoder worker's thread runs this much nicer (Linux), so
    the per-frame work (decoder, motion) wins the cores over the encode.
    ``roi_margin``: box prompts upscale their masks only around the box, grown by this fraction of
    its size (+2 tokens); exact inside, background outside (``decoding.box_roi``); None: whole.
    Used only where no mask is fed back (see ``decoding.effective_roi_margin``). ``guard``: the
    drift guards (``engine.stream.guards``)."""

    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    guard: guards.GuardConfig = field(default_factory=guards.GuardConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    motion_downscale_to: int = 320
    mask_threshold: float = 0.0
    frame_budget_ms: float = 50.0
    outside_logit: float = -32.0
    reuse_decode_px: float = 0.0
    encoder_nice: int = 10
    motion_corners: int = 100
    track_prompt_own_motion: bool = False
    roi_margin: float | None = None
    max_encoder_errors: int = 3  # keyframe encodes in a row that may fail (counted, skipped) before raising
