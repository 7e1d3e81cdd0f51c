"""Exact pinhole deprojection and small numpy geometry helpers for the 3D side.

Pixel convention: pixel ``(u, v)`` (column, row) has its centre at integer coordinates, so a
pixel's ray is ``((u - cx) / fx, (v - cy) / fy, 1)`` - the convention of OpenCV, Open3D and
RealSense (``cx = 319.5`` is the centre of a 640-wide image). Camera frame: x right, y down,
z forward, metres.
"""

from __future__ import annotations

import numpy as np

from engine.types import CameraIntrinsics


def check_depth(depth_raw: np.ndarray, intrinsics: CameraIntrinsics) -> None:
    """Raise ``ValueError`` unless ``depth_raw`` is a 2-D numeric image of the intrinsics' size."""
    if not isinstance(depth_raw, np.ndarray) or depth_raw.ndim != 2:
        shape = getattr(depth_raw, "shape", type(depth_raw).__name__)
        raise ValueError(f"depth_raw must be a 2-D HxW array, got {shape}; pass one depth channel")
    if not (np.issubdtype(depth_raw.dtype, np.integer) or np.issubdtype(depth_raw.dtype, np.floating)):
        raise ValueError(f"depth_raw must be uint16 or float, got dtype {depth_raw.dtype}")
    if depth_raw.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(
            f"depth_raw is {depth_raw.shape[1]}x{depth_raw.shape[0]} (WxH) but the intrinsics are "
            f"{intrinsics.width}x{intrinsics.height}; align/resize depth or load the stream's intrinsics"
        )


def check_mask(mask: np.ndarray, depth_raw: np.ndarray) -> np.ndarray:
    """Return ``mask`` as a bool HxW array; ``ValueError`` naming both shapes when they differ."""
    mask = np.asarray(mask)
    if mask.shape != depth_raw.shape:
        raise ValueError(
            f"mask shape {mask.shape} differs from depth shape {depth_raw.shape}; "
            "resize the mask to the depth image (nearest neighbour) or align depth to colour"
        )
    return mask if mask.dtype == np.bool_ else mask != 0


def depth_to_m(
    depth_raw: np.ndarray, depth_scale_m: float, max_depth_m: float = np.inf, min_depth_m: float = 0.0
) -> np.ndarray:
    """``depth_raw`` (HxW uint16 or float, raw units) -> HxW float64 metres, NaN where invalid.

    Invalid: raw 0, NaN/inf, ``<= min_depth_m`` or ``> max_depth_m`` after scaling. Float depth is
    also in raw units (scaled by ``depth_scale_m``); for metric float depth use ``depth_scale_m=1``.
    """
    z = depth_raw.astype(np.float64) * depth_scale_m
    bad = ~np.isfinite(z) | (z <= max(min_depth_m, 0.0)) | (z > max_depth_m)
    z[bad] = np.nan
    return z


def pixel_rays(u: np.ndarray, v: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    """Rays through pixels ``u, v`` (arrays of one shape) -> ``(..., 3)`` float64 with z = 1, so the
    camera-frame point at z-depth ``z_m`` is ``z_m * ray``. The one place the pinhole back-projection
    is written (lifting, the demo's ray caster, the synthetic RealSense scene, bench_lift use it)."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    return np.stack([(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy, np.ones_like(u)], -1)


def camera_rays(intrinsics: CameraIntrinsics) -> np.ndarray:
    """``pixel_rays`` of every pixel: ``(H, W, 3)`` float64 with z = 1 (a hit distance along the ray
    is the pixel's z-depth)."""
    v, u = np.mgrid[0 : intrinsics.height, 0 : intrinsics.width].astype(np.float64)
    return pixel_rays(u, v, intrinsics)


def deproject_pixels(u: np.ndarray, v: np.ndarray, z_m: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    """Pixels ``u, v`` (N,) and depths ``z_m`` (N,) metres -> (N, 3) float64 camera-frame points."""
    return pixel_rays(u, v, intrinsics) * np.asarray(z_m, np.float64)[:, None]


def deproject(
    depth_raw: np.ndarray,
    intrinsics: CameraIntrinsics,
    mask: np.ndarray | None = None,
    max_depth_m: float = np.inf,
) -> np.ndarray:
    """Deproject valid depth pixels (inside ``mask`` if given) to camera-frame points.

    Args:
        depth_raw: HxW uint16 or float raw depth; metres = raw * ``intrinsics.depth_scale_m``.
        intrinsics: pinhole intrinsics of the depth image (distortion is ignored: pass a
            rectified/aligned stream).
        mask: optional HxW bool; only its pixels are deprojected.
        max_depth_m: depths beyond this are dropped (0 and NaN are always dropped).

    Returns:
        (N, 3) float64 metres, rows in row-major pixel order (v, then u).
    """
    check_depth(depth_raw, intrinsics)
    z = depth_to_m(depth_raw, intrinsics.depth_scale_m, max_depth_m)
    valid = ~np.isnan(z)
    if mask is not None:
        valid &= check_mask(mask, depth_raw)
    v, u = np.nonzero(valid)
    return deproject_pixels(u, v, z[v, u], intrinsics)


def transform_points(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid ``pose`` (e.g. camera-to-world) to (N, 3) points; returns (N, 3) float64."""
    return points @ pose[:3, :3].T + pose[:3, 3]


def check_pose(pose: np.ndarray | None) -> np.ndarray | None:
    """Validate an optional 4x4 homogeneous pose; returns it as float64."""
    if pose is None:
        return None
    from engine.validate import pose as check

    return check("pose (4x4 camera-to-world)", pose)


def oriented_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA oriented bounding box of (N, 3) points (N >= 1).

    Returns ``(center (3,), rotation (3, 3), extent (3,))`` in the points' units: the box's axes
    are the rotation's columns (right-handed, largest variance first) and ``extent[i]`` is the
    box's length along column ``i``. Written as BLAS products because numpy's axis-0 reductions
    over an (N, 3) array are several times slower.
    """
    n = points.shape[0]
    mean = (np.ones(n) @ points) / n
    cov = (points.T @ points) / n - np.outer(mean, mean)
    _, vecs = np.linalg.eigh(cov)
    rot = vecs[:, ::-1].copy()
    if np.linalg.det(rot) < 0:
        rot[:, 2] *= -1
    local = rot.T @ points.T  # (3, N), rows contiguous
    lo, hi = local.min(axis=1), local.max(axis=1)
    center = rot @ ((lo + hi) / 2)
    return center, rot, hi - lo


def hull_volume_m3(points: np.ndarray) -> float | None:
    """Convex-hull volume (m^3 for metres) of (N, 3) points; ``None`` when degenerate (flat, < 4 points)."""
    if len(points) < 4:
        return None
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    try:
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            hull, _ = pcd.compute_convex_hull()
    except RuntimeError:
        return None
    tri = np.asarray(hull.vertices)[np.asarray(hull.triangles)]  # (T, 3, 3)
    if len(tri) == 0:
        return None
    # divergence theorem on the closed hull (mesh.get_volume would re-check watertightness)
    volume = abs(float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum())) / 6.0
    return volume if volume > 0 else None
