"""A synthetic RGB-D table-top scene rendered by Open3D's ``RaycastingScene``, RealSense-like noise.

Three objects of known size (a box, a can, a ball) stand on a textured table; a camera orbits
slowly around them. Every rendered view gives what a RealSense D435 would (colour ``HxWx3 uint8
RGB``, depth ``HxW uint16`` millimetres aligned to colour, with depth-proportional noise, holes and
edge dropouts) plus the ground truth a real camera cannot: the per-pixel object id, the
camera-to-world pose and each object's true oriented-box extents.

Conventions: world z up, the table top is the plane z = 0; cameras are x right, y down, z forward
(OpenCV); poses are 4x4 float64 camera-to-world; object ids are 1..N in the truth map, 0 elsewhere.
Open3D is imported inside the functions that use it. Everything is deterministic given the seed.
Render time per view is the ``render`` stage of ``arsel demo``'s summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from engine.lift.geometry import camera_rays
from engine.types import CameraIntrinsics

ObjectKind = Literal["box", "cylinder", "sphere"]
D435_640 = CameraIntrinsics(640, 480, 615.0, 615.0, 319.5, 239.5, 0.001)
"""RealSense-D435-like colour intrinsics at 640x480 (depth aligned to colour, millimetres)."""
_LIGHT_DIR = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])


def look_at(eye: Any, target: Any, up: Any = (0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 float64 camera-to-world pose (x right, y down, z forward) at ``eye`` looking at ``target``.

    ``eye``, ``target``: world points (3,) in metres; ``up``: world up (z by default).
    """
    eye_, fwd = np.asarray(eye, float), np.asarray(target, float) - np.asarray(eye, float)
    norm = np.linalg.norm(fwd)
    if norm == 0:
        raise ValueError(f"look_at: eye and target coincide at {eye_.tolist()}")
    fwd /= norm
    right = np.cross(fwd, np.asarray(up, float))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to 'up'; tilt the camera or change 'up'")
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, np.cross(fwd, right), fwd], axis=1)
    pose[:3, 3] = eye_
    return pose


def raycast(rc: Any, pose: np.ndarray, intrinsics: CameraIntrinsics, rays_cam: np.ndarray | None = None) -> dict:
    """Cast one pinhole view of an ``open3d.t.geometry.RaycastingScene``.

    Returns numpy arrays: ``z_m`` (H, W) float64 z-depth (0 = miss), ``geometry_ids`` (H, W)
    uint32 (``RaycastingScene.INVALID_ID`` = miss), ``normals`` (H, W, 3) float32 world-frame face
    normals, ``points_m`` (H, W, 3) world hit points in the dtype of ``rays_cam`` (undefined where
    missed). Pass float32 ``rays_cam`` for speed when millimetre precision of ``points_m`` suffices.
    """
    import open3d as o3d

    rays_cam = camera_rays(intrinsics) if rays_cam is None else rays_cam
    ray_w = rays_cam @ pose[:3, :3].T.astype(rays_cam.dtype)
    rays = np.concatenate([np.broadcast_to(pose[:3, 3], ray_w.shape), ray_w], axis=-1).astype(np.float32)
    ans = rc.cast_rays(o3d.core.Tensor(rays))
    z = ans["t_hit"].numpy().astype(np.float64)
    z[~np.isfinite(z)] = 0.0
    return {
        "z_m": z,
        "geometry_ids": ans["geometry_ids"].numpy(),
        "normals": ans["primitive_normals"].numpy(),
        "points_m": pose[:3, 3].astype(ray_w.dtype) + ray_w * z[..., None].astype(ray_w.dtype),
    }


