"""Single-view lifting: an object mask + aligned depth -> a clean 3D point cloud and its box.

Pipeline (:func:`lift`), all in the camera frame until the optional pose is applied:

1. drop the mask pixels more than ``edge_gap_m`` behind the nearest depth within ``edge_px``
   pixels (flying pixels, the far side of depth edges; :data:`EDGE_GAP_M`, the rule ``arsel
   lift`` and ``arsel demo`` share), optionally after an ``erode_px`` erosion, which like a wider
   window also trims a curved object's rim, where the depth steps mm per pixel;
2. drop invalid depth (0, NaN/inf, beyond ``max_depth_m``);
3. organised downsampling: when more than ``max_points`` pixels remain, the mask's bounding box is
   cut into ``s x s`` pixel blocks and each block is represented by its *median-depth pixel*
   (a real measurement, never an average across a depth edge) - the image-space equivalent of a
   voxel grid whose cells grow with depth;
4. statistical outlier removal (Open3D, ``outlier_nb`` neighbours, ``outlier_std``) and DBSCAN
   (Open3D) on the representatives;
5. keep the cluster holding the prompt's 3D point (the largest without a prompt), readmit
   statistical outliers within ``eps`` of it (SOR also strips the rim of a clean surface), and map
   it back to full resolution: a pixel survives when its block's representative does and its
   depth lies within ``eps`` of the representative's.

SOR and DBSCAN run on at most ``max_points`` representatives: on every pixel the lift costs
10-100x more (``bench/bench_lift.py``, "full-res"). Centroid, box and the returned points are
full resolution; the hull volume uses the cluster's representatives.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from engine.lift.geometry import (
    check_depth,
    check_mask,
    check_pose,
    deproject_pixels,
    depth_to_m,
    hull_volume_m3,
    oriented_box,
    transform_points,
)
from engine.types import CameraIntrinsics

STATUSES = ("ok", "empty_mask", "no_depth", "no_cluster")
EDGE_GAP_M = 0.01
"""Default flying-pixel test of :func:`lift`, ``arsel lift`` and ``arsel demo``: a mask pixel more
than this (m; times (z / 1 m)^2 beyond 1 m, as depth noise grows) behind the nearest depth z within
:data:`EDGE_PX` pixels is dropped. A 10 cm ball at 0.85 m steps < 1 cm per pixel up to its rim, so
1 px keeps the rim (2 px trim ~0.6 cm of it)."""
EDGE_PX = 1


@dataclass(frozen=True, slots=True)
class LiftResult:
    """Lifted object. All 3D quantities in metres, in ``frame`` ("camera", or "world" with a pose).

    ``points_m`` (N, 3) float64; ``colors`` (N, 3) float64 in [0, 1] or ``None`` without rgb;
    ``pixels_xy`` (N, 2) int32 source pixel of each point; ``centroid_m`` (3,); oriented box
    ``obb_center_m`` (3,), ``obb_rotation`` (3, 3) axes as columns, ``obb_extent_m`` (3,) along
    those columns; ``extent_m`` the same extents sorted descending; ``volume_m3`` of the convex
    hull of the cluster's representatives (``None`` when degenerate). Box fields are ``None``
    unless ``status == "ok"``. ``camera_center_m`` (3,) is the camera origin in ``frame``.
    """

    status: str
    points_m: np.ndarray
    colors: np.ndarray | None = None
    pixels_xy: np.ndarray | None = None
    centroid_m: np.ndarray | None = None
    obb_center_m: np.ndarray | None = None
    obb_rotation: np.ndarray | None = None
    obb_extent_m: np.ndarray | None = None
    extent_m: np.ndarray | None = None
    volume_m3: float | None = None
    camera_center_m: np.ndarray = field(default_factory=lambda: np.zeros(3))
    frame: str = "camera"
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"LiftResult.status must be one of {STATUSES}, got {self.status!r}")
        if self.points_m.ndim != 2 or self.points_m.shape[1] != 3:
            raise ValueError(f"LiftResult.points_m must be (N, 3), got {self.points_m.shape}")
        if self.colors is not None and self.colors.shape != self.points_m.shape:
            raise ValueError(f"LiftResult.colors must be {self.points_m.shape}, got {self.colors.shape}")
        if self.status == "ok" and (self.centroid_m is None or len(self.points_m) == 0):
            raise ValueError("an 'ok' LiftResult needs points and a centroid")

    @property
    def num_points(self) -> int:
        """Number of lifted points N."""
        return int(self.points_m.shape[0])

    def point_cloud(self) -> Any:
        """The points (and colours) as an ``open3d.geometry.PointCloud``."""
        import open3d as o3d

        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(self.points_m))
        if self.colors is not None:
            pcd.colors = o3d.utility.Vector3dVector(self.colors)
        return pcd

    def bounding_box(self) -> Any:
        """The oriented box as an ``open3d.geometry.OrientedBoundingBox``; needs status "ok"."""
        if self.status != "ok":
            raise ValueError(f"no bounding box: lift status is {self.status!r}")
        import open3d as o3d

        return o3d.geometry.OrientedBoundingBox(self.obb_center_m, self.obb_rotation, self.obb_extent_m)


@dataclass(frozen=True, slots=True)
class _Reps:
    """Block representatives in crop coordinates: pixel ``u, v``, depth ``z`` (metres)."""

    u: np.ndarray
    v: np.ndarray
    z: np.ndarray
    block_id: np.ndarray  # (R,) index into the Hb*Wb block grid
    grid_hw: tuple[int, int]
    step: int


def _empty(status: str, frame: str, cam: np.ndarray, timings: dict[str, float]) -> LiftResult:
    return LiftResult(status, np.zeros((0, 3)), camera_center_m=cam, frame=frame, timings_ms=timings)


def _crop_and_erode(mask: np.ndarray, erode_px: int, edge_px: int = 0) -> tuple[np.ndarray, int, int] | None:
    """Crop to the mask's box (padded by ``max(erode_px, edge_px) + 1``) and erode; ``None`` for
    an empty mask. A mask that erosion would wipe out entirely (thinner than ~2*erode_px) stays."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    pad = max(erode_px, edge_px, 0) + 1
    y0, y1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, mask.shape[0])
    x0, x1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, mask.shape[1])
    crop = mask[y0:y1, x0:x1]
    if erode_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode_px + 1, 2 * erode_px + 1))
        eroded = cv2.erode(np.ascontiguousarray(crop, dtype=np.uint8), kernel) > 0
        if eroded.any():
            crop = eroded
    return crop, int(y0), int(x0)


