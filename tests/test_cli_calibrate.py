"""``arsel calibrate intrinsics`` and ``arsel calibrate gaze`` in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.gaze import GazeMapping
from calibration.intrinsics import load_intrinsics
from engine.cli import main
from tests.test_calibration_intrinsics import TRUE, chessboard_views


@pytest.fixture(scope="module")
def board_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 synthetic 9x6 chessboard views (known camera ``TRUE``) and one non-board photo, as PNGs."""
    folder = tmp_path_factory.mktemp("boards")
    for i, view in enumerate(chessboard_views()):
        cv2.imwrite(str(folder / f"view{i:02d}.png"), view)
    scene = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (480, 640), dtype=np.uint8), (0, 0), 3)
    cv2.circle(scene, (320, 240), 100, 255, -1)
    cv2.imwrite(str(folder / "scene.png"), scene)
    return folder


# ---------------------------------------------------------------- intrinsics
def test_intrinsics_from_folder_recovers_camera(board_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cam.json"
    code = main(["calibrate", "intrinsics", str(board_dir), "--size", "9x6", "--square-m", "0.03",
                 "--out", str(out), "--json", str(tmp_path / "report.json")])
    assert code == 0
    intr = load_intrinsics(out)
    assert intr.fx == pytest.approx(TRUE.fx, rel=0.005) and intr.fy == pytest.approx(TRUE.fy, rel=0.005)
    assert (intr.width, intr.height) == (640, 480) and len(intr.dist) == 5
    report = json.loads((tmp_path / "report.json").read_text())
    scene = str(board_dir / "scene.png")
    assert list(report["rejected"]) == [scene] and "9x6 inner corners not found" in report["rejected"][scene]
    assert len(report["per_image_error_px"]) == 10 and max(report["per_image_error_px"].values()) < 0.5
    printed = capsys.readouterr().out
    assert re.search(r"calibrated from 10 of 11 images \(640x480\): RMS 0\.\d+ px", printed)
    assert f"rejected:\n  {scene}: chessboard with 9x6 inner corners not found" in printed
    assert all(f"view{i:02d}.png" in printed for i in range(10))


def test_intrinsics_real_opencv_left_glob_open3d_format(data_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "left.json"
    pattern = str(data_dir / "opencv_chessboard_stereo" / "left*.jpg")  # quoted glob, expanded by arsel
    assert main(["calibrate", "intrinsics", pattern, "--size", "9x6", "--square-m", "0.025",
                 "--out", str(out), "--format", "open3d"]) == 0
    assert "intrinsic_matrix" in json.loads(out.read_text())
    intr = load_intrinsics(out)
    assert intr.fx == pytest.approx(536.07, rel=0.02) and intr.fy == pytest.approx(536.02, rel=0.02)
    captured = capsys.readouterr()
    assert "calibrated from 13 of 13 images" in captured.out and "rejected" not in captured.out
    assert "Open3D intrinsics JSON has no distortion field" in captured.err  # the real lens is barrel-distorted


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--size", "9by6"], "--size '9by6' must be COLSxROWS"),
        (["--size", "1x6"], "at least 2 columns"),
        (["--square-m", "0"], "--square-m must be in (0, "),
        (["{boards}/scene.png"], "only 0 usable calibration views, need 3"),
        (["{tmp}/nope.png"], "calibration image not found"),
        (["{tmp}/*.jpg"], "matches no files"),
        (["--min-images", "12"], "only 10 usable calibration views, need 12"),
    ],
)
def test_intrinsics_bad_input(board_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                              argv: list, match: str) -> None:
    opts = {"--size": "9x6", "--square-m": "0.03", "--out": str(tmp_path / "c.json")}
    images = [str(board_dir)]
    for i, tok in enumerate(argv):
        if tok.startswith("{"):
            images = [tok.format(tmp=tmp_path, boards=board_dir)]
        elif tok.startswith("--"):
            opts[tok] = argv[i + 1]
    code = main(["calibrate", "intrinsics", *images, *[t for kv in opts.items() for t in kv]])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("arsel calibrate: error: ") and match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "c.json").exists()


# ---------------------------------------------------------------- gaze
H_TRUE = np.array([[1.8, 0.12, 35.0], [-0.05, 1.7, 20.0], [1.0e-4, -2.0e-4, 1.0]])


