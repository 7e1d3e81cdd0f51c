"""Camera intrinsics: JSON I/O (ours and Open3D's), chessboard/ChArUco calibration, undistortion.

Two JSON formats are read by :func:`load_intrinsics`:

- ours: ``{"width", "height", "fx", "fy", "cx", "cy", "depth_scale_m", "dist": [...]}``
  (``depth_scale_m`` defaults to 0.001, ``dist`` to ``[]``; unknown keys are an error);
- Open3D's ``PinholeCameraIntrinsic``: ``{"width", "height", "intrinsic_matrix": [9 numbers]}``
  with the 3x3 matrix stored **column-major** ``[fx, 0, 0, 0, fy, 0, cx, cy, 1]``.

Images passed to :func:`calibrate` are file paths (read as greyscale) or numpy arrays (HxW uint8
grey or HxWx3 uint8 RGB, the engine's convention).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.types import CameraIntrinsics

REQUIRED = ("width", "height", "fx", "fy", "cx", "cy")
OPTIONAL = ("depth_scale_m", "dist")
OPEN3D_KEYS = ("width", "height", "intrinsic_matrix")
FORMATS = ("arsel", "open3d")


# ---------------------------------------------------------------------------- JSON I/O
def _number(source: str, key: str, value: Any, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{source}: field {key!r} must be a finite number, got {value!r}")
    if integer:
        if value != int(value):
            raise ValueError(f"{source}: field {key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _from_open3d(data: dict[str, Any], source: str, depth_scale_m: float) -> CameraIntrinsics:
    matrix = data["intrinsic_matrix"]
    if not isinstance(matrix, list) or len(matrix) != 9:
        raise ValueError(f"{source}: 'intrinsic_matrix' must be a list of 9 numbers (column-major 3x3)")
    m = [_number(source, f"intrinsic_matrix[{i}]", v) for i, v in enumerate(matrix)]
    if m[3] != 0 or m[1] != 0 or m[2] != 0 or m[5] != 0 or m[8] != 1:
        raise ValueError(
            f"{source}: 'intrinsic_matrix' must be column-major [fx, 0, 0, 0, fy, 0, cx, cy, 1] "
            f"(no skew), got {matrix}; a row-major matrix puts cx, cy at indices 2 and 5"
        )
    width, height = _number(source, "width", data["width"], True), _number(source, "height", data["height"], True)
    try:
        return CameraIntrinsics(width, height, m[0], m[4], m[6], m[7], depth_scale_m)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def intrinsics_from_dict(
    data: dict[str, Any], source: str = "intrinsics", depth_scale_m: float | None = None
) -> CameraIntrinsics:
    """Build :class:`CameraIntrinsics` from a parsed JSON object in either format.

    ``depth_scale_m`` overrides the file's value (Open3D's JSON carries none: default 0.001).
    ``ValueError`` names the file (``source``) and the missing, unknown or malformed field.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: intrinsics JSON must be an object, got {type(data).__name__}")
    if "intrinsic_matrix" in data:
        missing = [k for k in OPEN3D_KEYS if k not in data]
        if missing:
            need = ", ".join(OPEN3D_KEYS)
            raise ValueError(f"{source}: missing field {missing[0]!r} (Open3D intrinsics need {need})")
        return plausible(_from_open3d(data, source, 0.001 if depth_scale_m is None else depth_scale_m), source)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(
            f"{source}: missing field {missing[0]!r}; intrinsics JSON needs {', '.join(REQUIRED)} "
            f"(optional {', '.join(OPTIONAL)}), or Open3D's width, height, intrinsic_matrix"
        )
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"{source}: unknown field {unknown[0]!r}; allowed: {', '.join(REQUIRED + OPTIONAL)}")
    dist = data.get("dist", [])
    if not isinstance(dist, list) or len(dist) not in (0, 4, 5, 8, 12, 14):
        raise ValueError(f"{source}: 'dist' must be a list of 0, 4, 5, 8, 12 or 14 OpenCV coefficients, got {dist!r}")
    scale = data.get("depth_scale_m", 0.001) if depth_scale_m is None else depth_scale_m
    values = dict(
        width=_number(source, "width", data["width"], True),
        height=_number(source, "height", data["height"], True),
        fx=_number(source, "fx", data["fx"]), fy=_number(source, "fy", data["fy"]),
        cx=_number(source, "cx", data["cx"]), cy=_number(source, "cy", data["cy"]),
        depth_scale_m=_number(source, "depth_scale_m", scale),
        dist=tuple(_number(source, f"dist[{i}]", v) for i, v in enumerate(dist)),
    )  # fmt: skip
    try:
        intr = CameraIntrinsics(**values)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return plausible(intr, source)


