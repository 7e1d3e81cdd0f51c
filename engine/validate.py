"""Validation of user input at the boundary: numbers and timestamps, prompts against the frame,
output paths, image files, bytes and sizes, depth format and units, camera intrinsics, poses,
checkpoint weights, JSON outputs. One implementation per rule: the CLI verbs and the stream server
(``engine.serve.protocol``) call the same functions.

One error type, :class:`InputError` (a ``ValueError``), whose message starts with the input it is
about (a flag such as ``--box``, a file, a field) and says how to fix it; :class:`InputTooLarge`
marks a size limit. The CLI turns it into exit status 2; the stream server into a protocol error
(``too_large`` or ``bad_frame``/``bad_message``). numpy only: every layer may import it.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

MIN_IMAGE_SIDE_PX = 8
MAX_IMAGE_SIDE_PX = 16384
MAX_IMAGE_ASPECT = 20.0  # longest side / shortest side
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
PRINCIPAL_MARGIN = 0.25  # the principal point may lie this fraction of the size outside the image
FOCAL_PER_WIDTH = (0.04, 100.0)  # fx / width: fields of view from about 170 down to 0.6 degrees
DEPTH_MEDIAN_M = (0.02, 1000.0)  # a median depth outside this means the units are wrong


class InputError(ValueError):
    """Bad user input; the message names the input and the fix."""


class InputTooLarge(InputError):
    """Input over a size limit (the stream server answers it with ``too_large``, not ``bad_frame``)."""


# ---------------------------------------------------------------------------- numbers
def number(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, integer: bool = False, hint: str = "") -> float:
    """``value`` as a finite float (or int) within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    try:
        v = float(value)
    except OverflowError:
        raise InputError(f"{name} must be a finite number, got an integer of {len(str(value))} digits{hint}") from None
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}{hint}") from None
    if not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, got {value!r}{hint}")
    if integer and v != int(v):
        raise InputError(f"{name} must be a whole number, got {value!r}{hint}")
    below = lo is not None and (v <= lo if lo_open else v < lo)
    if below or (hi is not None and v > hi):
        left = "(" if lo_open else "["
        raise InputError(f"{name} must be in {left}{_g(lo, '-inf')}, {_g(hi, 'inf')}], got {value!r}{hint}")
    return int(v) if integer else v


def optional_number(name: str, value: Any, **kw: Any) -> float | None:
    """:func:`number` of ``value``, or None when it is None (an optional flag not given)."""
    return None if value is None else number(name, value, **kw)


def finite(name: str, values: Iterable[Any]) -> list[float]:
    """``values`` as floats, each finite (no NaN, no infinity)."""
    vals = list(values)
    try:
        out = [float(v) for v in vals]
    except OverflowError:
        raise InputError(f"{name} must be finite numbers, got an integer too large for a float") from None
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numbers, got {vals}") from None
    if not all(math.isfinite(v) for v in out):
        raise InputError(f"{name} must be finite numbers (no NaN/Infinity), got {vals}")
    return out


INT64_MAX = 2**63 - 1


