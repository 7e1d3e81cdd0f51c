"""Gaze calibration: map eye-tracker coordinates to scene-camera pixels from target pairs.

Two models, both fitted robustly (calibration sessions contain pairs where the wearer looked
away):

- ``"homography"``: a plane-to-plane map, ``cv2.findHomography`` with RANSAC; 4+ pairs.
- ``"poly2"``: a second-order polynomial per output axis,
  ``scene = c0 + c1 u + c2 v + c3 u^2 + c4 u v + c5 v^2`` on normalised tracker coordinates
  ``u = (x - mx) / s, v = (y - my) / s``; least squares inside a seeded RANSAC loop; 6+ pairs.
  It also absorbs mild lens distortion and parallax that a homography cannot.

Residuals are over the RANSAC inliers, in scene pixels, and in degrees when the scene camera's
focal lengths are given: ``deg = atan(hypot(dx / fx, dy / fy))`` (exact ray angles when ``cx, cy``
are given too).

Calibration CSV (:func:`calibrate_gaze_csv`): header ``tracker_x,tracker_y,scene_x,scene_y``
(any order), then one finite-number row per pair; ``#`` comment lines and blank lines are skipped.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

GazeModel = Literal["homography", "poly2"]
MODELS = ("homography", "poly2")
MIN_PAIRS = {"homography": 4, "poly2": 6}
CSV_COLUMNS = ("tracker_x", "tracker_y", "scene_x", "scene_y")
FORMAT = "arsel-gaze-mapping"
_STATS = ("rms_px", "median_px", "max_px", "rms_deg", "median_deg", "max_deg")


@dataclass(frozen=True, slots=True)
class GazeMapping:
    """A fitted tracker -> scene-camera mapping.

    ``matrix``: 3x3 float64 homography, or ``(2, 6)`` float64 polynomial coefficients (rows:
    scene x, scene y; columns ``1, u, v, u^2, uv, v^2``). ``norm``: ``(mx, my, s)`` of the tracker
    normalisation (poly2; ``(0, 0, 1)`` for a homography). Residual statistics are over the
    ``num_inliers`` of ``num_pairs`` pairs; ``*_deg`` are None without focal lengths.
    """

    model: str
    matrix: np.ndarray
    norm: tuple[float, float, float] = (0.0, 0.0, 1.0)
    num_pairs: int = 0
    num_inliers: int = 0
    rms_px: float = 0.0
    median_px: float = 0.0
    max_px: float = 0.0
    rms_deg: float | None = None
    median_deg: float | None = None
    max_deg: float | None = None

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown gaze mapping model {self.model!r}; choose one of {', '.join(MODELS)}")
        m = np.asarray(self.matrix, dtype=np.float64)
        want = (3, 3) if self.model == "homography" else (2, 6)
        if m.shape != want or not np.all(np.isfinite(m)):
            raise ValueError(f"{self.model} matrix must be a finite {want[0]}x{want[1]} array, got shape {m.shape}")
        if self.norm[2] <= 0:
            raise ValueError(f"norm scale must be > 0, got {self.norm}")
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "norm", tuple(float(v) for v in self.norm))

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """Map tracker points ``(N, 2)`` to scene pixels ``(N, 2)`` float64."""
        pts = _as_points("xy", xy)
        if self.model == "homography":
            return _apply_h(self.matrix, pts)
        return _poly_terms(pts, self.norm) @ self.matrix.T

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "version": 1, "model": self.model}
        out.update(matrix=self.matrix.tolist(), norm=list(self.norm))
        out.update(num_pairs=self.num_pairs, num_inliers=self.num_inliers)
        out.update({k: getattr(self, k) for k in _STATS})
        return out

    def save(self, path: str | Path) -> None:
        """Write the mapping as JSON (``{"format": "arsel-gaze-mapping", "version": 1, ...}``)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> GazeMapping:
        """Read a mapping written by :meth:`save`; ``ValueError`` names the file and the bad field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a gaze mapping (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != 1:
            raise ValueError(f"{path}: unsupported gaze mapping version {data.get('version')!r} (this arsel reads 1)")
        known = {"format", "version", "model", "matrix", "norm", "num_pairs", "num_inliers", *_STATS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}")
        try:
            fields = {k: data[k] for k in known - {"format", "version"} if k in data}
            fields["matrix"] = np.asarray(data["matrix"], dtype=np.float64)
            fields["norm"] = tuple(data.get("norm", (0.0, 0.0, 1.0)))
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad gaze mapping ({exc})") from None


def _as_points(name: str, xy: Any) -> np.ndarray:
    pts = np.asarray(xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"{name} must have shape Nx2, got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{name} contains non-finite values")
    return pts


def _apply_h(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    hom = pts @ matrix[:, :2].T + matrix[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return hom[:, :2] / hom[:, 2:3]


def _poly_terms(pts: np.ndarray, norm: tuple[float, float, float]) -> np.ndarray:
    u = (pts[:, 0] - norm[0]) / norm[2]
    v = (pts[:, 1] - norm[1]) / norm[2]
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)


def _fit_poly(pts: np.ndarray, dst: np.ndarray, norm: tuple[float, float, float]) -> np.ndarray | None:
    terms = _poly_terms(pts, norm)
    coef, _, rank, _ = np.linalg.lstsq(terms, dst, rcond=None)
    return coef.T if rank == 6 else None


def _ransac_poly(
    src: np.ndarray, dst: np.ndarray, ransac_px: float, iterations: int, seed: int
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    mx, my = src.mean(axis=0)
    scale = float(np.sqrt(((src - (mx, my)) ** 2).sum(axis=1).mean())) or 1.0
    norm = (float(mx), float(my), scale)
    rng = np.random.default_rng(seed)
    best = np.zeros(len(src), bool)
    needed, done = iterations, 0
    while done < needed:
        done += 1
        pick = rng.choice(len(src), 6, replace=False)
        coef = _fit_poly(src[pick], dst[pick], norm)
        if coef is None:
            continue
        inliers = np.linalg.norm(_poly_terms(src, norm) @ coef.T - dst, axis=1) < ransac_px
        if inliers.sum() > best.sum():
            best = inliers
            # adaptive stop: enough draws to have hit an all-inlier sample with 99.9 % confidence
            all_in = min((inliers.mean()) ** 6, 1.0 - 1e-12)
            needed = min(iterations, math.ceil(math.log(1e-3) / math.log1p(-all_in)))
    for _ in range(3):  # refit on the consensus, then re-select with the refined model
        coef = _fit_poly(src[best], dst[best], norm) if best.sum() >= 6 else None
        if coef is None:
            raise ValueError(
                "poly2 calibration is degenerate (targets on a line or a conic?); spread targets over the view"
            )
        best = np.linalg.norm(_poly_terms(src, norm) @ coef.T - dst, axis=1) < ransac_px
    return coef, norm, best


def _angles_deg(
    pred: np.ndarray, true: np.ndarray, fx: float, fy: float, cx: float | None, cy: float | None
) -> np.ndarray:
    if cx is None or cy is None:
        d = (pred - true) / (fx, fy)
        return np.degrees(np.arctan(np.hypot(d[:, 0], d[:, 1])))

    def rays(p: np.ndarray) -> np.ndarray:
        r = np.stack([(p[:, 0] - cx) / fx, (p[:, 1] - cy) / fy, np.ones(len(p))], axis=1)
        return r / np.linalg.norm(r, axis=1, keepdims=True)

    cos = np.clip((rays(pred) * rays(true)).sum(axis=1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def fit_gaze_mapping(
    tracker_xy: np.ndarray,
    scene_xy: np.ndarray,
    model: GazeModel = "homography",
    ransac_px: float = 5.0,
    iterations: int = 1000,
    seed: int = 0,
    fx: float | None = None,
    fy: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
) -> GazeMapping:
    """Fit ``model`` to pairs ``tracker_xy`` ``(N, 2)`` -> ``scene_xy`` ``(N, 2)`` (scene pixels).

    ``ransac_px``: inlier threshold in scene pixels. ``iterations``/``seed``: most RANSAC draws
    (fewer once 99.9 % sure of an all-inlier draw) and their seed (poly2 uses numpy's generator;
    the homography seeds OpenCV's global RNG with ``seed``). ``fx, fy`` (and optionally ``cx, cy``),
    in scene pixels, add residuals in degrees.
    """
    if model not in MODELS:
        raise ValueError(f"unknown gaze mapping model {model!r}; choose one of {', '.join(MODELS)}")
    src, dst = _as_points("tracker_xy", tracker_xy), _as_points("scene_xy", scene_xy)
    if len(src) != len(dst):
        raise ValueError(f"tracker_xy and scene_xy must pair up, got {len(src)} and {len(dst)} points")
    if len(src) < MIN_PAIRS[model]:
        raise ValueError(f"{model} needs at least {MIN_PAIRS[model]} pairs, got {len(src)}; record more targets")
    if ransac_px <= 0 or iterations < 1 or (fx is None) != (fy is None) or (fx is not None and min(fx, fy or 0) <= 0):
        raise ValueError("need ransac_px > 0, iterations >= 1, and fx, fy both given and > 0 (or neither)")
    if model == "homography":
        cv2.setRNGSeed(seed)
        matrix, mask = cv2.findHomography(src, dst, cv2.RANSAC, ransac_px, maxIters=iterations, confidence=0.999)
        if matrix is None:
            raise ValueError(
                "homography calibration failed (targets collinear or too few inliers); spread targets over the view"
            )
        inliers = mask.reshape(-1).astype(bool)
        mapping = GazeMapping("homography", matrix / matrix[2, 2])
    else:
        coef, norm, inliers = _ransac_poly(src, dst, ransac_px, iterations, seed)
        mapping = GazeMapping("poly2", coef, norm)
    pred = mapping.apply(src[inliers])
    err = np.linalg.norm(pred - dst[inliers], axis=1)
    stats: dict[str, Any] = {"rms_px": float(np.sqrt(np.mean(err**2))), "median_px": float(np.median(err))}
    stats["max_px"] = float(err.max())
    if fx is not None and fy is not None:
        deg = _angles_deg(pred, dst[inliers], fx, fy, cx, cy)
        stats.update(rms_deg=float(np.sqrt(np.mean(deg**2))), median_deg=float(np.median(deg)))
        stats["max_deg"] = float(deg.max())
    return GazeMapping(mapping.model, mapping.matrix, mapping.norm, len(src), int(inliers.sum()), **stats)


def read_calibration_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(tracker_xy, scene_xy)``, each ``(N, 2)`` float64, from a calibration CSV (module docstring).

    ``ValueError`` names the file, the line number and the problem.
    """
    path = Path(path)
    order: list[int] | None = None
    rows: list[list[float]] = []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {exc.start}); the calibration CSV is text with the "
                         f"header {','.join(CSV_COLUMNS)}") from None
    if "\x00" in text:
        raise ValueError(f"{path}: holds NUL bytes, so it is not a text CSV (header {','.join(CSV_COLUMNS)})")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = [f.strip() for f in next(csv.reader([line]))]
        except csv.Error as exc:
            raise ValueError(f"{path}:{lineno}: not CSV ({exc})") from None
        if order is None:
            if sorted(fields) != sorted(CSV_COLUMNS):
                got = ",".join(fields)
                raise ValueError(f"{path}:{lineno}: header must be {','.join(CSV_COLUMNS)}, got {got!r}")
            order = [fields.index(c) for c in CSV_COLUMNS]
            continue
        if len(fields) != len(CSV_COLUMNS):
            raise ValueError(
                f"{path}:{lineno}: expected {len(CSV_COLUMNS)} fields ({','.join(CSV_COLUMNS)}), got {len(fields)}"
            )
        values = []
        for name, i in zip(CSV_COLUMNS, order):
            try:
                value = float(fields[i])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: {name} must be a number, got {fields[i]!r}") from None
            if not math.isfinite(value):
                raise ValueError(
                    f"{path}:{lineno}: {name} must be finite, got {fields[i]!r}; delete the row of a missed target"
                )
            values.append(value)
        rows.append(values)
    if order is None:
        raise ValueError(f"{path}: no header found; the first line must be {','.join(CSV_COLUMNS)}")
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return arr[:, :2], arr[:, 2:]


def calibrate_gaze_csv(
    samples_csv: str | Path, out_json: str | Path, model: GazeModel = "homography", **fit_kwargs: Any
) -> GazeMapping:
    """Read pairs from ``samples_csv``, fit ``model`` (:func:`fit_gaze_mapping` keyword arguments
    pass through), write the mapping to ``out_json`` and return it."""
    tracker_xy, scene_xy = read_calibration_csv(samples_csv)
    try:
        mapping = fit_gaze_mapping(tracker_xy, scene_xy, model, **fit_kwargs)
    except ValueError as exc:
        raise ValueError(f"{samples_csv}: {exc}") from None
    mapping.save(out_json)
    return mapping