def plausible(intr: CameraIntrinsics, source: str = "intrinsics") -> CameraIntrinsics:
    """``intr`` when its principal point lies near the image and its focal lengths fit its size
    (``engine.validate.intrinsics``), else ``engine.validate.InputError`` naming ``source``."""
    from engine.validate import intrinsics as check

    check(source, intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy)
    return intr


def load_intrinsics(path: str | Path, depth_scale_m: float | None = None) -> CameraIntrinsics:
    """Read intrinsics JSON (ours or Open3D's ``PinholeCameraIntrinsic``) from ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"intrinsics file not found: {path}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 JSON text file (byte {exc.start}); give an intrinsics JSON") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be intrinsics") from None
    return intrinsics_from_dict(data, str(path), depth_scale_m)


def intrinsics_to_dict(intrinsics: CameraIntrinsics, fmt: str = "arsel") -> dict[str, Any]:
    """JSON-ready dict in ``fmt`` "arsel" (ours) or "open3d" (drops depth scale and distortion)."""
    i = intrinsics
    if fmt == "arsel":
        return {
            "width": i.width, "height": i.height, "fx": i.fx, "fy": i.fy, "cx": i.cx, "cy": i.cy,
            "depth_scale_m": i.depth_scale_m, "dist": list(i.dist),
        }  # fmt: skip
    if fmt == "open3d":
        return {"width": i.width, "height": i.height, "intrinsic_matrix": [i.fx, 0, 0, 0, i.fy, 0, i.cx, i.cy, 1]}
    raise ValueError(f"unknown intrinsics format {fmt!r}; use one of {FORMATS}")


def save_intrinsics(path: str | Path, intrinsics: CameraIntrinsics, fmt: str = "arsel") -> Path:
    """Write intrinsics JSON in ``fmt`` ("arsel" or "open3d"); creates parent folders."""
    if fmt == "open3d" and any(intrinsics.dist):
        warnings.warn("Open3D intrinsics JSON has no distortion field; dist is not saved", stacklevel=2)
    data = intrinsics_to_dict(intrinsics, fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------- calibration
@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """Outcome of :func:`calibrate`.

    ``rms_px``: OpenCV's overall RMS reprojection error in pixels; ``per_image_error_px``: RMS
    reprojection error of each used image (key: path, or ``image[i]`` for arrays);
    ``rejected``: image -> reason for every image not used; ``image_hw``: (height, width).
    """

    intrinsics: CameraIntrinsics
    rms_px: float
    per_image_error_px: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    image_hw: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True)
class _Pattern:
    kind: str
    size: tuple[int, int]
    square_m: float
    board: Any = None  # cv2.aruco.CharucoBoard for "charuco"


def _gray(image: str | Path | np.ndarray) -> np.ndarray | None:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ValueError(f"image arrays must be HxW or HxWx3 uint8, got {image.dtype} {image.shape}")
        return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)


def _refine(gray: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Sub-pixel corner refinement; the window shrinks for small squares so it never spans two."""
    pts = corners.reshape(-1, 2)
    spacing = np.min(np.linalg.norm(pts[1:] - pts[:-1], axis=1)) if len(pts) > 1 else 22.0
    half = int(np.clip(spacing * 0.4, 2, 11))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 40, 1e-3)
    return cv2.cornerSubPix(gray, corners.astype(np.float32).reshape(-1, 1, 2), (half, half), (-1, -1), criteria)


