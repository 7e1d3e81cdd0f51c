"""Intrinsics JSON I/O and chessboard / ChArUco calibration on synthetic and real views."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.intrinsics import (
    CalibrationResult,
    calibrate,
    intrinsics_from_dict,
    load_intrinsics,
    save_intrinsics,
    undistort,
)
from engine.types import CameraIntrinsics

TRUE = CameraIntrinsics(640, 480, 610.0, 605.0, 322.3, 238.9, 0.001)


# ---------------------------------------------------------------- synthetic board views
def board_poses(n: int = 10, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rvec, tvec) of ``n`` board views: tilts up to ~35 deg, 0.45-0.6 m away."""
    rng = np.random.default_rng(seed)
    poses = []
    for k in range(n):
        angles = np.deg2rad([rng.uniform(-35, 35), rng.uniform(-35, 35), rng.uniform(-15, 15)])
        rot = cv2.Rodrigues(np.array([angles[0], 0, 0]))[0] @ cv2.Rodrigues(np.array([0, angles[1], angles[2]]))[0]
        tvec = np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), 0.45 + 0.015 * k])
        poses.append((cv2.Rodrigues(rot)[0].reshape(3), tvec))
    return poses


def render_plane(texture: np.ndarray, px_to_m: np.ndarray, rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """Image of a planar ``texture`` (texture pixel -> board metres by ``px_to_m``, 3x3) at a pose."""
    R = cv2.Rodrigues(rvec)[0]
    H = TRUE.K @ np.column_stack([R[:, 0], R[:, 1], tvec]) @ px_to_m
    img = cv2.warpPerspective(texture, H, (TRUE.width, TRUE.height), flags=cv2.INTER_AREA, borderValue=150)
    img = cv2.GaussianBlur(img, (0, 0), 0.7)  # a lens, and no aliasing for the corner detector
    noise = np.random.default_rng(int(abs(tvec[2]) * 1e4)).normal(0, 2, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def chessboard_views(square_m: float = 0.03) -> list[np.ndarray]:
    """10 views of a 10x7-square board (9x6 inner corners) with a white margin."""
    sq, margin = 60, 60  # texture pixels
    rows, cols = np.mgrid[0 : 7 * sq, 0 : 10 * sq]
    texture = np.full((7 * sq + 2 * margin, 10 * sq + 2 * margin), 255, np.uint8)
    texture[margin:-margin, margin:-margin] = np.where(((rows // sq) + (cols // sq)) % 2 == 0, 0, 255)
    k = square_m / sq
    origin = margin + sq - 0.5  # first inner corner in continuous texture coordinates
    px_to_m = np.array([[k, 0, -origin * k], [0, k, -origin * k], [0, 0, 1]])
    views = []
    for rvec, tvec in board_poses():
        centred = tvec - cv2.Rodrigues(rvec)[0] @ np.array([4 * square_m, 2.5 * square_m, 0])
        views.append(render_plane(texture, px_to_m, rvec, centred))
    return views


def test_synthetic_chessboard_recovers_camera() -> None:
    views = chessboard_views()
    res = calibrate(views, size=(9, 6), square_m=0.03)
    assert isinstance(res, CalibrationResult) and not res.rejected and len(res.per_image_error_px) == 10
    assert res.intrinsics.fx == pytest.approx(TRUE.fx, rel=0.005)
    assert res.intrinsics.fy == pytest.approx(TRUE.fy, rel=0.005)
    assert res.intrinsics.cx == pytest.approx(TRUE.cx, abs=3) and res.intrinsics.cy == pytest.approx(TRUE.cy, abs=3)
    assert res.rms_px < 0.3 and res.image_hw == (480, 640)
    assert set(res.per_image_error_px) == {f"image[{i}]" for i in range(10)}


HAS_CHARUCO = hasattr(cv2, "aruco") and hasattr(cv2.aruco, "CharucoDetector")


@pytest.mark.skipif(not HAS_CHARUCO, reason="needs cv2.aruco with CharucoDetector (OpenCV >= 4.7)")
def test_synthetic_charuco_recovers_camera() -> None:
    square_m, sq = 0.03, 60
    board = cv2.aruco.CharucoBoard((9, 7), square_m, 0.022, cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50))
    texture = board.generateImage((9 * sq, 7 * sq), marginSize=0, borderBits=1)
    texture = cv2.copyMakeBorder(texture, sq, sq, sq, sq, cv2.BORDER_CONSTANT, value=255)
    k = square_m / sq  # charuco object points start at the board's top-left outer corner
    px_to_m = np.array([[k, 0, -(sq - 0.5) * k], [0, k, -(sq - 0.5) * k], [0, 0, 1]])
    centre = np.array([4.5 * square_m, 3.5 * square_m, 0])
    views = [render_plane(texture, px_to_m, r, t - cv2.Rodrigues(r)[0] @ centre) for r, t in board_poses(seed=1)]
    res = calibrate(views, pattern="charuco", size=(9, 7), square_m=square_m, marker_m=0.022)
    assert len(res.per_image_error_px) >= 8
    assert res.intrinsics.fx == pytest.approx(TRUE.fx, rel=0.01)
    assert res.intrinsics.fy == pytest.approx(TRUE.fy, rel=0.01)


def test_non_board_images_rejected_with_reason(tmp_path: Path) -> None:
    views = chessboard_views()[:4]
    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 255, (480, 640), dtype=np.uint8), (0, 0), 3)
    cv2.circle(scene, (320, 240), 100, 255, -1)
    wrong_size = np.zeros((240, 320), np.uint8)
    missing = tmp_path / "nope.png"
    res = calibrate([*views, scene, wrong_size, missing], size=(9, 6))
    assert set(res.rejected) == {"image[4]", "image[5]", str(missing)}
    assert "not found" in res.rejected["image[4]"]
    assert "differs" in res.rejected["image[5]"]
    assert "cannot be read" in res.rejected[str(missing)]
    with pytest.raises(ValueError, match="only 0 usable calibration views"):
        calibrate([scene, scene, scene])
    with pytest.raises(ValueError, match="unknown pattern"):
        calibrate(views, pattern="circles")


def test_max_image_error_rejects_inconsistent_view() -> None:
    views = chessboard_views()
    # ripple one view (x += 4 sin(y / 25) px): still a board, but no pinhole camera makes it
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    views[3] = cv2.remap(views[3], xx + 4 * np.sin(yy / 25), yy, cv2.INTER_LINEAR, borderValue=150)
    res = calibrate(views, max_image_error_px=1.0)
    assert list(res.rejected) == ["image[3]"] and "reprojection error" in res.rejected["image[3]"]
    assert res.intrinsics.fx == pytest.approx(TRUE.fx, rel=0.005) and len(res.per_image_error_px) == 9


def test_real_opencv_left_images(data_dir: Path) -> None:
    files = sorted((data_dir / "opencv_chessboard_stereo").glob("left*.jpg"))
    assert len(files) == 13
    res = calibrate(files, size=(9, 6), square_m=1.0)
    assert not res.rejected and len(res.per_image_error_px) == 13
    assert res.rms_px < 1.0
    assert res.intrinsics.fx == pytest.approx(536.07, rel=0.02)
    assert res.intrinsics.fy == pytest.approx(536.02, rel=0.02)
    assert res.intrinsics.dist[0] == pytest.approx(-0.2651, abs=0.05)
    # undistorting straightens the barrel-distorted board: corner rows fit lines better
    img = cv2.imread(str(files[0]), cv2.IMREAD_GRAYSCALE)
    flat = undistort(img, res.intrinsics)

    def row_residual(gray: np.ndarray) -> float:
        _, c = cv2.findChessboardCorners(gray, (9, 6))
        rows = c.reshape(6, 9, 2)
        return float(np.mean([np.polyfit(r[:, 0], r[:, 1], 1, full=True)[1][0] for r in rows]))

    assert row_residual(flat) < 0.5 * row_residual(img)


# ---------------------------------------------------------------- JSON
def test_open3d_json_from_shared_data(data_dir: Path) -> None:
    intr = load_intrinsics(data_dir / "open3d_rgbd" / "redwood" / "camera_primesense.json")
    assert (intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy) == (640, 480, 525.0, 525.0, 319.5, 239.5)
    assert intr.depth_scale_m == 0.001 and intr.dist == ()


@pytest.mark.parametrize("fmt", ["arsel", "open3d"])
def test_json_round_trip(tmp_path: Path, fmt: str) -> None:
    intr = CameraIntrinsics(848, 480, 421.5, 421.25, 422.75, 240.125, 0.00025, (0.1, -0.2, 0.001, 0.002, 0.05))
    path = save_intrinsics(tmp_path / f"{fmt}.json", intr, fmt=fmt) if fmt == "arsel" else None
    if fmt == "open3d":
        with pytest.warns(UserWarning, match="no distortion"):
            path = save_intrinsics(tmp_path / "o3d.json", intr, fmt="open3d")
        assert json.loads(path.read_text())["intrinsic_matrix"] == [421.5, 0, 0, 0, 421.25, 0, 422.75, 240.125, 1]
        expected = replace(intr, dist=(), depth_scale_m=0.00025)
        assert load_intrinsics(path, depth_scale_m=0.00025) == expected
    else:
        assert load_intrinsics(path) == intr


def test_open3d_reader_accepts_its_own_writer(tmp_path: Path) -> None:
    o3d = pytest.importorskip("open3d")
    cam = o3d.camera.PinholeCameraIntrinsic(640, 480, 600.5, 601.5, 321.25, 241.75)
    o3d.io.write_pinhole_camera_intrinsic(str(tmp_path / "cam.json"), cam)
    intr = load_intrinsics(tmp_path / "cam.json")
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == (600.5, 601.5, 321.25, 241.75)
    save_intrinsics(tmp_path / "ours_as_o3d.json", intr, fmt="open3d")
    back = o3d.io.read_pinhole_camera_intrinsic(str(tmp_path / "ours_as_o3d.json"))
    np.testing.assert_allclose(back.intrinsic_matrix, cam.intrinsic_matrix)


GOOD = {"width": 640, "height": 480, "fx": 600.0, "fy": 600.0, "cx": 319.5, "cy": 239.5}


@pytest.mark.parametrize(
    "data, match",
    [
        ({k: v for k, v in GOOD.items() if k != "fx"}, "missing field 'fx'"),
        ({k: v for k, v in GOOD.items() if k != "height"}, "missing field 'height'"),
        (GOOD | {"fx_px": 1.0}, "unknown field 'fx_px'"),
        (GOOD | {"fx": "600"}, "'fx' must be a finite number"),
        (GOOD | {"width": 640.5}, "'width' must be an integer"),
        (GOOD | {"fx": -1.0}, "focal lengths must be positive"),
        (GOOD | {"dist": [0.1, 0.2]}, "'dist' must be a list"),
        ({"width": 640, "intrinsic_matrix": [1] * 9}, "missing field 'height'"),
        ({"width": 640, "height": 480, "intrinsic_matrix": [525, 0, 319.5, 0, 525, 239.5, 0, 0, 1]}, "column-major"),
        ([1, 2, 3], "must be an object"),
    ],
)
def test_bad_json(tmp_path: Path, data: object, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as info:
        load_intrinsics(path)
    assert str(path) in str(info.value)


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"width": 640,')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_intrinsics(path)
    with pytest.raises(FileNotFoundError):
        load_intrinsics(tmp_path / "absent.json")
    assert intrinsics_from_dict(GOOD).depth_scale_m == 0.001


def test_undistort_identity_and_size_check() -> None:
    img = np.arange(480 * 640, dtype=np.uint32).reshape(480, 640).astype(np.uint8)
    np.testing.assert_array_equal(undistort(img, TRUE), img)
    with pytest.raises(ValueError, match="320x240"):
        undistort(img[:240, :320], TRUE)
