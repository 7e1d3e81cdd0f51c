"""Surface reconstruction from a lifted cloud and PLY / OBJ / GLB export (Open3D, lazy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.lift.single import LiftResult

MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf")


def reconstruct_mesh(
    result: LiftResult,
    method: str = "alpha",
    alpha_m: float | None = None,
    poisson_depth: int = 8,
    density_quantile: float = 0.05,
) -> Any:
    """Mesh the lifted points; returns an ``open3d.geometry.TriangleMesh`` in ``result.frame``.

    Args:
        result: an ``ok`` :class:`LiftResult`.
        method: ``"alpha"`` (alpha shape: faithful, may have holes) or ``"poisson"`` (screened
            Poisson: watertight, smooth; normals are oriented towards ``result.camera_center_m``).
        alpha_m: alpha-shape radius in metres; ``None`` = 3 % of the largest extent (>= 5 mm).
        poisson_depth: octree depth for Poisson.
        density_quantile: Poisson vertices whose support density is below this quantile are
            removed (they are extrapolated surface, far from any point).
    """
    import open3d as o3d

    if result.status != "ok":
        raise ValueError(f"cannot mesh a lift with status {result.status!r}; check result.status first")
    if result.num_points < 4:
        raise ValueError(f"need at least 4 points to mesh, got {result.num_points}")
    pcd = result.point_cloud()
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        if method == "alpha":
            alpha = alpha_m if alpha_m is not None else max(0.005, 0.03 * float(result.extent_m[0]))
            pcd = pcd.voxel_down_sample(alpha / 3)
            mesh = o3d.geometry.TriangleMesh.create_from_point_cloud_alpha_shape(pcd, alpha)
        elif method == "poisson":
            pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(30))
            pcd.orient_normals_towards_camera_location(result.camera_center_m)
            mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=poisson_depth)
            density = np.asarray(density)
            mesh.remove_vertices_by_mask(density < np.quantile(density, density_quantile))
        else:
            raise ValueError(f"unknown mesh method {method!r}; use 'alpha' or 'poisson'")
    mesh.compute_vertex_normals()
    return mesh


def save_ply(path: str | Path, cloud: LiftResult | Any) -> Path:
    """Write a :class:`LiftResult` or an ``open3d`` PointCloud as binary PLY; returns the path."""
    import open3d as o3d

    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise ValueError(f"save_ply writes .ply files, got {path.name!r}")
    pcd = cloud.point_cloud() if isinstance(cloud, LiftResult) else cloud
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_point_cloud(str(path), pcd, write_ascii=False):
        raise OSError(f"open3d could not write {path}")
    return path


def save_mesh(path: str | Path, mesh: Any) -> Path:
    """Write an ``open3d`` TriangleMesh as PLY, OBJ or GLB/glTF (from the suffix); returns the path."""
    import open3d as o3d

    path = Path(path)
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"mesh format {path.suffix!r} not supported; use one of {', '.join(MESH_SUFFIXES)}")
    if len(mesh.triangles) == 0:
        raise ValueError(f"refusing to write an empty mesh to {path}; check the reconstruction input")
    path.parent.mkdir(parents=True, exist_ok=True)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        ok = o3d.io.write_triangle_mesh(str(path), mesh)
    if not ok:
        raise OSError(f"open3d could not write {path}")
    return path
