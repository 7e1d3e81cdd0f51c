"""``arsel lift`` and ``arsel fuse`` in-process on real RGB-D frames (slambook2, Redwood/Open3D)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.cli import main
from engine.lift import deproject
from engine.types import CameraIntrinsics
from tests.refs import medsam_checkpoint
from tests.test_lift import near_smooth_window

o3d = pytest.importorskip("open3d")

SLAMBOOK = CameraIntrinsics(640, 480, 518.0, 519.0, 325.5, 253.5, 0.001)  # ch5/rgbd/joinMap.cpp


@pytest.fixture()
def slambook(data_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """slambook2 frame 1: colour, depth, arsel-format intrinsics, and a mask on a smooth surface."""
    root = data_dir / "slambook2_rgbd"
    depth = cv2.imread(str(root / "depth" / "1.pgm"), cv2.IMREAD_UNCHANGED)
    y, x = near_smooth_window(depth * 0.001)
    mask = np.zeros(depth.shape, np.uint8)
    mask[y : y + 60, x : x + 80] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    intr = tmp_path / "cam.json"
    s = SLAMBOOK
    intr.write_text(json.dumps({"width": 640, "height": 480, "fx": s.fx, "fy": s.fy, "cx": s.cx, "cy": s.cy}))
    return {"color": root / "color" / "1.png", "depth": root / "depth" / "1.pgm", "intrinsics": intr,
            "mask": tmp_path / "mask.png"}


def lift_argv(f: dict[str, Path], tmp_path: Path, *extra: str) -> list[str]:
    return ["lift", "--color", str(f["color"]), "--depth", str(f["depth"]), "--intrinsics", str(f["intrinsics"]),
            "--out", str(tmp_path / "obj.ply"), "--json", str(tmp_path / "obj.json"), *extra]


# ---------------------------------------------------------------- lift
def test_lift_mask_matches_plain_deprojection(slambook: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(lift_argv(slambook, tmp_path, "--mask", str(slambook["mask"]), "--mesh", str(tmp_path / "m.obj")))
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "obj.json").read_text())
    depth = cv2.imread(str(slambook["depth"]), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(slambook["mask"]), cv2.IMREAD_UNCHANGED) > 0
    plain = deproject(depth, SLAMBOOK, mask=mask)  # every valid pixel of the mask, no filtering
    assert report["status"] == "ok" and report["selection"] == "mask"
    assert 0.85 * len(plain) < report["num_points"] <= len(plain)  # erosion trims the rim only
    assert np.linalg.norm(np.array(report["centroid_m"]) - plain.mean(axis=0)) < 0.02
    rot = np.array(report["obb"]["rotation"])
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-5)
    assert sorted(report["obb"]["extent"], reverse=True) == pytest.approx(report["extent_m"])
    span = np.ptp(plain, axis=0)
    assert max(report["extent_m"]) <= np.linalg.norm(span) + 0.01  # the box spans the surface, no more
    assert report["timings_ms"]["total"] > 0 and report["mask_area_px"] == int(mask.sum())
    cloud = o3d.io.read_point_cloud(str(tmp_path / "obj.ply"))
    assert len(cloud.points) == report["num_points"] and cloud.has_colors()
    assert len(o3d.io.read_triangle_mesh(str(tmp_path / "m.obj")).triangles) > 0
    assert "points, centroid" in capsys.readouterr().out


def test_lift_open3d_intrinsics_and_depth_scale(data_dir: Path, tmp_path: Path) -> None:
    """Redwood frame 0 with Open3D's PrimeSense JSON; --depth-scale-m 0.002 doubles every depth."""
    root = data_dir / "open3d_rgbd" / "redwood"
    f = {"color": root / "color" / "00000.jpg", "depth": root / "depth" / "00000.png",
         "intrinsics": root / "camera_primesense.json"}
    mask = np.zeros((480, 640), np.uint8)
    mask[380:440, 100:200] = 1  # the wooden floor
    cv2.imwrite(str(tmp_path / "floor.png"), mask)
    centroids = []
    for scale in ("0.001", "0.002"):
        assert main(lift_argv(f, tmp_path, "--mask", str(tmp_path / "floor.png"), "--depth-scale-m", scale,
                              "--edge-gap-m", "0")) == 0  # off: a gap in metres is not scale-free
        report = json.loads((tmp_path / "obj.json").read_text())
        assert report["depth_scale_m"] == pytest.approx(float(scale))
        centroids.append(np.array(report["centroid_m"]))
    depth = cv2.imread(str(f["depth"]), cv2.IMREAD_UNCHANGED)
    z = depth[380:440, 100:200]
    assert centroids[0][2] == pytest.approx(np.median(z[z > 0]) * 0.001, abs=0.05)
    np.testing.assert_allclose(centroids[1], 2 * centroids[0], rtol=1e-6)


