"""Offline evaluation of the stream engine on DAVIS-layout sequences (mean J = region IoU).

A DAVIS sequence folder holds ``JPEGImages/NNNNN.jpg`` and ``Annotations/NNNNN.png`` (object ids;
here every non-zero pixel is the object): the shared ``davis_blackswan/`` and ``davis2016/<seq>/``
alike. Mean J leaves out frame 0, which carries the prompt (DAVIS protocol). ``CachingBackend`` memoises encodes by input bytes so
several keyframe settings can be compared on one sequence for the price of one set of encodes.

Three starts per sequence (``START_KINDS``): the ground-truth box of frame 0; an interior point
(the distance-transform maximum of the frame-0 mask); and a simulated gaze dwell at that point
(``engine.gaze.simulate``: fixation jitter, drift and a blink, through ``engine.gaze.DwellSelector``;
the selection's point is the prompt). DAVIS protocol: frame 0 (the prompted frame) is not scored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from engine.backends.base import Backend, BackendInfo
from engine.stream.events import Prompt
from engine.stream.sources import ImageFolderSource, folder_images
from engine.stream.tracker import interior_point_xy
from engine.transforms import mask_to_box_xyxy

StartKind = Literal["box", "point", "gaze"]
START_KINDS: tuple[StartKind, ...] = ("box", "point", "gaze")


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


def gaze_dwell_point(point_xy: np.ndarray, seed: int = 0, fps: float = 30.0) -> np.ndarray:
    """Where a simulated gaze dwell on ``point_xy`` (``(2,)``) selects, float32 ``(2,)``: two
    fixations of ~1 s on the point (jitter, drift, a blink in the second), fed to a default
    ``DwellSelector``; its first selection's point."""
    from engine.gaze.simulate import simulate_gaze
    from engine.gaze import DwellSelector
    from engine.stream.events import SelectEvent

    times = (np.arange(60) * 1e9 / fps).astype(np.int64)
    targets = np.broadcast_to(np.asarray(point_xy, np.float64), (len(times), 1, 2))
    trace = simulate_gaze(times, targets, order=[0, 0], seed=seed)
    selector = DwellSelector()
    for sample in trace.samples:
        for ev in selector.update(sample):
            if isinstance(ev, SelectEvent):
                return np.asarray(ev.prompt.points_xy[0], np.float32)
    raise RuntimeError("the simulated dwell selected nothing; lengthen the trace or loosen DwellSelector")


def start_prompt(kind: StartKind, first_truth: np.ndarray, seed: int = 0) -> Prompt:
    """The frame-0 prompt of a start ``kind`` from the frame-0 ground truth (bool ``HxW``)."""
    if kind == "box":
        return Prompt.box(box_of(first_truth), source="mask")
    point = interior_point_xy(first_truth)
    if point is None:
        raise ValueError("the first annotation is empty: no point to start tracking from")
    if kind == "gaze":
        point = gaze_dwell_point(point, seed)
        return Prompt.point(float(point[0]), float(point[1]), source="gaze")
    if kind != "point":
        raise ValueError(f"start must be one of {START_KINDS}, got {kind!r}")
    return Prompt.point(float(point[0]), float(point[1]), source="cli")


@dataclass(frozen=True, slots=True)
class TrackEval:
    """Per-frame J (float64 ``(N,)``, frame 0 included), keyframes used and the engine's latency summary.

    ``mean_j_after_first`` follows the DAVIS protocol: frame 0, which carries the prompt, is left out.
    """

    j_per_frame: np.ndarray
    keyframes: tuple[int, ...]
    latency: dict[str, Any]
    statuses: tuple[str, ...] = ()
    area_px: np.ndarray | None = None  # int64 (N,): the object's mask area per frame
    truth_area_px: np.ndarray | None = None  # int64 (N,): the annotation's

    @property
    def mean_j(self) -> float:
        """Mean J over every frame (frame 0 included)."""
        return float(np.mean(self.j_per_frame))

    @property
    def embedding_age_mean(self) -> float | None:
        """Mean frames between the keyframe decoded on and the frame (None when never recorded)."""
        return self.latency.get("embedding_age_frames", {}).get("mean")

    @property
    def mean_j_after_first(self) -> float:
        """Mean J over frames 1.. (DAVIS protocol: the prompted frame is not scored)."""
        return float(np.mean(self.j_per_frame[1:])) if len(self.j_per_frame) > 1 else float("nan")

    def status_counts(self) -> dict[str, int]:
        return {s: self.statuses.count(s) for s in dict.fromkeys(self.statuses)}


def worst_area_loss(area_px: np.ndarray, truth_area_px: np.ndarray, window: int = 10, stable: float = 0.2) -> float:
    """Largest fraction of its area a mask lost within ``window`` frames while the annotation's
    area stayed within ``1 +- stable`` of its value at the window's start (0 when none)."""
    worst = 0.0
    for i in range(len(area_px)):
        for j in range(i + 1, min(i + window + 1, len(area_px))):
            t0, a0 = float(truth_area_px[i]), float(area_px[i])
            if t0 <= 0 or a0 <= 0:
                continue
            gt_ratio = truth_area_px[i:j + 1] / t0
            if np.all(np.abs(gt_ratio - 1) <= stable):
                worst = max(worst, 1 - float(area_px[j]) / a0)
    return worst


def evaluate_davis(engine: Any, folder: str | Path, max_frames: int | None = None, start: StartKind = "box",
                   seed: int = 0) -> TrackEval:
    """Track the sequence's object from a ``start`` (``start_prompt``) on frame 0; J against every
    annotation (``TrackEval.mean_j_after_first`` follows the DAVIS protocol)."""
    truth = davis_annotations(folder)[:max_frames]
    engine.add_object(start_prompt(start, truth[0], seed))
    js, statuses, areas = [], [], []
    for res in engine.run(ImageFolderSource(folder)):
        if res.frame_index >= len(truth):
            break
        mask = res.objects[0].mask if res.objects else np.zeros_like(truth[0])
        js.append(jaccard(mask, truth[res.frame_index]))
        statuses.append(res.objects[0].status if res.objects else "lost")
        areas.append(int(mask.sum()))
    truth_area = np.array([int(t.sum()) for t in truth[:len(js)]], np.int64)
    return TrackEval(np.array(js), tuple(engine.stats.keyframes_used), engine.latency.to_json(), tuple(statuses),
                     np.array(areas, np.int64), truth_area)
