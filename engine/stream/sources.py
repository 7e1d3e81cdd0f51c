"""Frame sources: camera, video file, image folder (DAVIS layout), synthetic homography sequence,
and ``open_source``, which opens any registered kind from its text (RealSense registers its own).

Every source is a ``engine.frame_source.FrameSource``: an iterator of ``Frame`` with ``.stats``
(``delivered``, ``dropped``, ``late``, ``bad``, ``failed_reads``; see that module).
Frame indices are input positions, so a skipped frame leaves a gap in ``Frame.index``.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.frame_source import FrameSource, SourceError, SourceKind, SourceStats, register_source, source_kinds
from engine.types import Frame

__all__ = ["ArraySource", "CameraSource", "FrameSource", "ImageFolderSource", "SourceError", "SourceStats",
           "SyntheticSource", "VideoSource", "folder_images", "open_source", "synthetic_base_image"]
_Source = FrameSource  # the former private base; kept for code written against it

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class ArraySource(FrameSource):
    """Frames from in-memory ``HxWx3 uint8 RGB`` arrays; ``None`` or malformed items count as ``bad``."""

    def __init__(self, images: Iterable[Any], fps: float = 30.0) -> None:
        super().__init__()
        self._images = images
        self.fps = fps

    def __iter__(self) -> Iterator[Frame]:
        period_ns = int(1e9 / self.fps)
        for i, img in enumerate(self._images):
            frame = self._frame(i, i * period_ns, img, bgr=False)
            if frame is not None:
                yield frame


class _CaptureSource(FrameSource):
    """Shared loop over ``cv2.VideoCapture`` with a limit on consecutive failed reads."""

    _camera = False  # cameras stamp frames with the clock; files with index / fps

    def __init__(self, cap: cv2.VideoCapture, what: str, max_failed_reads: int, realtime: bool) -> None:
        super().__init__()
        if max_failed_reads < 1:
            raise ValueError(f"max_failed_reads must be >= 1, got {max_failed_reads}")
        self._cap = cap
        self._what = what
        self.max_failed_reads = max_failed_reads
        self.realtime = realtime
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 1.0 <= fps <= 1000.0 else 30.0
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.ended_early_at: int | None = None  # frame indices a file gave before breaking off

    def _end_of_stream(self, index: int) -> bool:
        return False

    def __iter__(self) -> Iterator[Frame]:
        period_ns = int(1e9 / self.fps)
        t0 = time.monotonic_ns()
        index, failed = 0, 0
        try:
            while self._cap.isOpened():
                if self.realtime:  # skip frames whose slot has passed (the consumer fell behind)
                    behind = (time.monotonic_ns() - t0) // period_ns - index
                    for _ in range(max(0, int(behind))):
                        if not self._cap.grab():
                            break
                        index += 1
                        self.stats.dropped += 1
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    if self._end_of_stream(index):
                        return
                    failed += 1
                    self.stats.failed_reads += 1
                    if failed >= self.max_failed_reads and not self._camera:
                        warnings.warn(f"{self._what} ended at frame {index} after {failed} failed reads; its header "
                                      f"announced {self.frame_count} frames", stacklevel=2)
                        self.ended_early_at = index
                        return
                    if failed >= self.max_failed_reads:
                        raise SourceError(
                            f"{self._what} stopped delivering frames: {failed} consecutive failed reads at frame "
                            f"{index}. Check that the device is connected and not used by another program "
                            "(or raise max_failed_reads for a slow device)."
                        )
                    if not self._camera:  # a frame of the file is lost: leave its index as a gap
                        index += 1
                        self.stats.bad += 1
                    continue
                failed = 0
                now = time.monotonic_ns()
                if self.realtime and now - (t0 + index * period_ns) > period_ns // 2:
                    self.stats.late += 1
                frame = self._frame(index, now if self._camera else index * period_ns, bgr, bgr=True)
                index += 1
                if frame is not None:
                    yield frame
        finally:
            self.close()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()


class CameraSource(_CaptureSource):
    """A live camera (``cv2.VideoCapture(index)``); raises ``SourceError`` after ``max_failed_reads``
    consecutive failed reads (camera unplugged) instead of hanging. Timestamps are monotonic ns.
    Frames the driver dropped while the consumer was busy are estimated from timestamp gaps."""

    _camera = True

    def __init__(self, index: int = 0, width: int | None = None, height: int | None = None,
                 max_failed_reads: int = 30) -> None:
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open camera {index}: no such device or it is busy. Check the cable and that no other "
                "program holds it; try another index (0, 1, ...) or give a video file/folder instead."
            )
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        super().__init__(cap, f"camera {index}", max_failed_reads, realtime=False)
        self._last_ns: int | None = None

    def _frame(self, index: int, timestamp_ns: int, image: Any, bgr: bool) -> Frame | None:
        if self._last_ns is not None:
            gap = (timestamp_ns - self._last_ns) * self.fps / 1e9  # in frame periods
            missed = max(0, int(gap + 0.5) - 1)
            self.stats.dropped += missed
            self.stats.late += int(missed == 0 and gap > 1.25)
        self._last_ns = timestamp_ns
        return super()._frame(index, timestamp_ns, image, bgr)


class VideoSource(_CaptureSource):
    """A video file, every frame in order (``realtime=False``), or paced to its fps dropping frames
    the consumer is too slow for (``realtime=True``). Timestamps are ``index / fps`` in ns."""

    def __init__(self, path: str | Path, realtime: bool = False, max_failed_reads: int = 10) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path}")
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {path} as a video (unsupported codec or corrupt file); "
                              "convert it with ffmpeg to H.264/mp4, or extract frames to a folder")
        super().__init__(cap, f"video {path}", max_failed_reads, realtime)

    def __len__(self) -> int:
        """Frames the file's header announces (a failed read inside them is a ``bad`` frame, so a
        consumer can still write one result per input frame); after the file broke off early (too
        many failed reads in a row), the indices it gave. TypeError when it announces none."""
        if self.ended_early_at is not None:
            return min(self.ended_early_at, max(self.frame_count, 0))
        if self.frame_count <= 0:
            raise TypeError(f"{self._what} announces no frame count; read it to the end to count its frames")
        return self.frame_count

    def _end_of_stream(self, index: int) -> bool:
        """A failed read ends the file past its announced frames (or anywhere if none are announced);
        inside them it is a lost frame (``bad``), even the last one."""
        return self.frame_count <= 0 or index >= self.frame_count


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def folder_images(folder: str | Path) -> list[Path]:
    """Image files of a folder (or of its ``JPEGImages/`` subfolder, DAVIS layout), natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    if (folder / "JPEGImages").is_dir():
        folder = folder / "JPEGImages"
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=_natural_key)
    if not files:
        raise SourceError(f"{folder} holds no images ({', '.join(IMAGE_EXTS)}); give a folder of frames "
                          "or a DAVIS sequence folder containing JPEGImages/")
    return files


