"""Validation of user prompts and their conversion to the decoder's ONNX-style arrays.

Prompts arrive in the original image frame (pixels, x right, y down). The decoder takes points in
the model's input frame with labels 1/0, box corners as labels 2/3 and a padding point (-1) when
there is no box, exactly like the official SAM ONNX decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.contract import LABEL_BOX_BR, LABEL_BOX_TL, LABEL_PAD, LOW_RES_HW
from engine.transforms import boxes_to_input, points_to_input


@dataclass(frozen=True, slots=True)
class DecoderPrompts:
    """Decoder inputs for B prompts (see ``engine.contract``), all float32 numpy."""

    point_coords: np.ndarray  # (B, N, 2) input frame
    point_labels: np.ndarray  # (B, N)
    mask_input: np.ndarray  # (B, 1, 256, 256)
    has_mask_input: np.ndarray  # (B,)

    @property
    def batch(self) -> int:
        return int(self.point_coords.shape[0])


def _as_float(name: str, value: object, dims: tuple[int, ...], last: int | None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if arr.ndim not in dims or (last is not None and arr.shape[-1] != last):
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want} with last axis {last}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values: {arr.tolist()}")
    return arr


def _check_inside(name: str, xy: np.ndarray, original_hw: tuple[int, int]) -> None:
    h, w = original_hw
    bad = (xy[..., 0] < 0) | (xy[..., 0] > w) | (xy[..., 1] < 0) | (xy[..., 1] > h)
    if np.any(bad):
        raise ValueError(
            f"{name} {xy[bad].tolist()} lie outside the {w}x{h} image (x in [0, {w}], y in [0, {h}]); "
            "prompts are pixel coordinates of the original image"
        )


def _points(points_xy: object, labels: object, original_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    pts = _as_float("points_xy", points_xy, (2, 3), 2)
    pts = pts[None] if pts.ndim == 2 else pts
    if pts.shape[1] == 0:
        raise ValueError("points_xy is empty; give at least one point or pass points_xy=None")
    _check_inside("points", pts, original_hw)
    if labels is None:
        lab = np.ones(pts.shape[:2], dtype=np.float32)
    else:
        lab = _as_float("labels", labels, (1, 2), None)
        lab = lab[None] if lab.ndim == 1 else lab
        if lab.shape != pts.shape[:2]:
            raise ValueError(f"labels shape {lab.shape} does not match points shape {pts.shape[:2]} (B, N)")
        if not np.all(np.isin(lab, (0.0, 1.0))):
            raise ValueError(f"labels must be 1 (foreground) or 0 (background), got {np.unique(lab).tolist()}")
    return pts, lab


def _boxes(box_xyxy: object, original_hw: tuple[int, int]) -> np.ndarray:
    box = _as_float("box_xyxy", box_xyxy, (1, 2), 4)
    box = box[None] if box.ndim == 1 else box
    if np.any(box[:, 2] < box[:, 0]) or np.any(box[:, 3] < box[:, 1]):
        raise ValueError(f"boxes must be [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {box.tolist()}")
    _check_inside("box corners", box.reshape(-1, 2, 2), original_hw)
    return box


def _mask(mask_input: object, batch: int) -> tuple[np.ndarray, np.ndarray]:
    if mask_input is None:
        return np.zeros((batch, 1, *LOW_RES_HW), np.float32), np.zeros((batch,), np.float32)
    m = _as_float("mask_input", mask_input, (2, 3, 4), LOW_RES_HW[1])
    m = m.reshape(-1, 1, *m.shape[-2:])
    if m.shape[-2:] != LOW_RES_HW:
        raise ValueError(f"mask_input must be low-res logits 256x256 (from a previous prediction), got {m.shape}")
    if m.shape[0] == 1 and batch > 1:
        m = np.repeat(m, batch, axis=0)
    if m.shape[0] != batch:
        raise ValueError(f"mask_input holds {m.shape[0]} masks for {batch} prompts")
    return m, np.ones((batch,), np.float32)


def build_prompts(
    original_hw: tuple[int, int],
    input_hw: tuple[int, int],
    points_xy: object = None,
    labels: object = None,
    box_xyxy: object = None,
    mask_input: object = None,
    uniform_scale: bool = False,
) -> DecoderPrompts:
    """Validate prompts in the original frame and convert them to decoder arrays.

    ``points_xy`` ``(N, 2)`` or ``(B, N, 2)``; ``labels`` ``(N,)``/``(B, N)`` of 1/0 (default 1);
    ``box_xyxy`` ``(4,)`` or ``(B, 4)``; ``mask_input`` low-res logits ``(256, 256)`` or
    ``(B, 1, 256, 256)``. Points and a box combine per prompt; a single point set or box is
    broadcast over the other's batch. ``uniform_scale`` maps coordinates with one ratio for both
    axes (LiteMedSAM's recipe) instead of SAM's per-axis ratios.
    """
    if points_xy is None and box_xyxy is None:
        if mask_input is not None:
            raise ValueError("mask_input refines a point or box prompt; give points_xy or box_xyxy too")
        raise ValueError("empty prompt: give points_xy (with labels) and/or box_xyxy")
    if labels is not None and points_xy is None:
        raise ValueError("labels were given without points_xy")
    parts_xy, parts_lab = [], []
    batch = 1
    if points_xy is not None:
        pts, lab = _points(points_xy, labels, original_hw)
        parts_xy.append(points_to_input(pts, original_hw, input_hw, uniform_scale))
        parts_lab.append(lab)
        batch = pts.shape[0]
    if box_xyxy is not None:
        box = _boxes(box_xyxy, original_hw)
        corners = boxes_to_input(box, original_hw, input_hw, uniform_scale).reshape(-1, 2, 2)
        parts_xy.append(corners)
        parts_lab.append(np.tile(np.array([[LABEL_BOX_TL, LABEL_BOX_BR]], np.float32), (box.shape[0], 1)))
    else:
        parts_xy.append(np.zeros((batch, 1, 2), np.float32))
        parts_lab.append(np.full((batch, 1), LABEL_PAD, np.float32))
    batch = max(p.shape[0] for p in parts_xy)
    for i, (xy, lab) in enumerate(zip(parts_xy, parts_lab)):
        if xy.shape[0] not in (1, batch):
            raise ValueError(f"points give {parts_xy[0].shape[0]} prompts but boxes give {xy.shape[0]}")
        parts_xy[i] = np.broadcast_to(xy, (batch, *xy.shape[1:]))
        parts_lab[i] = np.broadcast_to(lab, (batch, lab.shape[1]))
    coords = np.ascontiguousarray(np.concatenate(parts_xy, axis=1), dtype=np.float32)
    labs = np.ascontiguousarray(np.concatenate(parts_lab, axis=1), dtype=np.float32)
    mask, has_mask = _mask(mask_input, batch)
    return DecoderPrompts(coords, labs, mask, has_mask)
