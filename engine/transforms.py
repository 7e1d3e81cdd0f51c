"""Pre- and post-processing shared by every backend (numpy, OpenCV and Pillow).

The torch, ONNX Runtime and TensorRT backends all receive the arrays made here, so a model gives
the same answer whichever runtime runs it.

Frames: the *original* frame is the caller's ``HxW`` image; the *input* frame is that image after
resize-longest-side to the model size ``S`` (``input_hw``, before padding); the *padded* frame is
``SxS`` with the image at the top-left.

Resize recipes (``ResizeMethod``), each model's official one by default (``ModelSpec.resize``):

* ``"pil"``: Pillow's bilinear resize (antialiased when shrinking), bit-exact with
  segment-anything's / MobileSAM's ``ResizeLongestSide.apply_image`` (torchvision's ``resize`` on a
  PIL image calls ``Image.resize(size, BILINEAR)``). SAM ViT-B/L/H and MobileSAM.
* ``"area"``: OpenCV ``INTER_AREA`` both ways, as LiteMedSAM's ``CVPR24_LiteMedSAM_infer.py``.
* ``"fast"``: OpenCV ``INTER_AREA`` down / ``INTER_LINEAR`` up. Not any model's recipe (embeddings
  of SAM models move by ~1 % relative L2 on large photos): an explicit opt-in for streams where the
  keyframe preprocessing time matters (``dataclasses.replace(spec, resize="fast")``);
  ``bench/bench_preprocess.py`` measures the three.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from PIL import Image

PixelNorm = Literal["imagenet", "minmax"]
ResizeMethod = Literal["pil", "area", "fast"]
RESIZE_METHODS: tuple[str, ...] = ("pil", "area", "fast")
# The recipe each pixel normalisation's model family was trained with: SAM-style (imagenet) models
# resize with PIL, LiteMedSAM (minmax) with OpenCV's INTER_AREA.
OFFICIAL_RESIZE: dict[str, ResizeMethod] = {"imagenet": "pil", "minmax": "area"}

# SAM's pixel statistics on 0..255 RGB (segment-anything `Sam.pixel_mean` / `pixel_std`).
SAM_PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
SAM_PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def input_hw_for(original_hw: tuple[int, int], long_side: int) -> tuple[int, int]:
    """Size after resize-longest-side, rounded like segment-anything's ``get_preprocess_shape``."""
    h, w = original_hw
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def check_rgb(image: np.ndarray) -> np.ndarray:
    """Validate an ``HxWx3 uint8 RGB`` image; returns it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array HxWx3 uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be HxWx3 RGB, got shape {image.shape}; convert grey or RGBA images first "
            "(e.g. cv2.cvtColor(img, cv2.COLOR_GRAY2RGB))"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got {image.dtype}; use (img * 255).astype(np.uint8)")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def resize_longest_side(image: np.ndarray, long_side: int, method: ResizeMethod = "pil") -> np.ndarray:
    """Resize ``HxWx3 uint8`` so its longest side is ``long_side`` with recipe ``method`` (module
    docstring); returns ``(h, w, 3) uint8`` with ``(h, w) = input_hw_for(...)``."""
    h, w = image.shape[:2]
    new_h, new_w = input_hw_for((h, w), long_side)
    if method == "pil":
        return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    if method not in ("area", "fast"):
        raise ValueError(f"unknown resize method {method!r}; expected one of {', '.join(RESIZE_METHODS)}")
    if (new_h, new_w) == (h, w):
        return image
    shrink = new_h * new_w < h * w
    interp = cv2.INTER_AREA if method == "area" or shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


def normalize(image: np.ndarray, pixel_norm: PixelNorm) -> np.ndarray:
    """``HxWx3 uint8`` -> ``HxWx3 float32`` normalised as the model was trained.

    ``imagenet``: SAM's ``(x - mean) / std`` on 0..255. ``minmax``: LiteMedSAM's per-image
    ``(x - min) / max(max - min, 1e-8)`` to [0, 1].
    """
    x = image.astype(np.float32)
    if pixel_norm == "imagenet":
        return (x - SAM_PIXEL_MEAN) / SAM_PIXEL_STD
    if pixel_norm == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / max(hi - lo, 1e-8)
    raise ValueError(f"unknown pixel_norm {pixel_norm!r}; expected 'imagenet' or 'minmax'")


def preprocess(
    image: np.ndarray, long_side: int, pixel_norm: PixelNorm, resize: ResizeMethod | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB image -> encoder input ``(1, 3, S, S) float32`` (zero padded bottom/right) and ``input_hw``.

    ``resize``: the recipe (module docstring); None takes the official one for ``pixel_norm``
    (``OFFICIAL_RESIZE``). Callers holding a ``ModelSpec`` pass its ``resize``.
    """
    image = check_rgb(image)
    if pixel_norm not in OFFICIAL_RESIZE:
        raise ValueError(f"unknown pixel_norm {pixel_norm!r}; expected 'imagenet' or 'minmax'")
    resized = resize_longest_side(image, long_side, resize or OFFICIAL_RESIZE[pixel_norm])
    x = normalize(resized, pixel_norm)
    h, w = x.shape[:2]
    out = np.zeros((1, 3, long_side, long_side), dtype=np.float32)
    out[0, :, :h, :w] = x.transpose(2, 0, 1)
    return out, (h, w)