def apply_h(xy: np.ndarray) -> np.ndarray:
    hom = np.c_[xy, np.ones(len(xy))] @ H_TRUE.T
    return hom[:, :2] / hom[:, 2:]


def write_samples(path: Path, n: int = 40, n_bad: int = 6) -> None:
    """Tracker -> scene pairs of ``H_TRUE`` with 0.2 px noise and ``n_bad`` looked-away outliers."""
    rng = np.random.default_rng(3)
    tracker = rng.uniform((20, 20), (620, 460), (n, 2))
    scene = apply_h(tracker) + rng.normal(0, 0.2, (n, 2))
    scene[:n_bad] += rng.uniform(40, 150, (n_bad, 2))
    lines = ["# tracker -> scene pairs", "scene_x,scene_y,tracker_x,tracker_y"]
    lines += [f"{s[0]:.3f},{s[1]:.3f},{t[0]:.3f},{t[1]:.3f}" for t, s in zip(tracker, scene)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("with_intrinsics", [False, True])
def test_gaze_recovers_known_mapping(tmp_path: Path, capsys: pytest.CaptureFixture, with_intrinsics: bool) -> None:
    write_samples(tmp_path / "pairs.csv")
    extra = []
    if with_intrinsics:
        (tmp_path / "scene.json").write_text(json.dumps({"width": 1280, "height": 960, "fx": 900.0, "fy": 900.0,
                                                         "cx": 640.0, "cy": 480.0}))
        extra = ["--intrinsics", str(tmp_path / "scene.json")]
    out = tmp_path / "sub" / "gaze.json"
    assert main(["calibrate", "gaze", str(tmp_path / "pairs.csv"), "--out", str(out), "--ransac-px", "2", *extra]) == 0
    mapping = GazeMapping.load(out)
    assert mapping.model == "homography" and mapping.num_pairs == 40 and mapping.num_inliers == 34
    held_out = np.random.default_rng(7).uniform((40, 40), (600, 440), (200, 2))
    assert np.abs(mapping.apply(held_out) - apply_h(held_out)).max() < 0.5
    printed = capsys.readouterr().out
    assert "homography from 34 of 40 pairs" in printed
    assert re.search(r"rms 0\.\d+ px", printed)
    assert ("deg" in printed) is with_intrinsics
    if with_intrinsics:  # 0.2 px noise at f = 900 px is about 0.02 deg
        assert mapping.rms_deg is not None and mapping.rms_deg < 0.05


def test_gaze_poly2(tmp_path: Path) -> None:
    write_samples(tmp_path / "pairs.csv", n_bad=0)
    assert main(["calibrate", "gaze", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "g.json"),
                 "--mapping", "poly2"]) == 0
    mapping = GazeMapping.load(tmp_path / "g.json")
    assert mapping.model == "poly2" and mapping.rms_px < 0.5  # a homography is smooth enough for poly2 here


@pytest.mark.parametrize(
    "text, match",
    [
        ("tracker_x,tracker_y,scene_x,scene_y\n1,2,3,4\n5,6,7,8\nabc,1,2,3\n", "pairs.csv:4: tracker_x must be a number, got 'abc'"),
        ("tracker_x,tracker_y,scene_x,scene_y\n# c\n1,2,3\n", "pairs.csv:3: expected 4 fields"),
        ("x,y,sx,sy\n1,2,3,4\n", "pairs.csv:1: header must be tracker_x,tracker_y,scene_x,scene_y"),
        ("tracker_x,tracker_y,scene_x,scene_y\n1,2,3,nan\n", "pairs.csv:2: scene_y must be finite"),
        ("tracker_x,tracker_y,scene_x,scene_y\n1,2,3,4\n5,6,7,8\n", "homography needs at least 4 pairs, got 2"),
    ],
)
def test_gaze_bad_csv(tmp_path: Path, capsys: pytest.CaptureFixture, text: str, match: str) -> None:
    (tmp_path / "pairs.csv").write_text(text)
    assert main(["calibrate", "gaze", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("arsel calibrate: error: ") and match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "g.json").exists()


def test_gaze_missing_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["calibrate", "gaze", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "g.json")]) == 2
    assert "gaze samples CSV not found" in capsys.readouterr().err
