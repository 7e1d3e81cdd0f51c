"""Image reading/writing at the edges of the engine (files are BGR for OpenCV; the engine is RGB)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engine.validate import image_file, image_hw

SAMPLES = {"cat": "chelsea", "coffee": "coffee", "astronaut": "astronaut"}

# Distinct colours (RGB) for object ids 1, 2, ...
PALETTE = np.array(
    [[30, 144, 255], [255, 64, 64], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209], [255, 140, 0]],
    dtype=np.uint8,
)


def load_rgb(source: str | Path) -> np.ndarray:
    """Read an image file, or ``sample:NAME`` from scikit-image's bundled data, as HxWx3 uint8 RGB.

    Raises ``FileNotFoundError``, or ``engine.validate.InputError`` for an empty, truncated or
    undecodable file and for a size the models cannot take (see ``engine.validate.image_hw``).
    """
    text = str(source)
    if text.startswith("sample:"):
        name = text.split(":", 1)[1]
        if name not in SAMPLES:
            raise ValueError(f"unknown sample {name!r}; choose one of {', '.join('sample:' + k for k in SAMPLES)}")
        from skimage import data

        return np.ascontiguousarray(getattr(data, SAMPLES[name])()[..., :3])
    path = image_file(text)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode {path} as an image (corrupt file or unsupported format)")
    image_hw(f"image {path}", bgr.shape[:2])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def save_rgb(path: str | Path, rgb: np.ndarray) -> None:
    """Write an HxWx3 uint8 RGB image (format from the extension); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def save_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a bool mask as an 8-bit PNG with values 0/255, or an id map (uint8) unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = (mask.astype(np.uint8) * 255) if mask.dtype == np.bool_ else mask.astype(np.uint8)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def draw_overlay(
    rgb: np.ndarray,
    masks: list[np.ndarray],
    points_xy: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes_xyxy: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Tint each bool ``HxW`` mask in its own colour, outline it, and draw the prompts."""
    out = rgb.astype(np.float32)
    for i, mask in enumerate(masks):
        colour = PALETTE[i % len(PALETTE)].astype(np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    out = out.astype(np.uint8)
    for i, mask in enumerate(masks):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in PALETTE[i % len(PALETTE)]), 2)
    if boxes_xyxy is not None:
        for box in np.asarray(boxes_xyxy).reshape(-1, 4):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), 2)
    if points_xy is not None:
        pts = np.asarray(points_xy).reshape(-1, 2)
        labs = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
        for (x, y), lab in zip(pts, labs):
            colour = (0, 255, 0) if lab == 1 else (255, 0, 0)
            cv2.drawMarker(out, (int(round(x)), int(round(y))), colour, cv2.MARKER_STAR, 18, 2)
    return out
