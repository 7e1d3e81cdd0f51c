"""``VideoWriter``: the one mp4 writer of overlay videos (``arsel track``, ``arsel demo``, the demos)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["VideoWriter"]


class VideoWriter:
    """Writes ``HxWx3 uint8`` frames into an mp4 (OpenCV ``mp4v``) at ``fps``, opened at the first
    frame's size (``hw``). A video has one size: a frame of another size is resized to it (area
    interpolation) and counted in ``resized``; ``frames`` counts every frame written.

    Raises ``OSError`` at the first frame when OpenCV cannot write ``path``; the message ends in
    ``hint`` (how to run without the video, e.g. "pass --no-video").
    """

    def __init__(self, path: str | Path, fps: float, hint: str) -> None:
        self.path, self.fps, self.hint = Path(path), float(fps), hint
        self.frames = 0
        self.resized = 0
        self.hw: tuple[int, int] | None = None
        self._writer: cv2.VideoWriter | None = None

    def write_bgr(self, bgr: np.ndarray) -> None:
        """Append an ``HxWx3 uint8 BGR`` frame."""
        if self._writer is None:
            h, w = bgr.shape[:2]
            writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not writer.isOpened():
                raise OSError(f"cannot write {self.path} with OpenCV's mp4v codec; {self.hint}")
            self._writer, self.hw = writer, (h, w)
        if bgr.shape[:2] != self.hw:
            h, w = self.hw  # type: ignore[misc]
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
            self.resized += 1
        self._writer.write(bgr)
        self.frames += 1

    def write_rgb(self, rgb: np.ndarray) -> None:
        """Append an ``HxWx3 uint8 RGB`` frame."""
        self.write_bgr(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        """Finish the file (idempotent); a writer that never got a frame leaves no file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
