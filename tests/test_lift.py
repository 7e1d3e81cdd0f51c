"""3D lifting: exact deprojection, raycast ground truth, real RGB-D frames, TSDF fusion, export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.demo.scene import look_at, raycast, realsense_noise
from engine.lift import (
    deproject,
    fuse_tsdf,
    lift,
    oriented_box,
    read_redwood_log,
    reconstruct_mesh,
    save_mesh,
    save_ply,
)
from engine.lift.geometry import deproject_pixels, hull_volume_m3
from engine.types import CameraIntrinsics

o3d = pytest.importorskip("open3d")

# RealSense-D435-like colour stream at 640x480.
INTR = CameraIntrinsics(640, 480, 600.0, 600.0, 319.5, 239.5, 0.001)
BOX_M = np.array([0.20, 0.12, 0.08])
PRIMESENSE = CameraIntrinsics(640, 480, 525.0, 525.0, 319.5, 239.5, 0.001)


# ---------------------------------------------------------------- synthetic scene (raycast)
@pytest.fixture(scope="module")
def scene() -> tuple[object, dict[str, int]]:
    """Box 20x12x8 cm (yawed 30 deg) and a 6 cm-radius sphere standing on a floor at z=0."""
    rc = o3d.t.geometry.RaycastingScene()
    box = o3d.geometry.TriangleMesh.create_box(*BOX_M).translate(-BOX_M / 2)
    box.rotate(o3d.geometry.get_rotation_matrix_from_xyz((0, 0, np.deg2rad(30))), center=(0, 0, 0))
    box.translate((0, 0, BOX_M[2] / 2))
    sphere = o3d.geometry.TriangleMesh.create_sphere(0.06, resolution=60).translate((0.25, 0.12, 0.06))
    floor = o3d.geometry.TriangleMesh.create_box(3, 3, 0.01).translate((-1.5, -1.5, -0.01))
    ids = {
        name: rc.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
        for name, mesh in (("box", box), ("sphere", sphere), ("floor", floor))
    }
    return rc, ids


def render(rc: object, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free z-depth (HxW metres, 0 = miss) and geometry ids for a pinhole camera at ``pose``."""
    hit = raycast(rc, pose, INTR)
    return hit["z_m"], hit["geometry_ids"]


def true_points(z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v, u = np.nonzero(mask & (z > 0))
    return deproject_pixels(u, v, z[v, u], INTR)


# ---------------------------------------------------------------- deprojection
def test_deproject_exact_tiny_image() -> None:
    intr = CameraIntrinsics(4, 3, fx=2.0, fy=4.0, cx=1.5, cy=1.0, depth_scale_m=0.001)
    depth = np.array([[1000, 0, 2000, 70000], [500, 1500, 0, 3000], [0, 0, 0, 4000]], dtype=np.uint32)
    pts = deproject(depth, intr, max_depth_m=10.0)  # 70 m is beyond max and dropped
    expected = [
        [(u - 1.5) * z / 2.0, (v - 1.0) * z / 4.0, z]
        for v, u, z in [(0, 0, 1.0), (0, 2, 2.0), (1, 0, 0.5), (1, 1, 1.5), (1, 3, 3.0), (2, 3, 4.0)]
    ]
    np.testing.assert_allclose(pts, expected, rtol=0, atol=1e-12)
    assert pts.dtype == np.float64


def test_oriented_box_and_hull_volume() -> None:
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 2) for z in (0, 3)], float)
    rot = o3d.geometry.get_rotation_matrix_from_xyz((0.3, -0.2, 0.9))
    center, axes, extent = oriented_box(corners @ rot.T + 5.0)
    np.testing.assert_allclose(np.sort(extent), [1, 2, 3], atol=1e-9)
    np.testing.assert_allclose(center, rot @ [0.5, 1, 1.5] + 5.0, atol=1e-9)
    assert np.linalg.det(axes) == pytest.approx(1.0)
    assert hull_volume_m3(corners) == pytest.approx(6.0)
    flat = np.random.default_rng(0).random((100, 3))
    flat[:, 2] = 0.5
    assert hull_volume_m3(flat) is None and hull_volume_m3(corners[:3]) is None


