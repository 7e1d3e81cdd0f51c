"""3D side: lift a mask + aligned depth into a point cloud, box and mesh; fuse views with TSDF.

Open3D is imported inside the functions that need it, so ``import engine.lift`` works without it.

- :func:`deproject` exact pinhole deprojection of valid depth.
- :func:`lift` single-view object lifting -> :class:`LiftResult`; :data:`EDGE_GAP_M`, :data:`EDGE_PX` its flying-pixel rule.
- :func:`reconstruct_mesh`, :func:`save_ply`, :func:`save_mesh` meshing and export.
- :func:`fuse_tsdf` masked multi-view TSDF fusion; :func:`fuse_points` the seen points, voxelised; :func:`read_redwood_log` trajectories.
"""

from engine.lift.export import reconstruct_mesh, save_mesh, save_ply
from engine.lift.fusion import fuse_points, fuse_tsdf, read_redwood_log
from engine.lift.geometry import deproject, depth_to_m, hull_volume_m3, oriented_box, transform_points
from engine.lift.single import EDGE_GAP_M, EDGE_PX, LiftResult, lift

__all__ = [
    "EDGE_GAP_M",
    "EDGE_PX",
    "LiftResult",
    "deproject",
    "depth_to_m",
    "fuse_points",
    "fuse_tsdf",
    "hull_volume_m3",
    "lift",
    "oriented_box",
    "read_redwood_log",
    "reconstruct_mesh",
    "save_mesh",
    "save_ply",
    "transform_points",
]