def _behind_depth_edge(z_m: np.ndarray, edge_px: int, gap_m: float) -> np.ndarray:
    """HxW bool: pixels of ``z_m`` (metres, NaN = invalid) more than ``gap_m * max(1, z / 1 m)^2``
    behind the nearest valid depth z within ``edge_px`` pixels (a (2*edge_px+1) square window):
    beyond 1 m the gap grows as stereo / structured-light depth noise and quantisation do."""
    far = np.float32(1e6)
    zf = np.where(np.isnan(z_m), far, z_m).astype(np.float32)
    nearest = cv2.erode(zf, np.ones((2 * edge_px + 1, 2 * edge_px + 1), np.uint8))
    with np.errstate(invalid="ignore"):
        return (z_m - nearest) > gap_m * np.maximum(nearest, 1.0) ** 2


def _block_reps(z: np.ndarray, step: int) -> _Reps:
    """Median-depth pixel of each ``step x step`` block of ``z`` (HxW metres, NaN = invalid)."""
    h, w = z.shape
    if step == 1:
        v, u = np.nonzero(~np.isnan(z))
        return _Reps(u, v, z[v, u], v * w + u, (h, w), 1)
    hb, wb = -(-h // step), -(-w // step)
    zp = np.full((hb * step, wb * step), np.inf)
    zp[:h, :w] = np.where(np.isnan(z), np.inf, z)
    blocks = zp.reshape(hb, step, wb, step).transpose(0, 2, 1, 3).reshape(hb * wb, step * step)
    count = np.isfinite(blocks).sum(axis=1)
    block_id = np.flatnonzero(count)
    used = blocks[block_id]
    zr = np.sort(used, axis=1)[np.arange(block_id.size), (count[block_id] - 1) // 2]
    off = np.argmax(used == zr[:, None], axis=1)  # sort + compare: 3x cheaper than argsort
    u = (block_id % wb) * step + off % step
    v = (block_id // wb) * step + off // step
    return _Reps(u, v, zr, block_id, (hb, wb), step)


def _auto_eps_m(reps: _Reps, intrinsics: CameraIntrinsics) -> float:
    """DBSCAN radius: 4 representative spacings at the median depth, at least 1 cm.

    Generous on purpose: the mask already isolates the object, so clustering only has to cut
    leaks onto the background and flying pixels (gaps of many cm), while a surface seen at a
    grazing angle has neighbours several lateral spacings apart.
    """
    spacing = reps.step * float(np.median(reps.z)) / min(intrinsics.fx, intrinsics.fy)
    return max(0.01, 4.0 * spacing)


def _filter_and_cluster(points: np.ndarray, nb: int, std: float, eps_m: float, min_points: int) -> np.ndarray:
    """Labels (R,) int: DBSCAN cluster id, -1 for statistical outliers and DBSCAN noise."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    keep = np.arange(len(points))
    if nb > 0 and len(points) > nb:
        pcd, idx = pcd.remove_statistical_outlier(nb_neighbors=nb, std_ratio=std)
        keep = np.asarray(idx, dtype=np.int64)
    labels = np.full(len(points), -1, dtype=np.int64)
    if keep.size:
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            labels[keep] = np.asarray(pcd.cluster_dbscan(eps=eps_m, min_points=min_points))
    return labels


def _choose_cluster(
    labels: np.ndarray,
    rep_pts: np.ndarray,
    rep_xy: np.ndarray,
    prompt_xy: np.ndarray | None,
    depth_raw: np.ndarray,
    intrinsics: CameraIntrinsics,
    max_depth_m: float,
) -> int:
    """Cluster of the representative nearest the prompt's 3D point, else the largest cluster.

    A prompt pixel without valid depth (a hole, or outside the image) falls back to the
    representative nearest in the image.
    """
    ok = labels >= 0
    if prompt_xy is None:
        return int(np.bincount(labels[ok]).argmax())
    px, py = (int(round(float(c))) for c in prompt_xy)
    cand = np.flatnonzero(ok)
    z = np.full(1, np.nan)
    if 0 <= px < intrinsics.width and 0 <= py < intrinsics.height:
        z = depth_to_m(depth_raw[py : py + 1, px], intrinsics.depth_scale_m, max_depth_m)
    if not np.isnan(z[0]):
        p3 = deproject_pixels(np.array([px]), np.array([py]), z, intrinsics)[0]
        d2 = ((rep_pts[cand] - p3) ** 2).sum(axis=1)
    else:
        d2 = ((rep_xy[cand] - np.array([px, py])) ** 2).sum(axis=1)
    return int(labels[cand[np.argmin(d2)]])


def _check_args(
    depth_raw: np.ndarray, rgb: np.ndarray | None, prompt_xy: Any, erode_px: int, max_points: int,
    edge_px: int = 2, edge_gap_m: float | None = None,
) -> np.ndarray | None:
    if rgb is not None and (rgb.shape[:2] != depth_raw.shape or rgb.ndim != 3 or rgb.shape[2] != 3):
        raise ValueError(f"rgb must be HxWx3 matching depth {depth_raw.shape}, got {rgb.shape}")
    if erode_px < 0 or max_points < 1:
        raise ValueError(f"erode_px must be >= 0 and max_points >= 1, got {erode_px}, {max_points}")
    if edge_gap_m is not None and not (edge_gap_m > 0 and edge_px >= 1):
        raise ValueError(f"edge_gap_m must be > 0 (or None = off) and edge_px >= 1, got {edge_gap_m}, {edge_px}")
    if prompt_xy is None:
        return None
    arr = np.asarray(prompt_xy, dtype=np.float64).reshape(-1)
    if arr.shape != (2,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"prompt_xy must be one finite (x, y) pixel, got {prompt_xy!r}")
    return arr


def lift(
    mask: np.ndarray,
    depth_raw: np.ndarray,
    intrinsics: CameraIntrinsics,
    rgb: np.ndarray | None = None,
    prompt_xy: tuple[float, float] | np.ndarray | None = None,
    erode_px: int = 0,
    max_depth_m: float = 10.0,
    outlier_nb: int = 20,
    outlier_std: float = 2.0,
    dbscan_eps_m: float | None = None,
    pose: np.ndarray | None = None,
    *,
    dbscan_min_points: int = 6,
    max_points: int = 1000,
    compute_volume: bool = True,
    edge_gap_m: float | None = EDGE_GAP_M,
    edge_px: int = EDGE_PX,
) -> LiftResult:
    """Lift one object mask into a 3D point cloud with centroid, oriented box and volume.

    Args:
        mask: HxW bool object mask (nonzero = object), same size as ``depth_raw``.
        depth_raw: HxW uint16 or float raw depth aligned to the mask; metres = raw *
            ``intrinsics.depth_scale_m``. 0, NaN and values beyond ``max_depth_m`` are invalid.
        intrinsics: pinhole intrinsics of the depth image.
        rgb: optional HxWx3 uint8 RGB image for point colours.
        prompt_xy: optional (x, y) pixel of the user's prompt; picks the cluster to keep.
        erode_px: mask erosion radius in pixels before the depth-edge test (0 = off); it trims
            the rim of curved objects with the flying pixels.
        outlier_nb, outlier_std: statistical outlier removal (0 neighbours = off).
        dbscan_eps_m: DBSCAN radius; ``None`` = 4 representative spacings (>= 1 cm).
        pose: optional 4x4 camera-to-world pose; outputs are then in the world frame.
        dbscan_min_points: DBSCAN core-point threshold.
        max_points: about this many representatives (at most one per block) go through outlier
            removal and DBSCAN; more is finer clustering and slower.
        compute_volume: compute ``volume_m3`` (convex hull).
        edge_gap_m: drop mask pixels more than this far (metres; times (z / 1 m)^2 beyond 1 m)
            behind the nearest depth z within ``edge_px`` pixels (``None`` = off; default
            :data:`EDGE_GAP_M`): flying pixels go, the rim of a curved object stays.
        edge_px: window radius (pixels) of the ``edge_gap_m`` test (default :data:`EDGE_PX`).

    Returns:
        :class:`LiftResult`; ``status`` "empty_mask", "no_depth" (no valid depth under the
        mask) or "no_cluster" (everything filtered away) are normal outcomes, not exceptions.

    Raises:
        ValueError: mask/depth/rgb shapes disagree, depth size differs from the intrinsics, or a
            bad pose/prompt/parameter.
    """
    t0 = time.perf_counter()
    check_depth(depth_raw, intrinsics)
    mask = check_mask(mask, depth_raw)
    prompt = _check_args(depth_raw, rgb, prompt_xy, erode_px, max_points, edge_px, edge_gap_m)
    pose = check_pose(pose)
    frame = "camera" if pose is None else "world"
    cam = np.zeros(3) if pose is None else pose[:3, 3].copy()
    timings: dict[str, float] = {}

    cropped = _crop_and_erode(mask, erode_px, edge_px if edge_gap_m is not None else 0)
    if cropped is None:
        return _empty("empty_mask", frame, cam, timings)
    crop, y0, x0 = cropped
    h, w = crop.shape
    z = depth_to_m(depth_raw[y0 : y0 + h, x0 : x0 + w], intrinsics.depth_scale_m, max_depth_m)
    if edge_gap_m is not None:
        crop = crop & ~_behind_depth_edge(z, edge_px, edge_gap_m)
    z[~crop] = np.nan
    n_valid = int(np.count_nonzero(~np.isnan(z)))
    if n_valid < max(dbscan_min_points, 1):
        return _empty("no_depth", frame, cam, timings)

    reps = _block_reps(z, max(1, math.ceil(math.sqrt(n_valid / max_points))))
    rep_pts = deproject_pixels(reps.u + x0, reps.v + y0, reps.z, intrinsics)
    t1 = time.perf_counter()
    timings["prepare"] = (t1 - t0) * 1e3

    eps = dbscan_eps_m if dbscan_eps_m is not None else _auto_eps_m(reps, intrinsics)
    labels = _filter_and_cluster(rep_pts, outlier_nb, outlier_std, eps, dbscan_min_points)
    t2 = time.perf_counter()
    timings["filter_cluster"] = (t2 - t1) * 1e3
    if not np.any(labels >= 0):
        return _empty("no_cluster", frame, cam, timings)
    rep_xy = np.stack([reps.u + x0, reps.v + y0], axis=1)
    chosen = _choose_cluster(labels, rep_pts, rep_xy, prompt, depth_raw, intrinsics, max_depth_m)
    rep_keep = _readmit_border(reps, rep_pts, labels, chosen, eps)
    keep = _map_back(z, reps, rep_keep, eps)
    v, u = np.nonzero(keep)
    pts = deproject_pixels(u + x0, v + y0, z[v, u], intrinsics)
    cluster_pts = rep_pts[rep_keep]
    if pose is not None:
        pts, cluster_pts = transform_points(pts, pose), transform_points(cluster_pts, pose)
    colors = None if rgb is None else rgb[v + y0, u + x0].astype(np.float64) / 255.0
    pixels = np.stack([u + x0, v + y0], axis=1).astype(np.int32)
    volume = hull_volume_m3(cluster_pts) if compute_volume else None
    return _ok_result(pts, colors, pixels, volume, cam, frame, timings, t0, t2)


def _ok_result(
    pts: np.ndarray,
    colors: np.ndarray | None,
    pixels: np.ndarray,
    volume: float | None,
    cam: np.ndarray,
    frame: str,
    timings: dict[str, float],
    t0: float,
    t2: float,
) -> LiftResult:
    center, rot, ext = oriented_box(pts)
    centroid = (np.ones(len(pts)) @ pts) / len(pts)  # BLAS; pts.mean(axis=0) is ~10x slower
    timings["box"] = (time.perf_counter() - t2) * 1e3
    timings["total"] = (time.perf_counter() - t0) * 1e3
    extent_sorted = np.sort(ext)[::-1].copy()
    return LiftResult("ok", pts, colors, pixels, centroid, center, rot, ext, extent_sorted, volume, cam, frame, timings)


def _readmit_border(reps: _Reps, rep_pts: np.ndarray, labels: np.ndarray, chosen: int, eps_m: float) -> np.ndarray:
    """Keep mask (R,) of the chosen cluster plus statistical outliers within ``eps_m`` of it.

    SOR also strips a clean surface's rim (rim points have neighbours on one side only); those
    come back as DBSCAN border points would. Neighbours are looked up in the 5x5 surrounding
    blocks of the organised grid (no k-d tree); single hop, so a chain of outliers (a bridge of
    flying pixels) does not propagate.
    """
    keep = labels == chosen
    loose = np.flatnonzero(labels == -1)
    if loose.size == 0:
        return keep
    hb, wb = reps.grid_hw
    grid = np.full((hb + 4, wb + 4), -1, dtype=np.int64)
    core = np.flatnonzero(keep)
    grid[reps.block_id[core] // wb + 2, reps.block_id[core] % wb + 2] = core
    dy, dx = (a.reshape(1, -1) for a in np.mgrid[-2:3, -2:3])
    nb = grid[reps.block_id[loose, None] // wb + 2 + dy, reps.block_id[loose, None] % wb + 2 + dx]  # (L, 25)
    d2 = ((rep_pts[loose, None, :] - rep_pts[nb]) ** 2).sum(axis=2)
    keep[loose[np.any((nb >= 0) & (d2 <= eps_m * eps_m), axis=1)]] = True
    return keep


def _map_back(z: np.ndarray, reps: _Reps, rep_keep: np.ndarray, tol_m: float) -> np.ndarray:
    """Full-resolution keep mask (crop-sized): block kept and depth within ``tol_m`` of its rep."""
    h, w = z.shape
    if reps.step == 1:
        keep = np.zeros(h * w, dtype=bool)
        keep[reps.block_id[rep_keep]] = True
        return keep.reshape(h, w)
    hb, wb = reps.grid_hw
    zrep = np.full(hb * wb, np.nan)
    zrep[reps.block_id[rep_keep]] = reps.z[rep_keep]
    zimg = np.repeat(np.repeat(zrep.reshape(hb, wb), reps.step, axis=0), reps.step, axis=1)[:h, :w]
    with np.errstate(invalid="ignore"):
        return np.abs(z - zimg) <= tol_m