def timestamp_ns(name: str, value: Any) -> int:
    """An integer timestamp in nanoseconds that fits int64: ``0 <= value < 2**63``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer (ns), got {value!r}")
    if not 0 <= int(value) <= INT64_MAX:
        raise InputError(f"{name} {value} is outside 0..{INT64_MAX} ns (int64); send nanoseconds on a monotonic clock")
    return int(value)


def _g(v: float | None, default: str) -> str:
    return default if v is None else f"{v:g}"


# ---------------------------------------------------------------------------- prompts
def _wh(frame_hw: tuple[int, int]) -> str:
    return f"{frame_hw[1]}x{frame_hw[0]}"


def box_xyxy(name: str, box: Any, frame_hw: tuple[int, int] | None, *, inside: bool = False) -> np.ndarray:
    """A ``(4,)`` float32 box ``x0, y0, x1, y1`` (pixels): finite, ``x0 < x1`` and ``y0 < y1``,
    and overlapping the ``frame_hw`` frame by some area (it may stick out), or with ``inside``
    (the stream protocol's rule) lying within ``[0, W] x [0, H]``."""
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.shape != (4,):
        raise InputError(f"{name} needs 4 values X0,Y0,X1,Y1, got {b.size}")
    if not np.all(np.isfinite(b)):
        raise InputError(f"{name} {b.tolist()} must be finite numbers (pixels)")
    x0, y0, x1, y1 = b.tolist()
    if x0 == x1 or y0 == y1:
        raise InputError(f"{name} {b.tolist()} has zero area; give corners X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1")
    if x0 > x1 or y0 > y1:
        raise InputError(f"{name} {b.tolist()}: corners must be top-left then bottom-right (X0 < X1 and Y0 < Y1)")
    if frame_hw is not None:
        h, w = frame_hw
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise InputError(f"{name} {b.tolist()} lies outside the {_wh(frame_hw)} image "
                             "(pixels, x right, y down, origin top-left)")
        if inside and (x0 < 0 or y0 < 0 or x1 > w or y1 > h):
            raise InputError(f"{name} {b.tolist()} sticks out of the {_wh(frame_hw)} image; "
                             f"clamp it to [0, {w}] x [0, {h}]")
    return b.astype(np.float32)


def points_xy(name: str, points: Any, frame_hw: tuple[int, int] | None) -> np.ndarray:
    """``(N, 2)`` float32 points (pixels): finite and inside the ``frame_hw`` frame (``[0, W) x [0, H)``)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    bad = ~np.all(np.isfinite(p), axis=1)
    if bad.any():
        raise InputError(f"{name} {p[bad][0].tolist()} must be finite numbers (pixels)")
    if frame_hw is not None:
        h, w = frame_hw
        out = (p[:, 0] < 0) | (p[:, 0] >= w) | (p[:, 1] < 0) | (p[:, 1] >= h)
        if out.any():
            raise InputError(f"{name} {p[out][0].tolist()} lies outside the {_wh(frame_hw)} image "
                             "(pixels, x right, y down, origin top-left)")
    return p.astype(np.float32)


def point_labels(name: str, labels: Any) -> np.ndarray:
    """``(N,)`` float32 point labels, each 1 (foreground) or 0 (background)."""
    lab = np.asarray(labels, dtype=np.float64).reshape(-1)
    if not np.all(np.isin(lab, (0.0, 1.0))):
        bad = lab[~np.isin(lab, (0.0, 1.0))][0]
        raise InputError(f"{name} must be 1 (foreground) or 0 (background), got {bad:g}")
    return lab.astype(np.float32)


# ---------------------------------------------------------------------------- paths
def _parent_ok(name: str, path: Path) -> None:
    """The nearest existing ancestor of ``path`` is a writable folder."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{name} {path}: {parent} is not a folder; give a path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{name} {path}: folder {parent} is not writable; choose another place")