def test_lift_box_with_lite_medsam(data_dir: Path, tmp_path: Path) -> None:
    root = data_dir / "open3d_rgbd" / "redwood"
    f = {"color": root / "color" / "00000.jpg", "depth": root / "depth" / "00000.png",
         "intrinsics": root / "camera_primesense.json"}
    # the chair of the rendered living room; LiteMedSAM answers boxes
    code = main(lift_argv(f, tmp_path, "--box", "335,105,615,385", "--model", "lite_medsam",
                          "--checkpoint", str(medsam_checkpoint())))
    assert code == 0
    report = json.loads((tmp_path / "obj.json").read_text())
    assert report["selection"] == "box" and report["model"] == "lite_medsam" and report["mask_area_px"] > 5000
    cloud = o3d.io.read_point_cloud(str(tmp_path / "obj.ply"))
    assert len(cloud.points) == report["num_points"] > 1000
    pts = np.asarray(cloud.points)  # the chair stands 1-2 m in front of the camera, inside the box's rays
    assert 0.9 < np.median(pts[:, 2]) < 2.2
    u = pts[:, 0] / pts[:, 2] * 525.0 + 319.5
    assert np.all((u > 330) & (u < 620))
    assert {"encode", "decode", "lift"} <= set(report["timings_ms"])


def test_lift_point_with_box_only_model_uses_proposals(data_dir: Path, tmp_path: Path) -> None:
    root = data_dir / "open3d_rgbd" / "redwood"
    f = {"color": root / "color" / "00000.jpg", "depth": root / "depth" / "00000.png",
         "intrinsics": root / "camera_primesense.json"}
    x, y = 450, 250  # on the chair's seat
    assert main(lift_argv(f, tmp_path, "--point", f"{x},{y}", "--checkpoint", str(medsam_checkpoint()))) == 0
    report = json.loads((tmp_path / "obj.json").read_text())
    assert report["selection"] == "point" and report["segmentation"] == "point_box_proposals"
    pts = np.asarray(o3d.io.read_point_cloud(str(tmp_path / "obj.ply")).points)
    assert len(pts) == report["num_points"] > 1000
    z = cv2.imread(str(f["depth"]), cv2.IMREAD_UNCHANGED)[y, x] * 0.001
    clicked = np.array([(x - 319.5) * z / 525.0, (y - 239.5) * z / 525.0, z])
    assert np.linalg.norm(pts - clicked, axis=1).min() < 0.02  # the kept cluster is the clicked surface


def test_lift_empty_selection_is_status_exit_3(slambook: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((480, 640), np.uint8))
    hole = cv2.imread(str(slambook["depth"]), cv2.IMREAD_UNCHANGED) == 0
    cv2.imwrite(str(tmp_path / "hole.png"), hole.astype(np.uint8) * 255)
    for name, status in (("empty.png", "empty_mask"), ("hole.png", "no_depth")):
        assert main(lift_argv(slambook, tmp_path, "--mask", str(tmp_path / name))) == 3
        report = json.loads((tmp_path / "obj.json").read_text())
        assert report["status"] == status and report["num_points"] == 0 and report["centroid_m"] is None
        assert f"nothing lifted ({status}" in capsys.readouterr().err
    assert not (tmp_path / "obj.ply").exists()