class ImageFolderSource(FrameSource):
    """Frames from a folder of JPEG/PNG images in natural order; unreadable files count as ``bad``."""

    def __init__(self, folder: str | Path, fps: float = 30.0) -> None:
        super().__init__()
        self.files = folder_images(folder)
        self.fps = fps

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        period_ns = int(1e9 / self.fps)
        for i, path in enumerate(self.files):
            frame = self._frame(i, i * period_ns, cv2.imread(str(path), cv2.IMREAD_COLOR), bgr=True)
            if frame is not None:
                yield frame


class SyntheticSource(FrameSource):
    """A still image moved by known random homographies (``engine.synthetic_motion.synthetic_homography_sequence``).

    ``homographies[k]`` (3x3 float64) maps frame-0 pixels to frame-k pixels.
    """

    def __init__(self, rgb: np.ndarray, n: int = 30, seed: int = 0, fps: float = 30.0, **motion: float) -> None:
        from engine.synthetic_motion import synthetic_homography_sequence

        super().__init__()
        if n < 1:
            raise ValueError(f"a synthetic sequence needs n >= 1 frames, got {n}")
        frames, homs = synthetic_homography_sequence(rgb, n, seed=seed, **motion)
        self.frames_rgb = [np.ascontiguousarray(f) for f in frames]
        self.homographies = [np.asarray(h, np.float64) for h in homs]
        self.fps = fps

    def __len__(self) -> int:
        return len(self.frames_rgb)

    def __iter__(self) -> Iterator[Frame]:
        period_ns = int(1e9 / self.fps)
        for i, rgb in enumerate(self.frames_rgb):
            frame = self._frame(i, i * period_ns, rgb, bgr=False)
            if frame is not None:
                yield frame


def synthetic_base_image(hw: tuple[int, int] = (480, 640)) -> np.ndarray:
    """The default textured RGB image of ``synthetic`` sources (scikit-image's astronaut, resized)."""
    from engine.imageio import load_rgb

    return cv2.resize(load_rgb("sample:astronaut"), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def _is_synthetic(text: str) -> bool:
    return text == "synthetic" or text.startswith("synthetic:")


def _open_synthetic(text: str, realtime: bool = False, **kwargs: Any) -> FrameSource:
    count = text.partition(":")[2] or "60"
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"bad source {text!r}: write synthetic:N with N a positive frame count")
    return SyntheticSource(synthetic_base_image(), int(count), **kwargs)


register_source(SourceKind("camera", str.isdigit, lambda text, realtime=False, **kw: CameraSource(int(text), **kw),
                           "a camera index", priority=20))
register_source(SourceKind("synthetic", _is_synthetic, _open_synthetic, "'synthetic[:N]'", priority=30))
register_source(SourceKind("folder", lambda text: Path(text).is_dir(),
                           lambda text, realtime=False, **kw: ImageFolderSource(Path(text), **kw),
                           "an existing folder of frames", priority=50))
register_source(SourceKind("video", lambda text: Path(text).is_file(),
                           lambda text, realtime=False, **kw: VideoSource(Path(text), realtime=realtime, **kw),
                           "a video file", priority=90))


def open_source(spec: str, realtime: bool = False, **kwargs: Any) -> FrameSource:
    """``"0"`` -> camera 0, ``"synthetic[:N]"`` -> SyntheticSource (N frames, default 60),
    ``"realsense[:SERIAL]"`` -> a live RealSense, a ``.bag``/``.db3`` file -> RealSense playback,
    a folder -> ImageFolderSource, another file -> VideoSource: the first registered
    ``engine.frame_source.SourceKind`` (by priority) whose ``matches`` accepts the text opens it."""
    text = str(spec).strip()
    kinds = source_kinds()
    for kind in kinds:
        if kind.matches(text):
            return kind.open(text, realtime=realtime, **kwargs)
    raise FileNotFoundError(f"source {spec!r} is not {_one_of([k.describes for k in kinds])}")


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