def _detect(gray: np.ndarray, pat: _Pattern) -> tuple[np.ndarray, np.ndarray] | str:
    """(object points (N, 3) float32 metres, image points (N, 1, 2) float32) or a reject reason."""
    if pat.kind == "chessboard":
        flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK
        found, corners = cv2.findChessboardCorners(gray, pat.size, flags=flags)
        if not found:
            found, corners = cv2.findChessboardCornersSB(gray, pat.size, flags=cv2.CALIB_CB_NORMALIZE_IMAGE)
        if not found:
            return f"chessboard with {pat.size[0]}x{pat.size[1]} inner corners not found (size counts inner corners)"
        cols, rows = pat.size
        grid = np.zeros((cols * rows, 3), np.float32)
        grid[:, :2] = np.mgrid[0:cols, 0:rows].T.reshape(-1, 2) * pat.square_m
        return grid, _refine(gray, corners)
    ch_corners, ch_ids, _, _ = cv2.aruco.CharucoDetector(pat.board).detectBoard(gray)
    n = 0 if ch_ids is None else len(ch_ids)
    if n < 6:
        return f"ChArUco board {pat.size[0]}x{pat.size[1]} squares: {n} corners found, need at least 6"
    obj, img = pat.board.matchImagePoints(_refine(gray, ch_corners), ch_ids)
    return obj.reshape(-1, 3).astype(np.float32), img.reshape(-1, 1, 2).astype(np.float32)


def _pattern(pattern: str, size: tuple[int, int], square_m: float, marker_m: float | None, dictionary: str) -> _Pattern:
    if square_m <= 0 or len(size) != 2 or min(size) < 2:
        raise ValueError(f"need square_m > 0 and size (cols, rows) >= 2, got {square_m}, {size}")
    if pattern == "chessboard":
        return _Pattern("chessboard", (int(size[0]), int(size[1])), square_m)
    if pattern != "charuco":
        raise ValueError(f"unknown pattern {pattern!r}; use 'chessboard' or 'charuco'")
    if not hasattr(cv2, "aruco") or not hasattr(cv2.aruco, "CharucoDetector"):
        raise ValueError("pattern='charuco' needs OpenCV >= 4.7 with the aruco module (opencv-contrib or opencv>=4.7)")
    if not hasattr(cv2.aruco, dictionary):
        raise ValueError(f"unknown ArUco dictionary {dictionary!r}; e.g. 'DICT_4X4_50', 'DICT_5X5_100'")
    marker = 0.75 * square_m if marker_m is None else marker_m
    if not 0 < marker < square_m:
        raise ValueError(f"marker_m must be in (0, square_m={square_m}), got {marker}")
    aruco_dict = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, dictionary))
    board = cv2.aruco.CharucoBoard((int(size[0]), int(size[1])), square_m, marker, aruco_dict)
    return _Pattern("charuco", (int(size[0]), int(size[1])), square_m, board)


