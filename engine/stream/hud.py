"""The on-frame HUD: text lines on a dark box, and the tracking counters' line.

The latency lines come from :meth:`engine.stream.latency.LatencyRecorder.hud_lines`.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np


def track_status_line(counts: Mapping[str, int]) -> str:
    """HUD line of the per-object tracking counters (``EngineStats.track_status``)."""
    short = {"ok": "ok", "drift_corrected": "fixed", "lost": "lost", "reacquired": "reacq"}
    return "track " + " ".join(f"{short.get(k, k)} {v}" for k, v in counts.items() if k in short)


def draw_hud(rgb: np.ndarray, lines: list[str], origin_xy: tuple[int, int] = (8, 8), scale: float = 0.5) -> np.ndarray:
    """Draw ``lines`` of text on a dark box at the top-left of an ``HxWx3 uint8`` image (in place)."""
    if not lines:
        return rgb
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(max(lines, key=len), font, scale, 1)
    step = th + 6
    x0, y0 = origin_xy
    x1, y1 = min(rgb.shape[1] - 1, x0 + tw + 10), min(rgb.shape[0] - 1, y0 + step * len(lines) + 6)
    region = rgb[y0:y1, x0:x1]
    region[:] = (region.astype(np.uint16) * 2 // 5).astype(np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(rgb, text, (x0 + 5, y0 + (i + 1) * step), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return rgb
