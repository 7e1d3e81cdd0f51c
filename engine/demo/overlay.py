"""The demo's overlay video: object masks and boxes, the gaze dot, a HUD with latency and 3D sizes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.imageio import draw_overlay
from engine.stream.hud import draw_hud
from engine.types import Frame
from engine.video import VideoWriter


class OverlayVideo(VideoWriter):
    """The demo's overlay mp4 (``engine.video.VideoWriter``); ``fix``: how to run without the video,
    said when OpenCV cannot write it."""

    def __init__(self, path: Path, fps: float, fix: str = "pass --no-video") -> None:
        super().__init__(path, fps, fix)

    def write(self, frame: Frame, res: Any, gaze_xy: tuple[float, float] | None, hud: list[str],
              objects: Mapping[int, Any]) -> None:
        """Draw ``res`` (a ``StepResult``) on ``frame.rgb`` with the smoothed gaze point and HUD lines."""
        self.write_rgb(render_overlay(frame, res, gaze_xy, hud, objects))


def render_overlay(frame: Frame, res: Any, gaze_xy: tuple[float, float] | None, hud: list[str],
                   objects: Mapping[int, Any]) -> np.ndarray:
    """``HxWx3 uint8 RGB``: masks tinted by object id, boxes, gaze dot (grey ring when the eye is
    closed or lost), HUD top-left, each object's live single-view 3D extents bottom-left."""
    masks = res.masks_by_id()
    boxes = [r.box_xyxy for r in res.objects if r.box_xyxy is not None and r.found]
    img = draw_overlay(frame.rgb, masks, boxes_xyxy=np.array(boxes) if boxes else None)
    h, w = img.shape[:2]
    if gaze_xy is not None:
        centre = (int(round(gaze_xy[0])), int(round(gaze_xy[1])))
        cv2.circle(img, centre, 9, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.circle(img, centre, 5, (255, 0, 255), -1, cv2.LINE_AA)
    else:
        cv2.circle(img, (w - 24, 24), 9, (160, 160, 160), 2, cv2.LINE_AA)  # gaze invalid (blink)
    status = {r.object_id: r.status for r in res.objects}
    lines = [f"frame {res.frame_index}  key {res.keyframe_index}  age {res.embedding_age_frames}", *hud]
    draw_hud(img, lines)
    sizes = []
    for oid, log in sorted(objects.items()):
        if oid in status and log.live_extent_m is not None:
            dims = "x".join(f"{100 * v:.0f}" for v in log.live_extent_m)
            sizes.append(f"obj {oid} [{status[oid]}] {dims} cm (1 view)")
    if sizes:
        draw_hud(img, sizes, origin_xy=(8, max(8, h - 8 - 20 * len(sizes) - 8)))
    return img
