"""engine.motion (with engine.synthetic_motion): LK + RANSAC global motion on a virtual camera moving over a real photo."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.motion import (
    MIN_INLIERS,
    corner_error_px,
    estimate_motion,
    rescale_homography,
    warp_mask,
    warp_points,
)
from engine.synthetic_motion import synthetic_homography_sequence

FRAME_HW = (480, 640)  # the engine's stream resolution; tracking runs at 320x240


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> np.ndarray:
    for rel in ("sam_images/truck.jpg", "davis_blackswan/JPEGImages/00000.jpg"):
        path = data_dir / rel
        if path.is_file():
            rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            return cv2.resize(rgb, (FRAME_HW[1], FRAME_HW[0]), interpolation=cv2.INTER_AREA)
    pytest.skip(f"no test photo under {data_dir} (sam_images/truck.jpg or davis_blackswan)")


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def test_synthetic_sequence_shapes_and_truth(photo: np.ndarray) -> None:
    frames, homs = synthetic_homography_sequence(photo, 5, seed=3)
    assert len(frames) == len(homs) == 5
    assert all(f.shape == photo.shape and f.dtype == np.uint8 for f in frames)
    np.testing.assert_allclose(homs[0], np.eye(3))
    # The truth really maps frame 0 onto frame k: warping frame 0 reproduces frame k inside the view.
    warped = cv2.warpPerspective(frames[0], homs[4], (FRAME_HW[1], FRAME_HW[0]))
    inside = warp_mask(np.ones(FRAME_HW, bool), homs[4], FRAME_HW)
    inside = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    diff = np.abs(warped.astype(np.int16) - frames[4].astype(np.int16))[inside]
    assert np.median(diff) <= 4
    again, _ = synthetic_homography_sequence(photo, 5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))


@pytest.mark.parametrize("seed", [0, 1])
def test_homography_recovered_within_1px(photo: np.ndarray, seed: int) -> None:
    frames, homs = synthetic_homography_sequence(photo, 13, seed=seed, noise_std=2.0)
    g0 = _grey(frames[0])
    errors = []
    for k in range(1, 13):
        est = estimate_motion(g0, _grey(frames[k]), model="homography")
        assert est.ok and est.num_inliers >= MIN_INLIERS and est.inlier_ratio > 0.5
        assert est.matrix.shape == (3, 3) and est.matrix.dtype == np.float64
        errors.append(corner_error_px(est.matrix, homs[k], FRAME_HW))
    assert len(errors) >= 10
    assert max(errors) <= 1.0, errors


def test_affine_recovered_within_1px(photo: np.ndarray) -> None:
    frames, homs = synthetic_homography_sequence(photo, 11, seed=5, max_perspective=0.0)
    for h in homs:
        np.testing.assert_allclose(h[2], [0, 0, 1], atol=1e-12)  # no perspective: truly affine
    g0 = _grey(frames[0])
    for k in range(1, 11):
        est = estimate_motion(g0, _grey(frames[k]), model="affine")
        assert est.ok and est.model == "affine"
        np.testing.assert_allclose(est.matrix[2], [0, 0, 1])
        assert corner_error_px(est.matrix, homs[k], FRAME_HW) <= 1.0


def test_full_resolution_tracking_and_rgb_input(photo: np.ndarray) -> None:
    frames, homs = synthetic_homography_sequence(photo, 3, seed=2)
    est = estimate_motion(frames[0], frames[2], downscale_to=None)  # RGB in, no downscale
    assert est.ok and corner_error_px(est.matrix, homs[2], FRAME_HW) <= 1.0


@pytest.mark.parametrize(
    "prev, cur",
    [
        (np.zeros(FRAME_HW, np.uint8), np.zeros(FRAME_HW, np.uint8)),  # black
        (np.full(FRAME_HW, 128, np.uint8), np.full(FRAME_HW, 90, np.uint8)),  # textureless
    ],
    ids=["black", "flat"],
)
def test_textureless_frames_give_not_ok(prev: np.ndarray, cur: np.ndarray) -> None:
    est = estimate_motion(prev, cur)
    assert not est.ok and est.num_inliers == 0 and est.inlier_ratio == 0.0
    np.testing.assert_array_equal(est.matrix, np.eye(3))


def test_black_current_frame_gives_not_ok(photo: np.ndarray) -> None:
    est = estimate_motion(_grey(photo), np.zeros(FRAME_HW, np.uint8))
    assert not est.ok


def test_model_none_is_identity() -> None:
    est = estimate_motion(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), model="none")
    assert est.ok and np.array_equal(est.matrix, np.eye(3))


@pytest.mark.parametrize(
    "prev, cur, kwargs, exception",
    [
        (np.zeros((10, 10), np.uint8), np.zeros((10, 12), np.uint8), {}, ValueError),
        (np.zeros((10, 10), np.float32), np.zeros((10, 10), np.float32), {}, ValueError),
        (np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 4), np.uint8), {}, ValueError),
        (np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8), {"model": "projective"}, ValueError),
        (np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8), {"ransac_px": 0.0}, ValueError),
    ],
    ids=["size-mismatch", "float", "4-channel", "unknown-model", "zero-threshold"],
)
def test_estimate_motion_bad_input(prev: np.ndarray, cur: np.ndarray, kwargs: dict, exception: type) -> None:
    with pytest.raises(exception):
        estimate_motion(prev, cur, **kwargs)


def test_warp_points_and_corner_error() -> None:
    h = np.array([[1.0, 0, 5], [0, 1, -3], [0, 0, 1]])
    np.testing.assert_allclose(warp_points(h, np.array([[0.0, 0.0], [10, 20]])), [[5, -3], [15, 17]])
    assert corner_error_px(h, np.eye(3), (100, 200)) == pytest.approx(np.hypot(5, 3))
    assert corner_error_px(np.eye(3), np.eye(3), (100, 200)) == 0.0
    with pytest.raises(ValueError):
        warp_points(h, np.zeros((3, 3)))


def test_warp_mask_bool_nearest_and_logits_linear() -> None:
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    shift = np.array([[1.0, 0, 7], [0, 1, 4], [0, 0, 1]])
    out = warp_mask(mask, shift, (40, 60))
    assert out.dtype == np.bool_ and out.sum() == mask.sum()
    assert out[14:24, 17:37].all()
    logits = np.linspace(-10, 10, 40 * 60, dtype=np.float32).reshape(40, 60)
    half = np.array([[1.0, 0, 0.5], [0, 1, 0], [0, 0, 1]])
    moved = warp_mask(logits, half, (40, 60))
    assert moved.dtype == np.float32
    np.testing.assert_allclose(moved[5, 10], (logits[5, 9] + logits[5, 10]) / 2, rtol=1e-4)
    far = warp_mask(logits, np.array([[1.0, 0, 3], [0, 1, 0], [0, 0, 1]]), (40, 60))
    assert far[5, 1] == pytest.approx(logits.min())  # outside the source: the most background value
    assert warp_mask(logits, np.array([[1.0, 0, 3], [0, 1, 0], [0, 0, 1]]), (40, 60), fill=-50.0)[5, 1] == -50.0


def test_rescale_homography_matches_resized_frames(photo: np.ndarray) -> None:
    frames, homs = synthetic_homography_sequence(photo, 3, seed=4)
    small = rescale_homography(homs[2], FRAME_HW, (240, 320))
    est = estimate_motion(cv2.resize(_grey(frames[0]), (320, 240), interpolation=cv2.INTER_AREA),
                          cv2.resize(_grey(frames[2]), (320, 240), interpolation=cv2.INTER_AREA), downscale_to=None)
    assert corner_error_px(est.matrix, small, (240, 320)) <= 1.0
    np.testing.assert_allclose(rescale_homography(small, (240, 320), FRAME_HW), homs[2], atol=1e-9)