def output_file(name: str, path: str | Path | None, suffixes: Iterable[str] | None = None) -> Path | None:
    """Check an output file name: a known suffix, not an existing folder, a writable parent."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{name} {p} is a folder; give a file name")
    allowed = tuple(suffixes) if suffixes is not None else None
    if allowed is not None and p.suffix.lower() not in allowed:
        raise InputError(f"{name} {p}: use a {' / '.join(allowed)} file name")
    _parent_ok(name, p)
    return p


def output_dir(name: str, path: str | Path | None) -> Path | None:
    """Check an output folder: not an existing file, inside a writable folder."""
    if path is None:
        return None
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{name} {p} is not a folder (a file of that name exists); give a folder")
    _parent_ok(name, p)
    return p


# ---------------------------------------------------------------------------- images
_MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8"}


def _truncated(head: bytes, tail: bytes, data: Callable[[], Any]) -> bool:
    """A PNG without its IEND chunk or a JPEG without its end marker that PIL cannot load;
    ``head``/``tail``: the first 16 / last 32 bytes, ``data()``: a file or stream for PIL."""
    if head.startswith(_MAGIC["png"]):
        return b"IEND" not in tail
    if head.startswith(_MAGIC["jpeg"]) and b"\xff\xd9" not in tail:  # no end marker: decode to be sure
        try:
            from PIL import Image
        except ImportError:
            return False
        try:
            with Image.open(data()) as im:
                im.load()
        except OSError:
            return True
    return False


def image_file(path: str | Path, what: str = "image") -> Path:
    """An existing, non-empty image file that is not cut short (PNG and JPEG end markers)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder; give an image file")
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    size = p.stat().st_size
    if size == 0:
        raise InputError(f"{what} {p} is empty (0 bytes); write or copy it again")
    with p.open("rb") as fh:
        head = fh.read(16)
        fh.seek(max(0, size - 32))
        tail = fh.read(32)
    if _truncated(head, tail, lambda: p):
        raise InputError(f"{what} {p} is truncated (its end marker is missing); copy or download it again")
    return p


def image_bytes(name: str, data: bytes, encoding: str) -> None:
    """An in-memory ``encoding`` (``"png"`` or ``"jpeg"``) image: the right magic bytes, not cut short."""
    if not data.startswith(_MAGIC[encoding]):
        raise InputError(f"{name} bytes are not a {encoding.upper()} (wrong magic bytes); send the {encoding} file's bytes")
    if _truncated(data[:16], data[-32:], lambda: io.BytesIO(data)):
        raise InputError(f"{name} {encoding.upper()} is truncated (its end marker is missing); send the whole image")


def image_hw(name: str, hw: tuple[int, ...], max_side: int = MAX_IMAGE_SIDE_PX) -> None:
    """A frame size the models can take: each side >= 8 px and <= ``max_side`` px (else
    :class:`InputTooLarge`), aspect ratio <= 20."""
    h, w = int(hw[0]), int(hw[1])
    if max(h, w) > max_side:
        raise InputTooLarge(f"{name} is {w}x{h} px; each side must be at most {max_side} px, scale it down")
    if max(h, w) / max(1, min(h, w)) > MAX_IMAGE_ASPECT:
        raise InputError(f"{name} is {w}x{h} px, an aspect ratio over {MAX_IMAGE_ASPECT:g}:1; crop it first")
    if min(h, w) < MIN_IMAGE_SIDE_PX:
        raise InputError(f"{name} is {w}x{h} px; each side must be {MIN_IMAGE_SIDE_PX}..{max_side} px")


def same_hw(name: str, hw: tuple[int, ...], other_is: str, other_hw: tuple[int, ...], fix: str) -> None:
    """``name``'s size ``hw`` equals ``other_hw`` (``(H, W, ...)``, first two compared); ``other_is``
    names the other with its verb ("the depth is", "the intrinsics are"), ``fix`` says what to do."""
    if tuple(hw[:2]) != tuple(other_hw[:2]):
        raise InputError(f"{name} is {_wh(hw)} but {other_is} {_wh(other_hw)}; {fix}")


# ---------------------------------------------------------------------------- depth and camera
def depth_array(name: str, depth_raw: np.ndarray) -> None:
    """A raw depth image: one channel, 16-bit or float (8-bit is a visualisation, not depth)."""
    if depth_raw.ndim != 2:
        raise InputError(f"{name} has {depth_raw.shape[2] if depth_raw.ndim == 3 else depth_raw.ndim} channels; "
                         "depth must be one channel (16-bit raw units, or float)")
    if depth_raw.dtype == np.uint8:
        raise InputError(f"{name} is 8-bit (a visualisation?); use the 16-bit raw depth")


DEPTH_SCALE_FIX = "pass --depth-scale-m 1 for metres, 0.001 for millimetres (metres per raw unit)"


