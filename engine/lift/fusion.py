"""Multi-view fusion: masked TSDF integration (Open3D) and Redwood ``.log`` trajectories."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.lift.geometry import check_depth, check_mask, check_pose, depth_to_m
from engine.types import CameraIntrinsics

FusionFrame = tuple[np.ndarray | None, np.ndarray, np.ndarray | None, np.ndarray]
"""(rgb HxWx3 uint8 | None, depth_raw HxW, mask HxW bool | None, pose_cam_to_world 4x4)."""


def read_redwood_log(path: str | Path) -> list[np.ndarray]:
    """Read a Redwood ``.log`` trajectory: per frame a line ``i j n`` then 4 rows of a 4x4 pose.

    Returns a list of (4, 4) float64 **camera-to-world** poses in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory not found: {path}")
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) % 5 != 0:
        raise ValueError(
            f"{path}: {len(lines)} non-empty lines is not a multiple of 5; each pose is a header "
            "line 'i j n' followed by 4 matrix rows"
        )
    poses = []
    for k in range(0, len(lines), 5):
        if len(lines[k]) != 3:
            raise ValueError(f"{path}: pose {k // 5} header {' '.join(lines[k])!r} must be 'i j n'")
        try:
            mat = np.array([[float(x) for x in row] for row in lines[k + 1 : k + 5]], dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"{path}: pose {k // 5} has a non-numeric entry ({exc})") from exc
        if mat.shape != (4, 4):
            raise ValueError(f"{path}: pose {k // 5} rows must hold 4 numbers each")
        poses.append(check_pose(mat))
    return poses