def calibrate(
    images: Sequence[str | Path | np.ndarray],
    pattern: str = "chessboard",
    size: tuple[int, int] = (9, 6),
    square_m: float = 0.025,
    *,
    marker_m: float | None = None,
    dictionary: str = "DICT_4X4_50",
    depth_scale_m: float = 0.001,
    flags: int = 0,
    min_images: int = 3,
    max_image_error_px: float | None = None,
) -> CalibrationResult:
    """Calibrate a pinhole + distortion camera from views of a planar target.

    Args:
        images: file paths or uint8 arrays (HxW grey or HxWx3 RGB), all the same size.
        pattern: "chessboard" (``size`` = inner corners (cols, rows), e.g. (9, 6) for a 10x7
            board) or "charuco" (``size`` = squares (cols, rows); needs ``cv2.aruco``).
        square_m: square side in metres (scales extrinsics only; intrinsics do not depend on it).
        marker_m, dictionary: ChArUco marker side (default 0.75 * square) and ArUco dictionary.
        depth_scale_m: stored in the returned intrinsics.
        flags: ``cv2.calibrateCamera`` flags (e.g. ``cv2.CALIB_FIX_K3``).
        min_images: fewer usable views than this is an error.
        max_image_error_px: views whose RMS reprojection error exceeds this are rejected and the
            camera is calibrated again without them (one pass).

    Returns:
        :class:`CalibrationResult`; unusable images are listed in ``rejected`` with a reason.

    Raises:
        ValueError: bad pattern arguments, or fewer than ``min_images`` usable views.
    """
    pat = _pattern(pattern, size, square_m, marker_m, dictionary)
    views: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rejected: dict[str, str] = {}
    image_hw: tuple[int, int] | None = None
    for i, image in enumerate(images):
        name = f"image[{i}]" if isinstance(image, np.ndarray) else str(image)
        gray = _gray(image)
        if gray is None:
            rejected[name] = "cannot be read as an image (missing file or unsupported format)"
            continue
        if image_hw is not None and gray.shape != image_hw:
            got, first = f"{gray.shape[1]}x{gray.shape[0]}", f"{image_hw[1]}x{image_hw[0]}"
            rejected[name] = f"size {got} differs from the first image's {first}"
            continue
        found = _detect(gray, pat)
        if isinstance(found, str):
            rejected[name] = found
            continue
        image_hw = image_hw or gray.shape
        views[name] = found
    result = _solve(views, rejected, image_hw, depth_scale_m, flags, min_images)
    if max_image_error_px is not None:
        worse = {k: e for k, e in result.per_image_error_px.items() if e > max_image_error_px}
        if worse:
            for name, err in worse.items():
                rejected[name] = f"reprojection error {err:.2f} px > max_image_error_px={max_image_error_px}"
                del views[name]
            result = _solve(views, rejected, image_hw, depth_scale_m, flags, min_images)
    return result


def _solve(
    views: dict[str, tuple[np.ndarray, np.ndarray]],
    rejected: dict[str, str],
    image_hw: tuple[int, int] | None,
    depth_scale_m: float,
    flags: int,
    min_images: int,
) -> CalibrationResult:
    if len(views) < max(min_images, 1) or image_hw is None:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(rejected.items())[:5])
        raise ValueError(
            f"only {len(views)} usable calibration views, need {min_images}; "
            f"check pattern/size and image quality ({reasons or 'no images given'})"
        )
    obj = [v[0] for v in views.values()]
    img = [v[1] for v in views.values()]
    h, w = image_hw
    rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(obj, img, (w, h), None, None, flags=flags)
    per_image = {}
    for name, o, p, r, t in zip(views, obj, img, rvecs, tvecs):
        proj, _ = cv2.projectPoints(o, r, t, K, dist)
        per_image[name] = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - p.reshape(-1, 2)) ** 2, axis=1))))
    intr = CameraIntrinsics(
        w, h, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), depth_scale_m,
        tuple(float(d) for d in dist.reshape(-1)),
    )  # fmt: skip
    return CalibrationResult(intr, float(rms), per_image, dict(rejected), (h, w))


def undistort(image: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    """Remove lens distortion from an HxW or HxWxC image; the result keeps the same K.

    The returned image is described by ``dataclasses.replace(intrinsics, dist=())``. An image
    whose size differs from the intrinsics is an error (resize first, or load the right file).
    """
    if image.shape[:2] != (intrinsics.height, intrinsics.width):
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]} but the intrinsics are "
            f"{intrinsics.width}x{intrinsics.height}; undistort the full-resolution image"
        )
    if not any(intrinsics.dist):
        return image.copy()
    return cv2.undistort(image, intrinsics.K, np.asarray(intrinsics.dist, dtype=np.float64))
