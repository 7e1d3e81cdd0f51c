"""The guards' per-frame helpers work on the mask's box only (``recentre``, ``colour_hist``): their
answers equal the whole-frame formulas they replace, on random blobs, masks at the frame's edges,
anchors inside, outside, between pixels and off the frame, and on a real DAVIS mask."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.stream.evaluate import davis_annotations
from engine.stream.guards import colour_hist, recentre


def _recentre_frame(mask: np.ndarray, anchor_xy: np.ndarray, pull: float = 0.5) -> np.ndarray:
    """The whole-frame formula: argmax of (distance to the border - pull * distance to the anchor)."""
    if not mask.any():
        return anchor_xy
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    ys, xs = np.indices(mask.shape, dtype=np.float32)
    away = np.hypot(xs - anchor_xy[0], ys - anchor_xy[1])
    y, x = np.unravel_index(int(np.argmax(dist - pull * away)), mask.shape)
    return np.array([x, y], np.float32)


def _colour_hist_frame(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    h = cv2.calcHist([np.ascontiguousarray(rgb[::2, ::2])], [0, 1, 2], mask[::2, ::2].astype(np.uint8),
                     [8, 8, 8], [0, 256] * 3)
    total = float(h.sum())
    return (h / total if total > 0 else h).astype(np.float32)


def _blob(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    mask = np.zeros(hw, np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        centre = (int(rng.integers(-20, w + 20)), int(rng.integers(-20, h + 20)))
        axes = (int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def _anchors(rng: np.random.Generator, mask: np.ndarray) -> list[np.ndarray]:
    h, w = mask.shape
    inside = np.argwhere(mask)
    picks = [inside[int(rng.integers(len(inside)))][::-1]] if len(inside) else []
    return [np.asarray(a, np.float32) for a in (
        *picks,
        rng.uniform([0, 0], [w, h]),                     # anywhere, between pixels
        np.floor(rng.uniform([0, 0], [w, h])) + 0.5,     # half-way: equidistant pixels tie
        rng.uniform([-80, -80], [w + 80, h + 80]),       # possibly off the frame
        [-3.0, h + 5.0], [w + 0.5, -0.5],                # off the frame's corners
        [np.nan, 3.0],
    )]


@pytest.mark.parametrize("seed", range(40))
def test_recentre_and_colour_hist_equal_the_whole_frame_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hw = (int(rng.integers(20, 140)), int(rng.integers(20, 140)))
    mask = _blob(rng, hw) if seed % 10 else np.zeros(hw, bool)  # every tenth: empty
    rgb = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    for anchor in _anchors(rng, mask):
        np.testing.assert_array_equal(recentre(mask, anchor), _recentre_frame(mask, anchor), err_msg=str(anchor))
    np.testing.assert_array_equal(colour_hist(rgb, mask), _colour_hist_frame(rgb, mask))


def test_recentre_equals_the_whole_frame_formula_on_a_real_mask(data_dir: Path) -> None:
    truth = davis_annotations(data_dir / "davis_blackswan")[0]
    rgb = cv2.cvtColor(cv2.imread(str(sorted((data_dir / "davis_blackswan" / "JPEGImages").iterdir())[0])),
                       cv2.COLOR_BGR2RGB)
    rng = np.random.default_rng(0)
    for anchor in _anchors(rng, truth) + [np.argwhere(truth)[0][::-1].astype(np.float32)]:
        np.testing.assert_array_equal(recentre(truth, anchor), _recentre_frame(truth, anchor))
    for pull in (0.0, 2.0):  # no pull: the deepest pixel; strong pull: the anchor's own pixel when outside
        anchor = np.array([5.0, 5.0], np.float32)
        np.testing.assert_array_equal(recentre(truth, anchor, pull), _recentre_frame(truth, anchor, pull))
    np.testing.assert_array_equal(colour_hist(rgb, truth), _colour_hist_frame(rgb, truth))