def _bad_inputs(tmp: Path, f: dict[str, Path]) -> None:
    cv2.imwrite(str(tmp / "rgbmask.png"), np.zeros((480, 640, 3), np.uint8))
    cv2.imwrite(str(tmp / "smallmask.png"), np.zeros((240, 320), np.uint8))
    depth = cv2.imread(str(f["depth"]), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(tmp / "small_depth.png"), cv2.resize(depth, (320, 240), interpolation=cv2.INTER_NEAREST))
    cv2.imwrite(str(tmp / "depth8.png"), (depth // 40).astype(np.uint8))
    cv2.imwrite(str(tmp / "small_color.png"), np.zeros((240, 320, 3), np.uint8))
    (tmp / "cam320.json").write_text(json.dumps({"width": 320, "height": 240, "fx": 259, "fy": 259.5,
                                                 "cx": 162.7, "cy": 126.7}))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"--color": "{tmp}/nope.png"}, "image not found"),
        ({"--depth": "{tmp}/nope.png"}, "depth image not found"),
        ({"--intrinsics": "{tmp}/nope.json"}, "intrinsics file not found"),
        ({"--mask": "{tmp}/nope.png"}, "mask not found"),
        ({"--mask": "{tmp}/rgbmask.png"}, "has 3 channels; save it as a single-channel PNG"),
        ({"--mask": "{tmp}/smallmask.png"}, "mask .* is 320x240 but the depth is 640x480"),
        ({"--depth": "{tmp}/small_depth.png"}, "is 320x240 but the intrinsics are 640x480"),
        ({"--depth": "{tmp}/depth8.png"}, "is 8-bit"),
        ({"--color": "{tmp}/small_color.png"}, "colour image .* is 320x240 but the depth is 640x480; register"),
        ({"--intrinsics": "{tmp}/cam320.json"}, "is 640x480 but the intrinsics are 320x240"),
        ({"--depth-scale-m": "0"}, r"--depth-scale-m must be in \(0, "),
        ({"--depth-scale-m": "1000"}, "--depth-scale-m is metres per raw unit, got 1000, which looks like raw units "
                                      "per metre; pass --depth-scale-m 0.001"),
        ({"--out": "{tmp}/obj.xyz"}, "--out .*obj.xyz'?: use a .ply file name"),
        ({"--mesh": "{tmp}/m.stl"}, "--mesh .*m.stl'?: use a .ply / .obj / .glb / .gltf file name"),
        ({"--mask": None}, "give a selection"),
        ({"--box": "1,2,3,4"}, "give --mask or --box, not both"),
        ({"--point": "700,10"}, r"--point \[700.0, 10.0\] lies outside the 640x480 image"),
        ({"--point": "1,2,3"}, "LABEL must be 1"),
    ],
)
def test_lift_bad_input(slambook: dict, tmp_path: Path, capsys: pytest.CaptureFixture, change: dict, match: str) -> None:
    _bad_inputs(tmp_path, slambook)
    opts = {"--color": str(slambook["color"]), "--depth": str(slambook["depth"]),
            "--intrinsics": str(slambook["intrinsics"]), "--mask": str(slambook["mask"]),
            "--out": str(tmp_path / "obj.ply")}
    for key, value in change.items():
        opts[key] = None if value is None else value.format(tmp=tmp_path)
    argv = ["lift"] + [t for k, v in opts.items() if v is not None for t in (k, v)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("arsel lift: error: ") and len(err.splitlines()) == 1
    assert re.search(match, err), err


# ---------------------------------------------------------------- fuse
def redwood_world_points(root: Path, k: int, pose: np.ndarray) -> np.ndarray:
    depth = cv2.imread(str(root / "depth" / f"{k:05d}.png"), cv2.IMREAD_UNCHANGED)
    pts = deproject(depth, CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5, 0.001), max_depth_m=4.0)
    return pts @ pose[:3, :3].T + pose[:3, 3]


def test_fuse_redwood(data_dir: Path, tmp_path: Path) -> None:
    from engine.lift import read_redwood_log

    root = data_dir / "open3d_rgbd" / "redwood"
    argv = ["fuse", str(root), "--poses", str(root / "trajectory.log"), "--intrinsics",
            str(root / "camera_primesense.json"), "--voxel-m", "0.03", "--every", "2",
            "--out", str(tmp_path / "room.ply"), "--cloud", str(tmp_path / "cloud.ply"), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "room.ply"))
    assert report["status"] == "ok" and report["frames_used"] == 3 and report["frames_total"] == 5
    assert report["triangles"] == len(mesh.triangles) > 1000 and report["vertices"] == len(mesh.vertices)
    assert len(o3d.io.read_point_cloud(str(tmp_path / "cloud.ply")).points) == report["vertices"]
    # plausible bounds: the observed surface (frame 0 back-projected into the world) fills them
    world = redwood_world_points(root, 0, read_redwood_log(root / "trajectory.log")[0])
    lo, hi = np.array(report["bounds_min_m"]), np.array(report["bounds_max_m"])
    q_lo, q_hi = np.percentile(world, 2, axis=0), np.percentile(world, 98, axis=0)
    assert np.all(lo <= q_lo + 0.05) and np.all(hi >= q_hi - 0.05)
    assert np.all(lo >= world.min(axis=0) - 0.5) and np.all(hi <= world.max(axis=0) + 0.5)