def scale_xy(original_hw: tuple[int, int], input_hw: tuple[int, int], uniform: bool = False) -> np.ndarray:
    """Factors ``(sx, sy)`` from the original frame to the input frame.

    Per axis (``input/original`` for each side, as segment-anything's ``ResizeLongestSide``), or
    ``uniform``: one ratio ``S / max(H, W)`` for both axes, as LiteMedSAM's inference recipe.
    """
    if uniform:
        r = max(input_hw) / max(original_hw)
        return np.array([r, r], dtype=np.float32)
    return np.array([input_hw[1] / original_hw[1], input_hw[0] / original_hw[0]], dtype=np.float32)


def points_to_input(
    points_xy: np.ndarray, original_hw: tuple[int, int], input_hw: tuple[int, int], uniform: bool = False
) -> np.ndarray:
    """Map ``(..., 2)`` pixel coordinates from the original frame into the input frame (float32)."""
    return np.asarray(points_xy, dtype=np.float32) * scale_xy(original_hw, input_hw, uniform)


def boxes_to_input(
    boxes_xyxy: np.ndarray, original_hw: tuple[int, int], input_hw: tuple[int, int], uniform: bool = False
) -> np.ndarray:
    """Map ``(..., 4)`` boxes from the original frame into the input frame (float32)."""
    b = np.asarray(boxes_xyxy, dtype=np.float32)
    return (b.reshape(*b.shape[:-1], 2, 2) * scale_xy(original_hw, input_hw, uniform)).reshape(b.shape)


def postprocess_logits(
    low_res_logits: np.ndarray, input_hw: tuple[int, int], original_hw: tuple[int, int], long_side: int
) -> np.ndarray:
    """Low-res logits ``(B, M, 256, 256)`` -> logits at the original size ``(B, M, H, W)`` float32.

    As segment-anything's ``postprocess_masks``: bilinear up to ``SxS``, crop the padding away,
    bilinear to the original ``HxW`` (half-pixel centres, as ``F.interpolate(align_corners=False)``).
    The crop happens before upsampling: only the low-res rows/columns that feed the ``input_hw``
    region are resized (at the same integer scale, so the sample positions are unchanged), and both
    resizes run in OpenCV on all masks at once (channels). Max |diff| to the torch reference ~3e-5.
    """
    b, m, lh, lw = low_res_logits.shape
    ih, iw = input_hw
    h, w = original_hw
    flat = np.asarray(low_res_logits, dtype=np.float32).reshape(b * m, lh, lw)
    out = np.empty((b * m, h, w), np.float32)
    for start in range(0, b * m, 512):  # cv2 images hold at most 512 channels
        x = _upsample_cropped(flat[start : start + 512], (ih, iw), long_side)
        x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
        out[start : start + 512] = x.reshape(h, w, -1).transpose(2, 0, 1)
    return out.reshape(b, m, h, w)


def _upsample_cropped(stack: np.ndarray, input_hw: tuple[int, int], long_side: int) -> np.ndarray:
    """``(K, h, w)`` logits -> ``(ih, iw, K)``: rows/columns ``[:input_hw]`` of the bilinear resize to ``SxS``."""
    k, lh, lw = stack.shape
    sizes = []
    for n_low, n_in in ((lh, input_hw[0]), (lw, input_hw[1])):
        f = long_side / n_low
        if f != int(f) or f < 1:  # not an integer upscale: resize everything, then crop
            sizes.append(n_low)
            continue
        last_src = (n_in - 0.5) / f - 0.5  # source coordinate of the last output row kept
        sizes.append(min(n_low, int(np.floor(last_src)) + 3))  # its two neighbours and a margin
    rh, rw = sizes
    x = np.ascontiguousarray(stack[:, :rh, :rw].transpose(1, 2, 0))
    scale_h, scale_w = long_side / lh, long_side / lw
    if (scale_h, scale_w) != (1.0, 1.0):
        x = cv2.resize(x, (round(rw * scale_w), round(rh * scale_h)), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(x.reshape(x.shape[0], x.shape[1], k)[: input_hw[0], : input_hw[1]])


def mask_to_box_xyxy(mask: np.ndarray) -> np.ndarray | None:
    """Tight box ``[x0, y0, x1, y1]`` (inclusive pixel indices, float32) of a bool mask, or None."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1], ys[-1]], dtype=np.float32)
