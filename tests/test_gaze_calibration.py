"""calibration.gaze: robust tracker -> scene mappings, residuals, JSON and CSV I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calibration.gaze import GazeMapping, calibrate_gaze_csv, fit_gaze_mapping, read_calibration_csv
from tests.test_gaze import assert_csv_error

H_TRUE = np.array([[1.8, 0.12, 35.0], [-0.05, 1.7, 20.0], [1.0e-4, -2.0e-4, 1.0]])
# scene = poly(tracker) on tracker pixels of a 640x480 eye-tracker space: mild barrel-like terms.
POLY_X = (12.0, 1.9, 0.08, 4.0e-4, -2.0e-4, 1.5e-4)
POLY_Y = (-8.0, -0.06, 2.05, 2.5e-4, 3.0e-4, -3.5e-4)


def _true_map(model: str, xy: np.ndarray) -> np.ndarray:
    if model == "homography":
        hom = np.c_[xy, np.ones(len(xy))] @ H_TRUE.T
        return hom[:, :2] / hom[:, 2:]
    x, y = xy[:, 0], xy[:, 1]
    terms = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    return np.stack([terms @ POLY_X, terms @ POLY_Y], axis=1)


def _pairs(model: str, n: int = 60, outlier_frac: float = 0.2, noise_px: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    tracker = rng.uniform((20, 20), (620, 460), (n, 2))
    scene = _true_map(model, tracker) + rng.normal(0.0, noise_px, (n, 2))
    bad = rng.choice(n, int(round(outlier_frac * n)), replace=False)
    scene[bad] += rng.uniform(30, 200, (len(bad), 2)) * rng.choice([-1, 1], (len(bad), 2))
    return tracker, scene, bad


@pytest.mark.parametrize("model", ["homography", "poly2"])
def test_recovers_known_mapping_with_outliers(model: str) -> None:
    tracker, scene, bad = _pairs(model)
    mapping = fit_gaze_mapping(tracker, scene, model=model, ransac_px=2.0, seed=1)
    assert mapping.model == model and mapping.num_pairs == 60
    assert mapping.num_inliers == 60 - len(bad)
    held_out = np.random.default_rng(99).uniform((40, 40), (600, 440), (200, 2))
    err = np.linalg.norm(mapping.apply(held_out) - _true_map(model, held_out), axis=1)
    assert err.max() <= 0.5, err.max()
    assert mapping.rms_px < 0.5 and mapping.median_px <= mapping.max_px < 1.5
    assert mapping.rms_deg is None


def test_poly2_fits_what_a_homography_cannot() -> None:
    tracker, scene, _ = _pairs("poly2", outlier_frac=0.0)
    assert fit_gaze_mapping(tracker, scene, "homography", ransac_px=50.0).rms_px > 2.0
    assert fit_gaze_mapping(tracker, scene, "poly2").rms_px < 0.5


def test_poly2_is_seeded() -> None:
    tracker, scene, _ = _pairs("poly2")
    a = fit_gaze_mapping(tracker, scene, "poly2", ransac_px=2.0, seed=7, iterations=50)
    b = fit_gaze_mapping(tracker, scene, "poly2", ransac_px=2.0, seed=7, iterations=50)
    np.testing.assert_array_equal(a.matrix, b.matrix)


@pytest.mark.parametrize("with_centre", [False, True])
def test_residuals_in_degrees_consistent_with_fx(with_centre: bool) -> None:
    tracker, scene, _ = _pairs("homography", outlier_frac=0.0, noise_px=1.0)
    fx = 600.0
    centre = {"cx": 640.0, "cy": 400.0} if with_centre else {}
    mapping = fit_gaze_mapping(tracker, scene, "homography", fx=fx, fy=fx, **centre)
    assert mapping.rms_deg is not None and mapping.max_deg is not None and mapping.median_deg is not None
    # small angles: deg ~= px / f * 180 / pi (rays off-axis see slightly smaller angles per pixel)
    expected = np.degrees(mapping.rms_px / fx)
    assert mapping.rms_deg == pytest.approx(expected, rel=0.25 if with_centre else 0.01)
    max_deg = np.degrees(np.arctan(mapping.max_px / fx))
    assert mapping.max_deg == pytest.approx(max_deg, rel=0.25 if with_centre else 1e-6)


@pytest.mark.parametrize("model", ["homography", "poly2"])
def test_save_load_round_trip(tmp_path: Path, model: str) -> None:
    tracker, scene, _ = _pairs(model)
    mapping = fit_gaze_mapping(tracker, scene, model, ransac_px=2.0, fx=500.0, fy=500.0)
    path = tmp_path / "gaze.json"
    mapping.save(path)
    back = GazeMapping.load(path)
    assert back.model == mapping.model and back.norm == mapping.norm and back.rms_deg == mapping.rms_deg
    np.testing.assert_array_equal(back.matrix, mapping.matrix)
    np.testing.assert_array_equal(back.apply(tracker), mapping.apply(tracker))


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "not valid JSON"),
        ('{"format": "other"}', "not a gaze mapping"),
        ('{"format": "arsel-gaze-mapping", "version": 2}', "unsupported gaze mapping version"),
        (
            '{"format": "arsel-gaze-mapping", "version": 1, "model": "homography", '
            '"matrix": [[1,0,0],[0,1,0],[0,0,1]], "x": 1}',
            "unknown field",
        ),
        ('{"format": "arsel-gaze-mapping", "version": 1, "model": "poly2", "matrix": [[1,0,0],[0,1,0],[0,0,1]]}',
         "bad gaze mapping"),
        ('{"format": "arsel-gaze-mapping", "version": 1, "model": "homography"}', "bad gaze mapping"),
    ],
)
def test_load_rejects_bad_json(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        GazeMapping.load(path)


def test_calibrate_gaze_csv(tmp_path: Path) -> None:
    tracker, scene, _ = _pairs("poly2")
    csv_path, out = tmp_path / "cal.csv", tmp_path / "cal.json"
    rows = "\n".join(f"{a},{b},{c},{d}" for (a, b), (c, d) in zip(tracker, scene))
    csv_path.write_text("# recorded 2024-05-01\ntracker_x,tracker_y,scene_x,scene_y\n" + rows + "\n\n")
    mapping = calibrate_gaze_csv(csv_path, out, model="poly2", ransac_px=2.0)
    assert out.is_file() and GazeMapping.load(out).num_inliers == mapping.num_inliers == 48
    t, s = read_calibration_csv(csv_path)
    assert t.shape == s.shape == (60, 2)


@pytest.mark.parametrize(
    "text, match",
    [
        ("tracker_x,tracker_y,scene_x\n1,2,3\n", r":1: header"),
        ("tracker_x,tracker_y,scene_x,scene_y\n1,2,3,4\n1,2,3\n", r":3: expected 4 fields"),
        ("tracker_x,tracker_y,scene_x,scene_y\n1,2,3,4\n\n1,2,x,4\n", r":4: scene_x must be a number"),
        ("tracker_x,tracker_y,scene_x,scene_y\n1,inf,3,4\n", r":2: tracker_y must be finite"),
        ("", r"no header"),
        ("tracker_x,tracker_y,scene_x,scene_y\n1,2,3,4\n", r"at least 4 pairs"),
    ],
)
def test_calibration_csv_bad_rows(tmp_path: Path, text: str, match: str) -> None:
    assert_csv_error(tmp_path / "bad.csv", text, lambda path: calibrate_gaze_csv(path, tmp_path / "out.json"), match)
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    "kwargs, exception",
    [
        ({"model": "cubic"}, ValueError),
        ({"ransac_px": 0.0}, ValueError),
        ({"fx": 500.0}, ValueError),  # fy missing
        ({"fx": -1.0, "fy": 500.0}, ValueError),
        ({"tracker_xy": np.zeros((5, 3))}, ValueError),
        ({"scene_xy": np.zeros((7, 2))}, ValueError),
        ({"model": "poly2", "tracker_xy": np.zeros((5, 2)), "scene_xy": np.zeros((5, 2))}, ValueError),
        ({"tracker_xy": np.zeros((8, 2)), "scene_xy": np.zeros((8, 2))}, ValueError),  # degenerate
    ],
)
def test_fit_bad_input(kwargs: dict, exception: type) -> None:
    tracker, scene, _ = _pairs("homography", n=8, outlier_frac=0.0)
    args = {"tracker_xy": tracker, "scene_xy": scene, **kwargs}
    with pytest.raises(exception):
        fit_gaze_mapping(**args)


@pytest.mark.parametrize(
    "kwargs, exception",
    [
        ({"model": "affine", "matrix": np.eye(3)}, ValueError),
        ({"model": "poly2", "matrix": np.eye(3)}, ValueError),
        ({"model": "homography", "matrix": np.full((3, 3), np.nan)}, ValueError),
        ({"model": "homography", "matrix": np.eye(3)}, None),
    ],
)
def test_mapping_validation(kwargs: dict, exception: type | None) -> None:
    if exception is None:
        np.testing.assert_allclose(GazeMapping(**kwargs).apply(np.array([[3.0, 4.0]])), [[3.0, 4.0]])
    else:
        with pytest.raises(exception):
            GazeMapping(**kwargs)