def test_fuse_masks_keep_only_the_object(data_dir: Path, tmp_path: Path) -> None:
    root = data_dir / "open3d_rgbd" / "redwood"
    masks = tmp_path / "track" / "masks"  # `arsel track --out DIR` layout, NNNNN.png by frame index
    masks.mkdir(parents=True)
    for k in range(5):
        m = np.zeros((480, 640), np.uint8)
        m[150:330, 250:450] = 255
        cv2.imwrite(str(masks / f"{k:05d}.png"), m)
    argv = ["fuse", str(root), "--poses", str(root / "trajectory.log"), "--intrinsics",
            str(root / "camera_primesense.json"), "--voxel-m", "0.03", "--masks", str(tmp_path / "track"),
            "--out", str(tmp_path / "obj.obj"), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    masked = json.loads((tmp_path / "r.json").read_text())
    assert masked["frames_used"] == 5 and masked["triangles"] > 100
    world = redwood_world_points(root, 0, np.eye(4))  # frame 0's whole view spans more than the mask
    assert max(masked["extent_m"]) < 0.8 * max(np.ptp(world, axis=0))


def test_fuse_nothing_in_range_is_status_exit_3(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = data_dir / "open3d_rgbd" / "redwood"  # every depth is beyond 0.9 m
    argv = ["fuse", str(root), "--poses", str(root / "trajectory.log"), "--intrinsics",
            str(root / "camera_primesense.json"), "--every", "4", "--max-depth-m", "0.5",
            "--out", str(tmp_path / "m.ply"), "--json", str(tmp_path / "r.json")]
    assert main(argv) == 3
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "empty_mesh" and report["triangles"] == 0 and report["bounds_min_m"] is None
    assert "fused mesh is empty" in capsys.readouterr().err and not (tmp_path / "m.ply").exists()


@pytest.mark.parametrize(
    "case, match",
    [
        ("no_depth_dir", "must hold color/ \\(or rgb/\\) and depth/ image folders"),
        ("unpaired", "shares a file name with a depth image"),
        ("short_log", "has 2 poses but .* has 5 colour/depth pairs"),
        ("missing_mask", "no mask for frame 0 \\(00000.jpg\\)"),
        ("bad_every", r"--every must be in \[1, "),
        ("missing_dir", "frames folder not found"),
    ],
)
def test_fuse_bad_input(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, match: str) -> None:
    root = data_dir / "open3d_rgbd" / "redwood"
    frames, log, extra = root, root / "trajectory.log", []
    if case in ("no_depth_dir", "unpaired"):
        frames = tmp_path / "frames"
        (frames / "rgb").mkdir(parents=True)
        cv2.imwrite(str(frames / "rgb" / "1.png"), np.zeros((480, 640, 3), np.uint8))
        if case == "unpaired":
            (frames / "depth").mkdir()
            cv2.imwrite(str(frames / "depth" / "2.png"), np.zeros((480, 640), np.uint16))
    elif case == "short_log":
        log = tmp_path / "short.log"
        log.write_text("\n".join(root.joinpath("trajectory.log").read_text().splitlines()[:10]) + "\n")
    elif case == "missing_mask":
        (tmp_path / "masks").mkdir()
        extra = ["--masks", str(tmp_path / "masks")]
    elif case == "bad_every":
        extra = ["--every", "0"]
    elif case == "missing_dir":
        frames = tmp_path / "nope"
    argv = ["fuse", str(frames), "--poses", str(log), "--intrinsics", str(root / "camera_primesense.json"),
            "--out", str(tmp_path / "m.ply"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("arsel fuse: error: ") and re.search(match, err), err


# ---------------------------------------------------------------- fuse: mask names
def _touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [folder / n for n in names]


@pytest.mark.parametrize(
    "colors, masks, expected",
    [
        (["a.jpg", "b.jpg"], ["a.png", "b.png"], ["a.png", "b.png"]),  # by colour name
        (["a.jpg", "b.jpg"], ["00000.png", "00001.png"], ["00000.png", "00001.png"]),  # by index
        (["00000.jpg", "00001.jpg"], ["00000.png", "00001.png"], ["00000.png", "00001.png"]),  # both agree
        # colour numbered from 1, masks by index from 0: one scheme (index) for every frame, never
        # 00001.png for frame 0 and 00002.png for frame 1 with the last frame falling back to its index
        (["00001.jpg", "00002.jpg", "00003.jpg"], ["00000.png", "00001.png", "00002.png"],
         ["00000.png", "00001.png", "00002.png"]),
    ],
)
def test_mask_names_follow_one_scheme(tmp_path: Path, colors: list[str], masks: list[str], expected: list[str]) -> None:
    from engine.lift.cli_io import mask_paths

    color_paths = _touch(tmp_path / "color", *colors)
    _touch(tmp_path / "masks", *masks)
    got = mask_paths(tmp_path / "masks", list(enumerate(color_paths)))
    assert [p.name for p in got] == expected


def test_mask_names_ambiguous_or_missing(tmp_path: Path) -> None:
    from engine.cli import UsageError
    from engine.lift.cli_io import mask_paths

    frames = list(enumerate(_touch(tmp_path / "color", "00001.jpg", "00002.jpg")))
    _touch(tmp_path / "masks", "00000.png", "00001.png", "00002.png")  # complete both ways, disagreeing
    with pytest.raises(UsageError, match="named both by colour image .* and by frame index .* keep one set"):
        mask_paths(tmp_path / "masks", frames)
    _touch(tmp_path / "few", "00001.png")  # frame 0 by colour name, or frame 1 by index
    with pytest.raises(FileNotFoundError, match=r"by neither naming scheme: by colour name, frame 1 \(00002.jpg\) "
                                                r"has no 00002.png; by frame index, frame 0 has no 00000.png"):
        mask_paths(tmp_path / "few", frames)
    named = list(enumerate(_touch(tmp_path / "named", "a.jpg", "b.jpg")))
    _touch(tmp_path / "one", "a.png", "00000.png")  # frame 1 has neither
    with pytest.raises(FileNotFoundError, match=r"no mask for frame 1 \(b.jpg\): looked for b.png .*00001.png"):
        mask_paths(tmp_path / "one", named)


def test_fuse_off_by_one_masks_pair_by_index(data_dir: Path, tmp_path: Path) -> None:
    """Colour/depth numbered 00001.. with `arsel track` masks 00000..: frame k gets mask k."""
    root = data_dir / "open3d_rgbd" / "redwood"
    frames = tmp_path / "frames"
    for sub, ext in (("color", "jpg"), ("depth", "png")):
        (frames / sub).mkdir(parents=True)
        for k in range(5):
            (frames / sub / f"{k + 1:05d}.{ext}").write_bytes((root / sub / f"{k:05d}.{ext}").read_bytes())
    masks = tmp_path / "masks"
    masks.mkdir()
    for k in range(5):  # frames 0 and 1 select everything, the others nothing
        cv2.imwrite(str(masks / f"{k:05d}.png"), np.full((480, 640), 255 if k < 2 else 0, np.uint8))
    argv = ["fuse", str(frames), "--poses", str(root / "trajectory.log"), "--intrinsics",
            str(root / "camera_primesense.json"), "--voxel-m", "0.05", "--masks", str(masks),
            "--out", str(tmp_path / "m.ply"), "--json", str(tmp_path / "r.json")]
    # pairing by colour name where it exists would fuse frame 0 alone (00001.png): an empty mesh
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "ok" and report["frames_used"] == 5


def test_intrinsics_help_names_the_aligned_grid(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["lift", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the pixel grid the depth image is on" in text and "the colour camera's" in text
    assert "depth must be aligned (registered) to it" in text


def test_fuse_reads_frames_lazily() -> None:
    import inspect

    from engine.lift.cli_io import iter_fusion_frames

    assert inspect.isgeneratorfunction(iter_fusion_frames)