def _masked_depth_image(
    depth_raw: np.ndarray, mask: np.ndarray | None, intrinsics: CameraIntrinsics, max_depth_m: float
) -> np.ndarray:
    """HxW float32 metres with 0 outside the mask and where depth is invalid."""
    z = depth_to_m(depth_raw, intrinsics.depth_scale_m, max_depth_m)
    if mask is not None:
        z[~check_mask(mask, depth_raw)] = np.nan
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _check_frame(i: int, frame: FusionFrame, intrinsics: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Validate one fusion frame; returns (rgb HxWx3 uint8, pose 4x4 float64)."""
    if len(frame) != 4:
        raise ValueError(f"frame {i} must be (rgb, depth_raw, mask, pose_cam_to_world), got {len(frame)} items")
    rgb, depth_raw, _, pose = frame
    check_depth(depth_raw, intrinsics)
    if pose is None:
        raise ValueError(f"frame {i}: pose is None; fusion needs a 4x4 camera-to-world pose per frame")
    pose = check_pose(pose)
    if rgb is None:
        return np.full((*depth_raw.shape, 3), 128, np.uint8), pose
    if rgb.shape != (*depth_raw.shape, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"frame {i}: rgb must be uint8 {(*depth_raw.shape, 3)}, got {rgb.dtype} {rgb.shape}")
    return rgb, pose


def fuse_tsdf(
    frames: Sequence[FusionFrame],
    intrinsics: CameraIntrinsics,
    voxel_m: float = 0.005,
    trunc_m: float | None = None,
    max_depth_m: float = 4.0,
    *,
    min_weight: float = 1.0,
    backend: str = "voxel_block_grid",
    device: str = "CPU:0",
) -> Any:
    """Fuse masked RGB-D frames into one mesh by TSDF integration.

    Args:
        frames: sequence of ``(rgb, depth_raw, mask, pose_cam_to_world)``: ``rgb`` HxWx3 uint8 RGB
            or ``None`` (grey), ``depth_raw`` HxW uint16/float raw units (metres = raw *
            ``intrinsics.depth_scale_m``), ``mask`` HxW bool or ``None`` (whole frame; only masked
            depth is integrated), ``pose_cam_to_world`` 4x4.
        intrinsics: intrinsics of every frame's depth image.
        voxel_m: TSDF voxel size in metres.
        trunc_m: SDF truncation in metres; ``None`` = 3 voxels. Small truncation keeps box edges
            sharp (projective TSDF bulges edges by ~trunc/2), large truncation tolerates noise.
        max_depth_m: depth beyond this is not integrated.
        min_weight: surface voxels seen fewer times than this are not meshed ("voxel_block_grid").
        backend: ``"voxel_block_grid"`` (``open3d.t.geometry.VoxelBlockGrid``, default) or
            ``"scalable"`` (legacy ``o3d.pipelines.integration.ScalableTSDFVolume``). The legacy
            volume integrates nothing in the open3d 0.20.0 x86_64 pip wheel (even Open3D's own
            Redwood example gives 0 points; tests/test_lift.py checks and skips), hence the default.
        device: Open3D device for "voxel_block_grid", e.g. ``"CUDA:0"``.

    Returns:
        ``open3d.geometry.TriangleMesh`` (legacy) with vertex colours and normals in the world
        frame; empty (with a warning) when no frame had valid masked depth.
    """
    if voxel_m <= 0:
        raise ValueError(f"voxel_m must be positive, got {voxel_m}")
    trunc = 3 * voxel_m if trunc_m is None else trunc_m
    if trunc <= voxel_m:
        raise ValueError(f"trunc_m must exceed voxel_m ({voxel_m}), got {trunc}; use 2-4 voxels")
    if len(frames) == 0:
        raise ValueError("fuse_tsdf needs at least one frame (rgb, depth_raw, mask, pose)")
    checked = []
    for i, frame in enumerate(frames):
        rgb, pose = _check_frame(i, frame, intrinsics)
        depth = _masked_depth_image(frame[1], frame[2], intrinsics, max_depth_m)
        if np.any(depth > 0):
            checked.append((rgb, depth, np.linalg.inv(pose)))
    if backend == "voxel_block_grid":
        mesh = _fuse_block_grid(checked, intrinsics, voxel_m, trunc, max_depth_m, min_weight, device)
    elif backend == "scalable":
        mesh = _fuse_scalable(checked, intrinsics, voxel_m, trunc, max_depth_m)
    else:
        raise ValueError(f"unknown TSDF backend {backend!r}; use 'voxel_block_grid' or 'scalable'")
    if len(mesh.vertices) == 0:
        why = "no frame had valid masked depth" if not checked else f"{len(checked)} frames integrated, none meshed"
        warnings.warn(f"TSDF fusion produced an empty mesh: {why}", stacklevel=2)
    mesh.compute_vertex_normals()
    return mesh


def _fuse_block_grid(
    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    intrinsics: CameraIntrinsics,
    voxel_m: float,
    trunc_m: float,
    max_depth_m: float,
    min_weight: float,
    device: str,
) -> Any:
    """(rgb uint8, depth float32 metres, extrinsic world->camera) frames -> legacy TriangleMesh."""
    import open3d as o3d
    import open3d.core as o3c

    if not frames:
        return o3d.geometry.TriangleMesh()
    dev = o3c.Device(device)
    f32 = o3c.float32
    grid = o3d.t.geometry.VoxelBlockGrid(
        ("tsdf", "weight", "color"), (f32, f32, f32), ((1), (1), (3)), voxel_m, 16, 10000, dev
    )
    K = o3c.Tensor(intrinsics.K)
    mult = trunc_m / voxel_m
    for rgb, depth, extrinsic in frames:
        depth_t = o3d.t.geometry.Image(o3c.Tensor(depth)).to(dev)
        color_t = o3d.t.geometry.Image(o3c.Tensor(rgb.astype(np.float32) / 255.0)).to(dev)
        ext = o3c.Tensor(extrinsic)
        blocks = grid.compute_unique_block_coordinates(depth_t, K, ext, 1.0, max_depth_m, mult)
        grid.integrate(blocks, depth_t, color_t, K, K, ext, 1.0, max_depth_m, mult)
    return grid.extract_triangle_mesh(weight_threshold=min_weight).to_legacy()


def _fuse_scalable(
    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    intrinsics: CameraIntrinsics,
    voxel_m: float,
    trunc_m: float,
    max_depth_m: float,
) -> Any:
    """Same as :func:`_fuse_block_grid` with the legacy ``ScalableTSDFVolume``."""
    import open3d as o3d

    volume = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=voxel_m, sdf_trunc=trunc_m, color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8
    )
    cam = o3d.camera.PinholeCameraIntrinsic(
        intrinsics.width, intrinsics.height, intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    )
    for rgb, depth, extrinsic in frames:
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(rgb)),
            o3d.geometry.Image(depth),
            depth_scale=1.0,
            depth_trunc=max_depth_m,
            convert_rgb_to_intensity=False,
        )
        volume.integrate(rgbd, cam, extrinsic)
    return volume.extract_triangle_mesh()
