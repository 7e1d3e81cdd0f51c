"""What ``arsel track`` writes: a mask PNG per input frame, the overlay video and ``metrics.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.video import VideoWriter


class TrackWriter:
    """``arsel track``'s outputs in ``out``: ``masks/NNNNN.png`` (one per input frame, gaps filled with
    empty masks; 0/255 for one object, object ids with ``id_values``) and ``overlay.mp4`` with the HUD."""

    def __init__(self, out: Path, id_values: bool, overlay_fps: float | None) -> None:
        self.out, self.id_values = out, id_values
        self.count = 0
        self.next_index = 0
        self.hw: tuple[int, int] | None = None
        # At the first frame's size; frames of another size are resized to it and counted.
        self.video = None if overlay_fps is None else VideoWriter(out / "overlay.mp4", overlay_fps, "pass --no-overlay")

    def _mask(self, index: int, mask: np.ndarray) -> None:
        from engine.imageio import save_mask_png

        save_mask_png(self.out / "masks" / f"{index:05d}.png", mask)
        self.count += 1

    def fill_to(self, index: int) -> None:
        """Empty masks for input frames ``next_index .. index-1`` that produced no result."""
        if self.hw is None:
            return
        for i in range(self.next_index, index):
            self._mask(i, np.zeros(self.hw, bool if not self.id_values else np.uint8))
        self.next_index = max(self.next_index, index)

    def write(self, res: Any, frame: Any, engine: Any) -> None:
        if res.status == "bad_frame" or frame is None:
            return
        self.hw = res.frame_hw
        self.fill_to(frame.index)
        ids = res.id_map()
        self._mask(frame.index, ids if self.id_values else ids > 0)
        self.next_index = frame.index + 1
        if self.video is not None:
            self._overlay(res, frame, engine)

    def _overlay(self, res: Any, frame: Any, engine: Any) -> None:
        from engine.imageio import draw_overlay
        from engine.stream.hud import draw_hud, track_status_line

        masks = res.masks_by_id()
        boxes = [r.box_xyxy for r in res.objects if r.box_xyxy is not None]
        img = draw_overlay(frame.rgb, masks, boxes_xyxy=np.array(boxes) if boxes else None)
        lines = [f"frame {res.frame_index}  key {res.keyframe_index}  age {res.embedding_age_frames}",
                 *engine.latency.hud_lines(), track_status_line(engine.stats.track_status)]
        draw_hud(img, lines)
        self.video.write_rgb(img)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.video is not None:
            self.video.close()


def track_metrics(args: Any, engine: Any, source: Any, writer: TrackWriter, wall_s: float) -> dict[str, Any]:
    """``metrics.json`` of ``arsel track``: the run's flags (``args``: ``source``, ``model``, ``motion``,
    ``async_encoder``), the engine's and the source's counters and the latency summary."""
    lat = engine.latency.to_json()
    enc = engine.encoder.stats
    src = source.stats.to_dict()
    return {
        "source": args.source,
        "model": args.model,
        "backend": engine.predictor.backend.describe().runtime,
        "policy": {"mode": engine.policy.mode, "interval": engine.policy.interval},
        "motion": args.motion,
        "async_encoder": bool(args.async_encoder),
        "frames": engine.stats.frames,
        "masks_written": writer.count,
        "overlay_frames": 0 if writer.video is None else writer.video.frames,
        "overlay_frames_resized": 0 if writer.video is None else writer.video.resized,
        "wall_s": round(wall_s, 3),
        "fps": lat["fps"],
        "stages": lat["stages"],
        "embedding_age_frames": lat["embedding_age_frames"],
        "keyframes_used": list(engine.stats.keyframes_used),  # the most recent RECENT_KEYFRAMES
        "keyframes_total": engine.stats.keyframes_total,
        "keyframe_requests": engine.stats.keyframe_requests,
        "keyframe_requests_dropped_busy": enc.dropped_busy,
        "decodes_reused": engine.stats.decodes_reused,
        "track_status": dict(engine.stats.track_status),  # object-frames per status (drift guards)
        "dropped_frames": src["dropped"],
        "late_frames": src["late"] + engine.stats.late_frames,
        "late_frames_over_budget": engine.stats.late_frames,
        "frame_budget_ms": engine.config.frame_budget_ms,
        "bad_frames": src["bad"] + engine.stats.bad_frames,
        "source_stats": src,
    }