def realsense_noise(
    z: np.ndarray,
    rng: np.random.Generator,
    hole_frac: float = 0.03,
    *,
    edge_dropout: float = 0.0,
    blob_hole_frac: float = 0.0,
    max_range_m: float = 10.0,
) -> np.ndarray:
    """Noise-free z-depth (HxW metres, 0 = miss) -> RealSense-like ``uint16`` millimetre depth.

    Gaussian noise 1 mm at 1 m growing with z^2 (stereo), flying pixels (mixed depths) on depth
    edges, random single-pixel holes (``hole_frac``); optionally invalidated pixels next to depth
    edges (``edge_dropout``: probability per edge pixel, the stereo-shadow band), clumped holes
    (``blob_hole_frac`` of the image in blobs of ~10 px, textureless/specular patches) and no
    depth beyond ``max_range_m``. The defaults reproduce the model the lifting tests were written
    against (the optional terms draw their random numbers afterwards).
    """
    noisy = z + rng.normal(size=z.shape) * 0.001 * z**2
    zf = np.where(z > 0, z, 10.0).astype(np.float32)
    lo, hi = cv2.erode(zf, np.ones((3, 3))), cv2.dilate(zf, np.ones((3, 3)))
    flying = (hi - lo > 0.05) & (hi < 9) & (rng.random(z.shape) < 0.5)  # mixed pixels on depth edges
    noisy[flying] = lo[flying] + rng.random(int(flying.sum())) * (hi - lo)[flying]
    noisy[(rng.random(z.shape) < hole_frac) | (z == 0) | (z > max_range_m)] = 0
    if edge_dropout > 0:
        edge = cv2.dilate(((hi - lo) > 0.02).astype(np.uint8), np.ones((3, 3))) > 0
        noisy[edge & (rng.random(z.shape) < edge_dropout)] = 0
    if blob_hole_frac > 0:
        h, w = z.shape
        coarse = rng.random((max(1, h // 10), max(1, w // 10))).astype(np.float32)
        blobs = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) < blob_hole_frac
        noisy[blobs] = 0
    return np.round(noisy * 1000).clip(0, 65535).astype(np.uint16)


@dataclass(frozen=True, slots=True)
class SceneObject:
    """One object on the table. ``size_m``: box (x, y, z) sides, cylinder (diameter, diameter,
    height), sphere (d, d, d); ``xy_m`` its footprint centre on the table (it stands on z = 0);
    ``yaw_rad`` rotation about world z; ``color_rgb`` base albedo (uint8 triplet)."""

    object_id: int
    name: str
    kind: ObjectKind
    size_m: tuple[float, float, float]
    xy_m: tuple[float, float]
    yaw_rad: float = 0.0
    color_rgb: tuple[int, int, int] = (200, 60, 40)

    def __post_init__(self) -> None:
        if self.kind not in ("box", "cylinder", "sphere"):
            raise ValueError(f"SceneObject.kind must be 'box', 'cylinder' or 'sphere', got {self.kind!r}")
        if not 1 <= self.object_id <= 254 or min(self.size_m) <= 0:
            raise ValueError(f"SceneObject needs 1 <= object_id <= 254 and positive sizes, got {self}")

    @property
    def center_m(self) -> np.ndarray:
        """(3,) world centre of the object's box, metres."""
        return np.array([self.xy_m[0], self.xy_m[1], self.size_m[2] / 2])

    @property
    def true_extent_m(self) -> np.ndarray:
        """(3,) float64 true oriented-box extents, sorted descending (metres)."""
        return np.sort(np.asarray(self.size_m, np.float64))[::-1].copy()

    def mesh(self) -> Any:
        """Legacy ``open3d.geometry.TriangleMesh`` placed in the world."""
        import open3d as o3d

        sx, sy, sz = self.size_m
        if self.kind == "box":
            mesh = o3d.geometry.TriangleMesh.create_box(sx, sy, sz).translate((-sx / 2, -sy / 2, -sz / 2))
        elif self.kind == "cylinder":
            mesh = o3d.geometry.TriangleMesh.create_cylinder(sx / 2, sz, resolution=64, split=1)
        else:
            mesh = o3d.geometry.TriangleMesh.create_sphere(sx / 2, resolution=48)
        mesh.rotate(o3d.geometry.get_rotation_matrix_from_xyz((0, 0, self.yaw_rad)), center=(0, 0, 0))
        return mesh.translate(self.center_m)


def default_objects() -> tuple[SceneObject, ...]:
    """Box 22x12x8 cm (yawed 25 deg), can 7 cm x 14 cm tall, ball 10 cm, left to right from the front."""
    return (
        SceneObject(1, "box", "box", (0.22, 0.12, 0.08), (-0.21, 0.02), math.radians(25), (215, 70, 35)),
        SceneObject(2, "can", "cylinder", (0.07, 0.07, 0.14), (0.02, 0.10), 0.0, (35, 95, 215)),
        SceneObject(3, "ball", "sphere", (0.10, 0.10, 0.10), (0.21, -0.04), 0.0, (250, 210, 40)),
    )


def table_texture(seed: int = 0) -> np.ndarray:
    """A table-top texture from a real photo: scikit-image's brick wall, tinted wood-brown and
    softened (``(512, 512, 3)`` uint8 RGB). Falls back to seeded noise without scikit-image data."""
    try:
        from skimage import data

        grey = data.brick().astype(np.float32) / 255.0
    except Exception:  # noqa: BLE001 - any missing-data failure: procedural texture instead
        rng = np.random.default_rng(seed)
        grey = cv2.GaussianBlur(rng.random((512, 512)).astype(np.float32), (0, 0), 3)
    grey = 0.6 + 0.35 * (grey - grey.mean()) / (grey.std() * 3 + 1e-6)
    tint = np.array([150, 118, 88], np.float32)
    return np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)


@dataclass(frozen=True, slots=True)
class RenderedView:
    """One rendered view. ``rgb`` (H, W, 3) uint8 RGB; ``depth_raw`` (H, W) uint16 mm with noise;
    ``z_m`` (H, W) float64 noise-free z-depth (0 = miss); ``object_ids`` (H, W) uint8 (0 = table or
    nothing); ``pose`` (4, 4) float64 camera-to-world."""

    rgb: np.ndarray
    depth_raw: np.ndarray
    z_m: np.ndarray
    object_ids: np.ndarray
    pose: np.ndarray


@dataclass
class TableScene:
    """Objects on a textured table; ``render(pose, rng)`` -> :class:`RenderedView`.

    ``table_size_m``: side of the square table (centred at the origin, top at z = 0).
    """

    objects: tuple[SceneObject, ...] = field(default_factory=default_objects)
    intrinsics: CameraIntrinsics = D435_640
    table_size_m: float = 2.4
    texture_tile_m: float = 0.6
    seed: int = 0
    _rc: Any = field(init=False, repr=False)
    _id_lut: np.ndarray = field(init=False, repr=False)
    _colors: np.ndarray = field(init=False, repr=False)
    _rays: np.ndarray = field(init=False, repr=False)
    _texture: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import open3d as o3d

        ids = [o.object_id for o in self.objects]
        if len(set(ids)) != len(ids):
            raise ValueError(f"scene object ids must be unique, got {ids}")
        self._rc = o3d.t.geometry.RaycastingScene()
        s = self.table_size_m
        table = o3d.geometry.TriangleMesh.create_box(s, s, 0.02).translate((-s / 2, -s / 2, -0.02))
        meshes = [table] + [o.mesh() for o in self.objects]
        geom = [self._rc.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m)) for m in meshes]
        self._id_lut = np.zeros(max(geom) + 1, np.uint8)
        self._colors = np.zeros((max(ids, default=0) + 1, 3), np.float32)
        for g, obj in zip(geom[1:], self.objects):
            self._id_lut[g] = obj.object_id
            self._colors[obj.object_id] = obj.color_rgb
        self._rays = camera_rays(self.intrinsics).astype(np.float32)  # z-depth stays float64 (t_hit)
        self._texture = table_texture(self.seed).astype(np.float32)

    def object(self, object_id: int) -> SceneObject:
        """The object with ``object_id``; ValueError naming the ids there are."""
        for obj in self.objects:
            if obj.object_id == object_id:
                return obj
        raise ValueError(f"no object {object_id} in the scene; ids are {[o.object_id for o in self.objects]}")

    def render(self, pose: np.ndarray, rng: np.random.Generator, noise: bool = True) -> RenderedView:
        """Render colour, noisy depth and the id map from camera-to-world ``pose`` (4x4)."""
        hit = raycast(self._rc, pose, self.intrinsics, self._rays)
        z, gid = hit["z_m"], hit["geometry_ids"]
        valid = z > 0
        ids = np.zeros(z.shape, np.uint8)
        ids[valid] = self._id_lut[np.minimum(gid[valid], len(self._id_lut) - 1)]
        rgb = self._shade(hit, ids, valid, pose)
        if noise:
            rgb = np.clip(rgb + 2.0 * rng.standard_normal(rgb.shape, dtype=np.float32), 0, 255)
            depth = realsense_noise(z, rng, 0.005, edge_dropout=0.3, blob_hole_frac=0.01, max_range_m=4.0)
        else:
            depth = np.round(z * 1000).clip(0, 65535).astype(np.uint16)
        return RenderedView(rgb.astype(np.uint8), depth, z, ids, np.asarray(pose, np.float64))

    def _shade(self, hit: dict, ids: np.ndarray, valid: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Lambertian shading (ambient 0.35 + diffuse 0.65) of per-object albedo or the table texture."""
        normals = hit["normals"]
        view = pose[:3, 3].astype(np.float32) - hit["points_m"]
        facing = np.where(np.einsum("hwc,hwc->hw", normals, view) < 0, -1.0, 1.0).astype(np.float32)
        lambert = 0.35 + 0.65 * np.clip(facing * (normals @ _LIGHT_DIR.astype(np.float32)), 0, 1)
        albedo = self._colors[ids].astype(np.float32)
        table = valid & (ids == 0)
        th, tw = self._texture.shape[:2]
        uv = 1.0 - np.abs(hit["points_m"][table][:, :2] / self.texture_tile_m % 2.0 - 1.0)  # mirrored repeat
        tu = np.minimum((uv[:, 0] * tw).astype(np.int32), tw - 1)
        tv = np.minimum((uv[:, 1] * th).astype(np.int32), th - 1)
        albedo[table] = self._texture[tv, tu]
        rgb = albedo * lambert[..., None]
        rgb[~valid] = (70, 75, 85)  # the room beyond the table: no depth (out of range)
        return rgb


def orbit_poses(n: int, radius_m: float = 0.85, elevation_deg: float = 40.0, sweep_deg: float = 30.0,
                target_m: tuple[float, float, float] = (0.0, 0.02, 0.04)) -> list[np.ndarray]:
    """``n`` camera-to-world poses on a slow, smooth arc in front of the table (-y side).

    Azimuth sweeps ``sweep_deg`` centred on the front; elevation and radius breathe gently; the
    look-at target pans a few centimetres. Returns (4, 4) float64 poses.
    """
    if n < 1:
        raise ValueError(f"orbit_poses needs n >= 1, got {n}")
    poses = []
    for k in range(n):
        t = k / max(1, n - 1)
        az = math.radians(-90.0 + sweep_deg * (t - 0.5))
        el = math.radians(elevation_deg + 4.0 * math.sin(2 * math.pi * t))
        r = radius_m + 0.04 * math.cos(2 * math.pi * t)
        eye = np.array([r * math.cos(az) * math.cos(el), r * math.sin(az) * math.cos(el), r * math.sin(el)])
        target = np.asarray(target_m) + np.array([0.03 * math.sin(math.pi * t), 0.0, 0.0])
        poses.append(look_at(eye + np.asarray(target_m), target))
    return poses


def project_points(points_m: np.ndarray, pose: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    """World points ``(N, 3)`` -> pixels ``(N, 2)`` float64 (NaN for points behind the camera)."""
    cam = (np.asarray(points_m, np.float64) - pose[:3, 3]) @ pose[:3, :3]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = intrinsics.fx * cam[:, 0] / cam[:, 2] + intrinsics.cx
        v = intrinsics.fy * cam[:, 1] / cam[:, 2] + intrinsics.cy
    out = np.stack([u, v], axis=1)
    out[cam[:, 2] <= 0] = np.nan
    return out