def test_deproject_float_nan_and_mask() -> None:
    intr = CameraIntrinsics(3, 2, 1.0, 1.0, 1.0, 0.5, depth_scale_m=1.0)
    depth = np.array([[1.0, np.nan, 2.0], [np.inf, 3.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(deproject(depth, intr), [[-1, -0.5, 1], [2, -1, 2], [0, 1.5, 3]])
    mask = np.array([[False, True, True], [True, False, False]])
    np.testing.assert_allclose(deproject(depth, intr, mask=mask), [[2, -1, 2]])
    assert deproject(depth, intr, max_depth_m=1.5).shape == (1, 3)


# ---------------------------------------------------------------- bad inputs and statuses
DEPTH = np.full((48, 64), 1000, np.uint16)
SMALL = CameraIntrinsics(64, 48, 60.0, 60.0, 31.5, 23.5)
SQUARE = np.zeros((48, 64), bool)
SQUARE[10:30, 20:40] = True


@pytest.mark.parametrize(
    "kwargs, exception, match",
    [
        ({"mask": np.ones((48, 63), bool)}, ValueError, r"\(48, 63\).*\(48, 64\)"),
        ({"depth_raw": np.ones((48, 64, 1), np.uint16)}, ValueError, "2-D"),
        ({"intrinsics": CameraIntrinsics(640, 480, 1, 1, 1, 1)}, ValueError, "intrinsics are 640x480"),
        ({"rgb": np.zeros((48, 64), np.uint8)}, ValueError, "rgb must be HxWx3"),
        ({"pose": np.eye(3)}, ValueError, "4x4"),
        ({"prompt_xy": (1.0, 2.0, 3.0)}, ValueError, "prompt_xy"),
        ({"erode_px": -1}, ValueError, "erode_px"),
    ],
)
def test_lift_bad_input(kwargs: dict, exception: type, match: str) -> None:
    args = {"mask": SQUARE, "depth_raw": DEPTH, "intrinsics": SMALL} | kwargs
    with pytest.raises(exception, match=match):
        lift(**args)


@pytest.mark.parametrize(
    "mask, depth, status",
    [
        (np.zeros((48, 64), bool), DEPTH, "empty_mask"),
        (SQUARE, np.zeros((48, 64), np.uint16), "no_depth"),
        (SQUARE, np.full((48, 64), 60000, np.uint16), "no_depth"),  # 60 m > max_depth_m
        (SQUARE, DEPTH, "ok"),
        (SQUARE.astype(np.uint8), DEPTH, "ok"),
    ],
)
def test_lift_status(mask: np.ndarray, depth: np.ndarray, status: str) -> None:
    res = lift(mask, depth, SMALL)
    assert res.status == status
    if status != "ok":
        assert res.num_points == 0 and res.centroid_m is None
        with pytest.raises(ValueError, match="no bounding box"):
            res.bounding_box()
    else:
        np.testing.assert_allclose(res.bounding_box().extent, res.obb_extent_m)
        np.testing.assert_allclose(res.pixels_xy.min(axis=0), [20, 10])  # [20:40, 10:30], no erosion by default


def test_lift_no_cluster_when_points_are_scattered() -> None:
    rng = np.random.default_rng(0)
    depth = rng.integers(500, 9000, size=(48, 64)).astype(np.uint16)  # every pixel its own depth
    res = lift(SQUARE, depth, SMALL, erode_px=0, outlier_nb=0, dbscan_eps_m=0.001)
    assert res.status == "no_cluster"


def test_import_engine_lift_does_not_import_open3d() -> None:
    code = "import sys, engine, engine.lift; sys.exit('open3d' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


# ---------------------------------------------------------------- raycast ground truth
VIEW = look_at((0.75, -0.45, 0.55), (0.08, 0.04, 0.04))


@pytest.mark.parametrize("name", ["box", "sphere"])
@pytest.mark.parametrize("seed", [0, 1])
def test_single_view_matches_visible_surface(scene: tuple, name: str, seed: int) -> None:
    rc, ids = scene
    z, gid = render(rc, VIEW)
    mask = gid == ids[name]
    rgb = np.zeros((*z.shape, 3), np.uint8)
    rgb[mask] = (200, 30, 30)
    raw = realsense_noise(z, np.random.default_rng(seed))
    res = lift(mask, raw, INTR, rgb=rgb)  # the default flying-pixel rule: the depth-edge test
    assert res.status == "ok" and res.num_points > 0.9 * mask.sum()
    assert np.all(res.colors == np.array([200, 30, 30]) / 255)
    true_volume = np.prod(BOX_M) if name == "box" else 4 / 3 * np.pi * 0.06**3
    assert 0.2 * true_volume < res.volume_m3 < true_volume  # hull of the visible surface only
    # Truth: the whole visible surface. The depth-edge test keeps the rims, box edges and the
    # sphere's steep cap edge alike.
    full = true_points(z, mask)
    assert np.linalg.norm(res.centroid_m - full.mean(axis=0)) < 0.005
    np.testing.assert_allclose(res.extent_m, np.sort(oriented_box(full)[2])[::-1], atol=0.006)
    # A 2-px erosion instead matches the surface left after it, and trims ~2 px (3.3 mm at 1 m)
    # off every rim: box extents 7-10 mm short, the sphere cap 15 mm shallower (its rim is steep).
    eroded_res = lift(mask, raw, INTR, rgb=rgb, erode_px=2, edge_gap_m=None)
    eroded = cv2.erode(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))) > 0
    np.testing.assert_allclose(eroded_res.extent_m, np.sort(oriented_box(true_points(z, eroded))[2])[::-1], atol=0.01)
    shortfall = np.sort(oriented_box(full)[2])[::-1] - eroded_res.extent_m
    assert np.all(shortfall > -0.005) and np.all(shortfall < 0.02), shortfall
    assert np.all(shortfall > np.sort(oriented_box(full)[2])[::-1] - res.extent_m - 0.001)


def test_prompt_picks_cluster_and_pose_maps_to_world(scene: tuple) -> None:
    rc, ids = scene
    z, gid = render(rc, VIEW)
    raw = realsense_noise(z, np.random.default_rng(3))
    both = (gid == ids["box"]) | (gid == ids["sphere"])
    sphere_xy = np.argwhere(gid == ids["sphere"]).mean(axis=0)[::-1]
    largest = lift(both, raw, INTR)
    picked = lift(both, raw, INTR, prompt_xy=tuple(sphere_xy), pose=VIEW)
    box_world = true_points(z, gid == ids["box"]) @ VIEW[:3, :3].T + VIEW[:3, 3]
    sphere_world = true_points(z, gid == ids["sphere"]) @ VIEW[:3, :3].T + VIEW[:3, 3]
    assert picked.frame == "world" and np.allclose(picked.camera_center_m, VIEW[:3, 3])
    assert np.linalg.norm(picked.centroid_m - sphere_world.mean(axis=0)) < 0.005
    world_of_largest = largest.centroid_m @ VIEW[:3, :3].T + VIEW[:3, 3]
    assert np.linalg.norm(world_of_largest - box_world.mean(axis=0)) < 0.005
    # a prompt on a pixel without depth falls back to the nearest pixel in the image
    raw_hole = raw.copy()
    px, py = (int(round(c)) for c in sphere_xy)
    raw_hole[py - 3 : py + 4, px - 3 : px + 4] = 0
    assert lift(both, raw_hole, INTR, prompt_xy=(px, py)).num_points == pytest.approx(picked.num_points, rel=0.05)


def test_tsdf_orbit_recovers_box_size(scene: tuple) -> None:
    rc, ids = scene
    rng = np.random.default_rng(0)
    frames = []
    for k in range(12):
        az, el = 2 * np.pi * k / 12, np.deg2rad(35 if k % 2 else 20)
        eye = (0.9 * np.cos(az) * np.cos(el), 0.9 * np.sin(az) * np.cos(el), 0.04 + 0.9 * np.sin(el))
        pose = look_at(eye, (0, 0, 0.04))
        z, gid = render(rc, pose)
        frames.append((None, realsense_noise(z, rng), gid == ids["box"], pose))
    # trunc 2 voxels: projective TSDF bulges edges by about trunc/2 (3 voxels: +7 mm, 2: +4 mm)
    mesh = fuse_tsdf(frames, INTR, voxel_m=0.004, trunc_m=0.008)
    assert len(mesh.triangles) > 1000
    center, _, extent = oriented_box(np.asarray(mesh.vertices))
    np.testing.assert_allclose(np.sort(extent)[::-1], np.sort(BOX_M)[::-1], atol=0.01)
    np.testing.assert_allclose(center, [0, 0, BOX_M[2] / 2], atol=0.005)


# ---------------------------------------------------------------- real RGB-D frames
def near_smooth_window(z_m: np.ndarray, hw: tuple[int, int] = (60, 80)) -> tuple[int, int]:
    """Top-left (y, x) of the nearest window with >= 98 % valid depth and no jump > 5 cm."""
    best = (np.inf, 0, 0)
    for y in range(0, z_m.shape[0] - hw[0], 10):
        for x in range(0, z_m.shape[1] - hw[1], 10):
            win = z_m[y : y + hw[0], x : x + hw[1]]
            ok = win > 0
            if ok.mean() < 0.98:
                continue
            jumps = [np.abs(np.diff(win, axis=a))[np.diff(ok, axis=a) == 0] for a in (0, 1)]
            if max(j.max() for j in jumps) < 0.05 and np.median(win[ok]) < best[0]:
                best = (float(np.median(win[ok])), y, x)
    assert np.isfinite(best[0]), "no smooth window found"
    return best[1], best[2]


@pytest.mark.parametrize(
    "depth_path, intr",
    [
        ("slambook2_rgbd/depth/1.pgm", CameraIntrinsics(640, 480, 518.0, 519.0, 325.5, 253.5, 0.001)),
        ("slambook2_rgbd/depth/3.pgm", CameraIntrinsics(640, 480, 518.0, 519.0, 325.5, 253.5, 0.001)),
        ("open3d_rgbd/other_formats/TUM_depth.png", CameraIntrinsics(640, 480, 525, 525, 319.5, 239.5, 1 / 5000)),
    ],
)
def test_real_frame_centroid_matches_plain_deprojection(
    data_dir: Path, depth_path: str, intr: CameraIntrinsics
) -> None:
    depth = cv2.imread(str(data_dir / depth_path), cv2.IMREAD_UNCHANGED)  # PGM: big-endian mm, read right
    assert depth is not None and depth.dtype == np.uint16
    y, x = near_smooth_window(depth * intr.depth_scale_m)
    mask = np.zeros(depth.shape, bool)
    mask[y : y + 60, x : x + 80] = True
    res = lift(mask, depth, intr, prompt_xy=(x + 40, y + 30))
    plain = deproject(depth, intr, mask=mask)
    assert res.status == "ok" and res.num_points > 0.85 * len(plain)  # the cluster is the surface
    assert np.linalg.norm(res.centroid_m - plain.mean(axis=0)) < 0.02


def test_redwood_log_and_fusion(data_dir: Path) -> None:
    root = data_dir / "open3d_rgbd" / "redwood"
    poses = read_redwood_log(root / "trajectory.log")
    assert len(poses) == 5 and all(p.shape == (4, 4) for p in poses)
    np.testing.assert_allclose(poses[0][:3, 3], [-0.31057997014702826, 0.5730122438481298, 2.1264800183565487])
    frames, z_range = [], []
    for k, pose in enumerate(poses):
        depth = cv2.imread(str(root / "depth" / f"{k:05d}.png"), cv2.IMREAD_UNCHANGED)
        rgb = cv2.cvtColor(cv2.imread(str(root / "color" / f"{k:05d}.jpg")), cv2.COLOR_BGR2RGB)
        frames.append((rgb, depth, None, pose))
        z_range.append((depth[depth > 0].min() * 0.001, depth.max() * 0.001))
    trunc_m = 0.06
    mesh = fuse_tsdf(frames, PRIMESENSE, voxel_m=0.02, trunc_m=trunc_m)
    verts = np.asarray(mesh.vertices)
    assert len(mesh.triangles) > 1000 and np.asarray(mesh.vertex_colors).max() > 0.2
    # every vertex lies within some camera's depth range (z in that camera's frame), +- truncation
    inside = np.zeros(len(verts), bool)
    for pose, (z_lo, z_hi) in zip(poses, z_range):
        z_cam = (verts - pose[:3, 3]) @ pose[:3, 2]
        inside |= (z_cam > z_lo - trunc_m) & (z_cam < z_hi + trunc_m)
    assert inside.all(), f"{(~inside).sum()} vertices outside every camera's depth range"


def test_removed_scalable_backend_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="legacy 'scalable' volume was removed"):
        fuse_tsdf([], PRIMESENSE, backend="scalable")