def depth_units(name: str, depth_raw: np.ndarray, depth_scale_m: float, fix: str = DEPTH_SCALE_FIX) -> None:
    """Refuse a depth image whose units do not match ``depth_scale_m`` (metres per raw unit).

    A float image whose median valid depth is under 20 (metres, as most float depth is) read
    at the default 0.001 m/unit would put the object millimetres from the camera; any image
    whose median lands outside 2 cm .. 1 km is refused the same way; ``fix`` says how to give
    the right scale. Large images are sampled every other pixel.
    """
    if depth_raw.ndim == 2 and depth_raw.size > 1 << 18:
        depth_raw = depth_raw[::2, ::2]
    valid = depth_raw[np.isfinite(depth_raw) & (depth_raw > 0)] if depth_raw.size else depth_raw
    if valid.size == 0:
        return
    med = float(np.median(valid))
    med_m = med * depth_scale_m
    lo, hi = DEPTH_MEDIAN_M
    floating = np.issubdtype(depth_raw.dtype, np.floating)
    if floating and med < 20 and depth_scale_m != 1.0:
        raise InputError(f"{name} is a float image with median depth {med:g}, which looks like metres; it would be "
                         f"read as {med_m:g} m; {fix}")
    if not lo <= med_m <= hi:
        per_m = 1.0 / depth_scale_m
        raise InputError(f"{name}: median depth {med:g} raw units at {per_m:g} units per metre is {med_m:g} m, "
                         f"outside {lo:g}..{hi:g} m; {fix}")


def intrinsics(name: str, width: float, height: float, fx: float, fy: float, cx: float, cy: float) -> None:
    """Plausible pinhole intrinsics: principal point near the image, focal lengths for its size."""
    for key, v in (("width", width), ("height", height), ("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)):
        if not math.isfinite(v):
            raise InputError(f"{name}: {key} must be a finite number, got {v!r}")
    mx, my = PRINCIPAL_MARGIN * width, PRINCIPAL_MARGIN * height
    if not (-mx <= cx <= width + mx and -my <= cy <= height + my):
        raise InputError(f"{name}: principal point ({cx:g}, {cy:g}) px is far outside the {width:g}x{height:g} image; "
                         "cx, cy are pixels near the image centre (check the units and the image size)")
    lo, hi = FOCAL_PER_WIDTH
    for key, f in (("fx", fx), ("fy", fy)):
        if not lo * width <= f <= hi * width:
            raise InputError(f"{name}: focal length {key}={f:g} px is implausible for a {width:g} px wide image "
                             f"(expected {lo * width:g}..{hi * width:g} px); focal lengths are in pixels")


def pose(name: str, matrix: Any) -> np.ndarray:
    """A finite 4x4 rigid camera-to-world pose (float64): last row ``0 0 0 1``, orthonormal rotation."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a 4x4 matrix of finite numbers") from None
    if m.shape != (4, 4):
        raise InputError(f"{name} must be a 4x4 matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError(f"{name} is not finite (it holds NaN or inf); fix or drop that pose")
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise InputError(f"{name}: the last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    rot = m[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
        raise InputError(f"{name} is not a rigid transform (its rotation is not orthonormal, or it mirrors); "
                         "give a row-major camera-to-world pose in metres")
    return m


# ---------------------------------------------------------------------------- weights
def nonfinite_weight(state: Mapping[str, Any]) -> str | None:
    """Name of the first floating-point tensor in ``state`` holding NaN or inf, else None.

    Works on torch tensors and numpy arrays alike (duck-typed: no torch import here).
    """
    for key, value in state.items():
        if hasattr(value, "is_floating_point"):  # torch.Tensor
            if value.is_floating_point() and not bool(value.isfinite().all()):
                return key
        elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            if not np.all(np.isfinite(value)):
                return key
    return None


# ---------------------------------------------------------------------------- JSON
def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, numpy scalars as Python."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON (no bare NaN/Infinity): non-finite numbers become ``null``."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n"
