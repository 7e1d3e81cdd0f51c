"""Multi-view fusion: masked TSDF integration (Open3D) and Redwood ``.log`` trajectories."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from engine.lift.geometry import check_depth, check_mask, check_pose, deproject_pixels, depth_to_m, transform_points
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
        try:
            poses.append(check_pose(mat))
        except ValueError as exc:
            raise ValueError(f"{path}: pose {k // 5}: {exc}") from None
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
    frames: Iterable[FusionFrame],
    intrinsics: CameraIntrinsics,
    voxel_m: float = 0.005,
    trunc_m: float | None = None,
    max_depth_m: float = 4.0,
    *,
    min_weight: float = 1.0,
    backend: str = "voxel_block_grid",
    device: str = "CPU:0",
) -> Any:
    """Fuse masked RGB-D frames into one mesh by TSDF integration, one frame at a time.

    Args:
        frames: any iterable (a list, or a generator that reads each frame from disk when asked)
            of ``(rgb, depth_raw, mask, pose_cam_to_world)``: ``rgb`` HxWx3 uint8 RGB or ``None``
            (grey), ``depth_raw`` HxW uint16/float raw units (metres = raw *
            ``intrinsics.depth_scale_m``), ``mask`` HxW bool or ``None`` (whole frame; only masked
            depth is integrated), ``pose_cam_to_world`` 4x4. Each frame is integrated before the
            next is taken, so only one frame's images are held here at a time.
        intrinsics: intrinsics of every frame's depth image.
        voxel_m: TSDF voxel size in metres.
        trunc_m: SDF truncation in metres; ``None`` = 3 voxels. Small truncation keeps box edges
            sharp (projective TSDF bulges edges by ~trunc/2), large truncation tolerates noise.
        max_depth_m: depth beyond this is not integrated.
        min_weight: surface voxels seen fewer times than this are not meshed ("voxel_block_grid").
        backend: ``"voxel_block_grid"`` (``open3d.t.geometry.VoxelBlockGrid``), the only one. (The
            legacy ``ScalableTSDFVolume`` was dropped: it integrates nothing in the pinned open3d
            0.20.0 pip wheel, not even Open3D's own Redwood example.)
        device: Open3D device for "voxel_block_grid", e.g. ``"CUDA:0"``.

    Returns:
        ``open3d.geometry.TriangleMesh`` (legacy) with vertex colours and normals in the world
        frame; empty (with a warning) when no frame had valid masked depth.

    Raises:
        ValueError: ``frames`` is empty, a frame is malformed (names its position), or a bad
            voxel/truncation/backend.
    """
    if voxel_m <= 0:
        raise ValueError(f"voxel_m must be positive, got {voxel_m}")
    trunc = 3 * voxel_m if trunc_m is None else trunc_m
    if trunc <= voxel_m:
        raise ValueError(f"trunc_m must exceed voxel_m ({voxel_m}), got {trunc}; use 2-4 voxels")
    if backend != "voxel_block_grid":
        raise ValueError(f"unknown TSDF backend {backend!r}; use 'voxel_block_grid' (the legacy 'scalable' "
                         "volume was removed: it integrates nothing in open3d 0.20's wheel)")
    volume: _BlockGrid | None = None
    seen = integrated = 0
    for i, frame in enumerate(frames):
        seen += 1
        rgb, pose = _check_frame(i, frame, intrinsics)
        depth = _masked_depth_image(frame[1], frame[2], intrinsics, max_depth_m)
        if not np.any(depth > 0):
            continue
        if volume is None:
            volume = _BlockGrid(intrinsics, voxel_m, trunc, max_depth_m, device)
        volume.integrate(rgb, depth, np.linalg.inv(pose))
        integrated += 1
    if seen == 0:
        raise ValueError("fuse_tsdf needs at least one frame (rgb, depth_raw, mask, pose); the input was empty")
    mesh = _empty_mesh() if volume is None else volume.mesh(min_weight)
    if len(mesh.vertices) == 0:
        why = "no frame had valid masked depth" if not integrated else f"{integrated} frames integrated, none meshed"
        warnings.warn(f"TSDF fusion produced an empty mesh: {why}", stacklevel=2)
    mesh.compute_vertex_normals()
    return mesh


def fuse_points(frames: Iterable[FusionFrame], intrinsics: CameraIntrinsics, voxel_m: float = 0.002,
                max_depth_m: float = 4.0, min_view_frac: float = 1 / 3, vote_voxel_m: float = 0.006) -> np.ndarray:
    """World points (N, 3) float64 metres of the frames' masked valid depth: the mean point of each
    ``voxel_m`` voxel whose ``vote_voxel_m`` voxel at least ``min_view_frac`` of the frames with
    depth saw (at least one frame).

    Unlike a TSDF mesh this keeps the rim of curved surfaces seen at grazing angles (a masked TSDF
    observes no voxel beside the silhouette, so its surface stops short of the rim); the vote
    drops what only a few masks leaked onto. Use it to measure what was seen.
    """
    if not 0 < voxel_m <= vote_voxel_m or not 0 <= min_view_frac <= 1:
        raise ValueError(f"need 0 < voxel_m <= vote_voxel_m and 0 <= min_view_frac <= 1, "
                         f"got {voxel_m}, {vote_voxel_m}, {min_view_frac}")
    fine: list[np.ndarray] = []  # per frame (V, 4): sum x, y, z, count of each fine voxel
    votes: list[np.ndarray] = []  # per frame: the coarse voxels it saw
    for i, frame in enumerate(frames):
        _check_frame(i, frame, intrinsics)
        z = _masked_depth_image(frame[1], frame[2], intrinsics, max_depth_m)
        v, u = np.nonzero(z > 0)
        if v.size == 0:
            continue
        pts = transform_points(deproject_pixels(u, v, z[v, u].astype(np.float64), intrinsics), check_pose(frame[3]))
        fine.append(_voxel_sums(pts, voxel_m))
        votes.append(np.unique(np.floor(pts / vote_voxel_m).astype(np.int64), axis=0))
    if not fine:
        return np.zeros((0, 3))
    coarse, views = np.unique(np.concatenate(votes), axis=0, return_counts=True)
    seen = coarse[views >= max(1, math.ceil(min_view_frac * len(fine) - 1e-9))]
    sums = _merge_sums(np.concatenate(fine))
    pts = sums[:, :3] / sums[:, 3:]
    keys = np.floor(pts / vote_voxel_m).astype(np.int64)
    return pts[_rows_in(keys, seen)]


def _voxel_sums(pts: np.ndarray, voxel_m: float) -> np.ndarray:
    """(V, 7): voxel key (3, as float), sum of x, y, z, point count."""
    keys, inv = np.unique(np.floor(pts / voxel_m).astype(np.int64), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    sums = [np.bincount(inv, weights=pts[:, k], minlength=len(keys)) for k in range(3)]
    return np.column_stack([keys.astype(np.float64), *sums, np.bincount(inv, minlength=len(keys))])


def _merge_sums(rows: np.ndarray) -> np.ndarray:
    """(V, 4) sums of x, y, z and count per voxel key, merged over frames."""
    keys, inv = np.unique(rows[:, :3], axis=0, return_inverse=True)
    out = np.zeros((len(keys), 4))
    np.add.at(out, inv.reshape(-1), rows[:, 3:])
    return out


def _rows_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bool (len(a),): which int64 rows of ``a`` (N, 3) occur in ``b`` (M, 3)."""
    both = np.concatenate([a, b])
    lo = both.min(axis=0)
    span = both.max(axis=0) - lo + 1
    code = lambda k: ((k[:, 0] - lo[0]) * span[1] + (k[:, 1] - lo[1])) * span[2] + (k[:, 2] - lo[2])  # noqa: E731
    return np.isin(code(a), code(b))


def _empty_mesh() -> Any:
    import open3d as o3d

    return o3d.geometry.TriangleMesh()


class _BlockGrid:
    """``open3d.t.geometry.VoxelBlockGrid`` integrating (rgb uint8, depth float32 metres,
    extrinsic world->camera 4x4) frames one at a time; ``mesh`` extracts a legacy TriangleMesh."""

    def __init__(self, intrinsics: CameraIntrinsics, voxel_m: float, trunc_m: float, max_depth_m: float,
                 device: str) -> None:
        import open3d as o3d
        import open3d.core as o3c

        self._o3d, self._o3c = o3d, o3c
        self.dev = o3c.Device(device)
        f32 = o3c.float32
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            ("tsdf", "weight", "color"), (f32, f32, f32), ((1), (1), (3)), voxel_m, 16, 10000, self.dev
        )
        self.K = o3c.Tensor(intrinsics.K)
        self.max_depth_m, self.mult = max_depth_m, trunc_m / voxel_m

    def integrate(self, rgb: np.ndarray, depth: np.ndarray, extrinsic: np.ndarray) -> None:
        o3d, o3c = self._o3d, self._o3c
        depth_t = o3d.t.geometry.Image(o3c.Tensor(depth)).to(self.dev)
        color_t = o3d.t.geometry.Image(o3c.Tensor(rgb.astype(np.float32) / 255.0)).to(self.dev)
        ext = o3c.Tensor(extrinsic)
        blocks = self.grid.compute_unique_block_coordinates(depth_t, self.K, ext, 1.0, self.max_depth_m, self.mult)
        self.grid.integrate(blocks, depth_t, color_t, self.K, self.K, ext, 1.0, self.max_depth_m, self.mult)

    def mesh(self, min_weight: float) -> Any:
        return self.grid.extract_triangle_mesh(weight_threshold=min_weight).to_legacy()
