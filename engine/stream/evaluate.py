"""Offline evaluation of the stream engine on DAVIS-layout sequences (mean J = region IoU).

A DAVIS sequence folder holds ``JPEGImages/NNNNN.jpg`` and ``Annotations/NNNNN.png`` (object ids;
here every non-zero pixel is the object): the shared ``davis_blackswan/`` and ``davis2016/<seq>/``
alike. Mean J leaves out frame 0, which carries the prompt (DAVIS protocol). ``CachingBackend`` memoises encodes by input bytes so
several keyframe settings can be compared on one sequence for the price of one set of encodes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.backends.base import Backend, BackendInfo
from engine.stream.events import Prompt
from engine.stream.sources import ImageFolderSource, folder_images
from engine.transforms import mask_to_box_xyxy


def jaccard(mask: np.ndarray, truth: np.ndarray) -> float:
    """Region IoU of two bool masks (1.0 when both are empty, as DAVIS)."""
    union = np.logical_or(mask, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(mask, truth).sum() / union)


def davis_annotations(folder: str | Path) -> list[np.ndarray]:
    """Ground-truth masks (bool HxW, any non-zero id) of a DAVIS sequence folder, in frame order."""
    folder = Path(folder)
    ann = folder / "Annotations"
    if not ann.is_dir():
        raise FileNotFoundError(f"{ann} not found: a DAVIS sequence folder holds JPEGImages/ and Annotations/")
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0 for p in folder_images(ann)]


def box_of(mask: np.ndarray) -> np.ndarray:
    """Pixel-edge box ``[x0, y0, x1 + 1, y1 + 1]`` float32 of a non-empty bool mask."""
    box = mask_to_box_xyxy(mask)
    if box is None:
        raise ValueError("the mask is empty: no box to start tracking from")
    return box + np.array([0, 0, 1, 1], np.float32)


class CachingBackend:
    """Wraps a backend; identical encoder inputs are encoded once (offline comparisons only)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.input_size = inner.input_size
        self._cache: dict[str, Any] = {}
        self.encodes = 0

    def encode(self, image: np.ndarray) -> Any:
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        if key not in self._cache:
            self._cache[key] = self.inner.encode(image)
            self.encodes += 1
        return self._cache[key]

    def decode(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.decode(*args, **kwargs)

    @property
    def supports_roi(self) -> bool:
        return bool(getattr(self.inner, "supports_roi", False))

    def describe(self) -> BackendInfo:
        return self.inner.describe()


@dataclass(frozen=True, slots=True)
class TrackEval:
    """Per-frame J (float64 ``(N,)``, frame 0 included), keyframes used and the engine's latency summary.

    ``mean_j`` follows the DAVIS protocol: frame 0, which carries the prompt, is left out.
    """

    j_per_frame: np.ndarray
    keyframes: tuple[int, ...]
    latency: dict[str, Any]

    @property
    def mean_j(self) -> float:
        """Mean J over frames 1..N-1 (DAVIS protocol: the prompted frame 0 excluded); NaN for N < 2."""
        return float(np.mean(self.j_per_frame[1:])) if len(self.j_per_frame) > 1 else float("nan")

    @property
    def embedding_age_mean(self) -> float | None:
        """Mean frames between the keyframe decoded on and the frame (None when never recorded)."""
        return self.latency.get("embedding_age_frames", {}).get("mean")


def evaluate_davis(engine: Any, folder: str | Path, max_frames: int | None = None) -> TrackEval:
    """Track the sequence's object from the box of its first annotation; J against every annotation."""
    truth = davis_annotations(folder)[:max_frames]
    engine.add_object(Prompt.box(box_of(truth[0]), source="mask"))
    js = []
    for res in engine.run(ImageFolderSource(folder)):
        if res.frame_index >= len(truth):
            break
        mask = res.objects[0].mask if res.objects else np.zeros_like(truth[0])
        js.append(jaccard(mask, truth[res.frame_index]))
    return TrackEval(np.array(js), tuple(engine.stats.keyframes_used), engine.latency.to_json())