def test_bad_redwood_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_text("0 0 1\n1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(ValueError, match="multiple of 5"):
        read_redwood_log(bad)
    bad.write_text("0 0 1\n1 0 0 0\n0 1 0 0\n0 0 1 x\n0 0 0 1\n")
    with pytest.raises(ValueError, match="non-numeric"):
        read_redwood_log(bad)


# ---------------------------------------------------------------- meshes and export
@pytest.mark.parametrize("method", ["alpha", "poisson"])
def test_mesh_and_export(scene: tuple, tmp_path: Path, method: str) -> None:
    rc, ids = scene
    z, gid = render(rc, VIEW)
    res = lift(gid == ids["box"], realsense_noise(z, np.random.default_rng(0)), INTR)
    mesh = reconstruct_mesh(res, method=method)
    assert len(mesh.triangles) > 100
    box_lo, box_hi = res.points_m.min(axis=0) - 0.02, res.points_m.max(axis=0) + 0.02
    verts = np.asarray(mesh.vertices)
    assert np.all((verts > box_lo) & (verts < box_hi))
    assert len(o3d.io.read_point_cloud(str(save_ply(tmp_path / "cloud.ply", res))).points) == res.num_points
    for suffix in (".ply", ".obj", ".glb"):
        path = save_mesh(tmp_path / f"mesh{suffix}", mesh)
        assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="not supported"):
        save_mesh(tmp_path / "mesh.stl", mesh)
