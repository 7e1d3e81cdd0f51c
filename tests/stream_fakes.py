"""Test doubles for the stream engine: a colour segmenter that speaks the Backend interface.

``FakeSegmenter`` "encodes" an image into the mask of its green pixels (optionally sleeping, to
play a slow encoder) and "decodes" a prompt into the green pixels inside the box, or the green
blob under a foreground point. It is exact, so engine tests measure the engine, not a model.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import cv2
import numpy as np

from engine.backends.base import BackendInfo
from engine.models.registry import ModelSpec, get_spec

SIDE = 256  # input size, and the low-res logits size, so input and low-res pixels coincide


def fake_spec(box_only: bool = False) -> ModelSpec:
    kinds = frozenset({"box", "mask"}) if box_only else frozenset({"point", "box", "mask"})
    return dataclasses.replace(get_spec("lite_medsam"), name="fake_green", prompt_kinds=kinds)


def green_scene(hw: tuple[int, int] = (480, 640), centre_xy: tuple[float, float] | None = None,
                radius_px: float = 70.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured grey photo with a textured green disc: (rgb HxWx3 uint8, disc mask HxW bool)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    noise = cv2.normalize(noise, None, 0, 1, cv2.NORM_MINMAX)
    grey = (60 + 140 * noise).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    cx, cy = centre_xy or (w / 2, h / 2)
    yy, xx = np.mgrid[:h, :w]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius_px**2
    # the disc's own texture moves with it (rolled with its centre)
    tex = cv2.GaussianBlur(np.random.default_rng(seed + 1).uniform(0, 1, (h, w)).astype(np.float32), (0, 0), 2.0)
    tex = np.roll(cv2.normalize(tex, None, 0, 1, cv2.NORM_MINMAX), (round(cy), round(cx)), axis=(0, 1))
    rgb[disc] = np.stack([20 + 30 * tex, 150 + 100 * tex, 20 + 30 * tex], -1)[disc].astype(np.uint8)
    return rgb, disc


def green_mask(rgb: np.ndarray) -> np.ndarray:
    """Green pixels of an RGB image (the fake segmenter's notion of "the object")."""
    x = rgb.astype(np.int16)
    return (x[..., 1] - np.maximum(x[..., 0], x[..., 2])) > 80


class FakeSegmenter:
    """Backend double. ``encode_s``/``decode_s``: sleeps (release the GIL, like a real runtime)."""

    input_size = SIDE

    def __init__(self, encode_s: float = 0.0, decode_s: float = 0.0) -> None:
        self.encode_s, self.decode_s = encode_s, decode_s
        self.encodes = 0
        self.decode_calls: list[np.ndarray] = []  # point_coords of each call
        self.encode_threads: set[str] = set()

    def encode(self, image: np.ndarray) -> np.ndarray:
        self.encode_threads.add(threading.current_thread().name)
        time.sleep(self.encode_s)
        x = image[0]  # (3, S, S) min-max normalised
        green = (x[1] - np.maximum(x[0], x[2])) > 0.3
        feats = np.zeros((1, 256, 64, 64), np.float32)
        feats[0, :16] = green.reshape(16, 64, 64)
        self.encodes += 1
        return feats

    def decode(self, embedding, point_coords, point_labels, mask_input, has_mask_input):  # noqa: ANN001, ANN201
        time.sleep(self.decode_s)
        self.decode_calls.append(np.array(point_coords))
        green = np.asarray(embedding)[0, :16].reshape(SIDE, SIDE) > 0.5
        n_cc, labels_cc = cv2.connectedComponents(green.astype(np.uint8))
        b = point_coords.shape[0]
        low = np.full((b, 4, SIDE, SIDE), -8.0, np.float32)
        iou = np.zeros((b, 4), np.float32)
        for i in range(b):
            sel = np.zeros_like(green)
            lab = point_labels[i]
            corners = point_coords[i][(lab == 2) | (lab == 3)]
            if len(corners) == 2:
                (x0, y0), (x1, y1) = corners
                sel[int(np.floor(y0)):int(np.ceil(y1)) + 1, int(np.floor(x0)):int(np.ceil(x1)) + 1] = True
                sel &= green
                whole = np.isin(labels_cc, np.unique(labels_cc[sel]))  # the blobs the box cuts into
            else:
                whole = sel
                for x, y in point_coords[i][lab == 1]:
                    xi, yi = min(int(x), SIDE - 1), min(int(y), SIDE - 1)
                    if green[yi, xi]:
                        sel |= labels_cc == labels_cc[yi, xi]
            low[i][:, sel] = 8.0
            # predicted IoU: the share of the touched blobs inside the box (a cut object scores low)
            iou[i] = 0.95 * sel.sum() / max(whole.sum(), 1) if sel.any() else 0.05
        return iou, low

    def describe(self) -> BackendInfo:
        return BackendInfo("fake", "cpu", "fp32", "green-pixel segmenter for tests")
