"""Live 3D views of lifted objects: a desktop Open3D window, a Rerun recording or stream, a viser server.

Every view has one interface (:class:`ObjectView`), called once per frame from the demo loop:

- ``log_frame(frame, masks, gaze_xy)``: the colour image, the object masks (``{object_id: HxW
  bool}``) and the gaze point (frame pixels, or None) at the frame's time;
- ``update(object_id, result)``: an object's latest good :class:`LiftResult` (cloud + oriented box);
- ``remove_all()``; ``poll() -> bool`` (False once the user closed the view); ``close()``.

:func:`open_view` picks one by name (the demos' ``--view``):

==========================  =========================================================================
``open3d``                  a desktop window (needs a display)
``rerun:FILE.rrd``          record to a file; open it with ``rerun FILE.rrd``
``rerun:serve``             serve over gRPC + a web viewer (``rerun-sdk`` >= 0.23); URL in ``.address``
``rerun:connect[=URL]``     stream to a running viewer (default ``rerun+http://127.0.0.1:9876/proxy``)
``viser[:[HOST:]PORT]``     a viser web server (default 127.0.0.1:8080; ``viser:0.0.0.0:8080`` for a
                            headset on the network: anyone there can then watch)
``none``                    no 3D view
==========================  =========================================================================

Rerun and viser are imported lazily (``pip install 'arsel[viz]'``). Rerun entities:
``world/camera`` (pinhole), ``world/camera/image`` (RGB), ``.../image/mask`` (segmentation ids =
object ids), ``.../image/gaze``, ``world/objects/<id>/points`` and ``world/objects/<id>/box``;
timelines ``frame`` (index) and ``time`` (``Frame.timestamp_ns``). All 3D data stay in camera
coordinates (x right, y down, z forward, metres); each view sets its own up axis.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from engine.extras import require
from engine.imageio import PALETTE, draw_overlay
from engine.lift.single import LiftResult
from engine.types import Frame

VIEW_FORMS = "open3d | rerun:FILE.rrd | rerun:serve | rerun:connect[=URL] | viser[:[HOST:]PORT] | none"
# Open3D shows +y up and looks down -z; camera frames have y down and look down +z.
CAMERA_TO_OPEN3D = np.diag([1.0, -1.0, -1.0, 1.0])
# viser's world is +z up: camera x -> x, camera z (forward) -> y, camera y (down) -> -z.
CAMERA_TO_ZUP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
GazeXY = tuple[float, float] | None


class ObjectView(Protocol):
    def log_frame(self, frame: Frame, masks: Mapping[int, np.ndarray], gaze_xy: GazeXY = None) -> None: ...
    def update(self, object_id: int, result: LiftResult) -> None: ...
    def remove_all(self) -> None: ...
    def poll(self) -> bool: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """A parsed ``--view``: ``kind`` in open3d/rerun/viser/none; ``target``: the .rrd path,
    "serve", "connect" or a viewer URL for rerun, the host for viser; ``port`` for viser."""

    kind: str
    target: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> ViewSpec:
        kind, _, rest = text.strip().partition(":")
        if kind in ("open3d", "none") and not rest:
            return cls(kind)
        if kind == "rerun" and rest:
            if rest in ("serve", "connect") or rest.startswith("connect="):
                return cls("rerun", rest.removeprefix("connect=") or "connect")
            if rest.endswith(".rrd"):
                return cls("rerun", rest)
        if kind == "viser":
            host, _, port = rest.rpartition(":")
            if not rest or port.isdigit() and 0 <= int(port) <= 65535:
                return cls("viser", host or "127.0.0.1", int(port) if port else 8080)
        raise ValueError(f"unknown view {text!r}; use {VIEW_FORMS}")


def open_view(spec: str | ViewSpec) -> ObjectView | None:
    """The view named by ``spec`` (see the module docstring); None for ``none``."""
    spec = ViewSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.kind == "none":
        return None
    if spec.kind == "open3d":
        return Open3DView()
    if spec.kind == "viser":
        return ViserView(spec.target or "127.0.0.1", 8080 if spec.port is None else spec.port)
    if spec.target == "serve":
        return RerunView(serve=True)
    if spec.target is not None and spec.target.endswith(".rrd"):
        return RerunView(path=spec.target)
    return RerunView(connect_url=None if spec.target == "connect" else spec.target)


def object_color(object_id: int) -> np.ndarray:
    """The overlay colour of an object (uint8 RGB), as ``engine.imageio.draw_overlay`` paints it."""
    return PALETTE[(object_id - 1) % len(PALETTE)]


def quat_xyzw(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` of a proper 3x3 rotation matrix (Shepperd's method)."""
    r = np.asarray(rotation, np.float64)
    t = np.trace(r)
    if t > 0:
        s = 2.0 * np.sqrt(t + 1.0)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0, 0.0, 0.0, (r[k, j] - r[j, k]) / s]
        q[i], q[j], q[k] = 0.25 * s, (r[j, i] + r[i, j]) / s, (r[k, i] + r[i, k]) / s
    q = np.array(q)
    return q / np.linalg.norm(q)


def _colors_u8(result: LiftResult, object_id: int) -> np.ndarray:
    if result.colors is None:
        return np.broadcast_to(object_color(object_id), result.points_m.shape).copy()
    return np.clip(result.colors * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _check_ok(result: LiftResult) -> None:
    if result.status != "ok":
        raise ValueError(f"a view shows 'ok' lifts only, got status {result.status!r}; check result.status first")


class Open3DView:
    """An Open3D window with one point cloud and one box (line set) per object, updated in place."""

    def __init__(self, title: str = "arsel objects 3D", size_wh: tuple[int, int] = (800, 600)) -> None:
        import open3d as o3d

        self._o3d = o3d
        self.vis = o3d.visualization.Visualizer()
        if not self.vis.create_window(title, width=size_wh[0], height=size_wh[1]):
            raise RuntimeError("Open3D could not open a window (no display?); use --view rerun:FILE.rrd, viser or none")
        self._clouds: dict[int, Any] = {}
        self._boxes: dict[int, Any] = {}

    def log_frame(self, frame: Frame, masks: Mapping[int, np.ndarray], gaze_xy: GazeXY = None) -> None:
        """Nothing: the image and masks are in the demo's OpenCV window."""

    def update(self, object_id: int, result: LiftResult) -> None:
        _check_ok(result)
        o3d = self._o3d
        pcd = result.point_cloud().transform(CAMERA_TO_OPEN3D)
        box = o3d.geometry.LineSet.create_from_oriented_bounding_box(result.bounding_box())
        box.transform(CAMERA_TO_OPEN3D)
        box.paint_uniform_color(object_color(object_id) / 255.0)
        first = not self._clouds
        for store, geom in ((self._clouds, pcd), (self._boxes, box)):
            if object_id in store:  # update in place: keeps the user's viewpoint
                old = store[object_id]
                old.points = geom.points
                if isinstance(geom, o3d.geometry.PointCloud):
                    old.colors = geom.colors
                else:
                    old.lines, old.colors = geom.lines, geom.colors
                self.vis.update_geometry(old)
            else:
                store[object_id] = geom
                self.vis.add_geometry(geom, reset_bounding_box=first)

    def remove_all(self) -> None:
        for geom in [*self._clouds.values(), *self._boxes.values()]:
            self.vis.remove_geometry(geom, reset_bounding_box=False)
        self._clouds.clear()
        self._boxes.clear()

    def poll(self) -> bool:
        alive = self.vis.poll_events()
        self.vis.update_renderer()
        return bool(alive)

    def close(self) -> None:
        self.vis.destroy_window()


def _import(name: str, package: str) -> Any:
    return require("viz", name, what=f"the {name} view ({package})")


class RerunView:
    """Logs to a Rerun recording of its own (not the global one): to ``path`` (.rrd), to a served
    gRPC + web viewer (``serve``; ``address`` is the web viewer's URL), or to a running viewer at
    ``connect_url`` (None: the default local viewer)."""

    def __init__(self, path: str | Path | None = None, serve: bool = False, connect_url: str | None = None,
                 application_id: str = "arsel", web_port: int | None = None, grpc_port: int | None = None) -> None:
        self.rr = rr = _import("rerun", "rerun-sdk")
        self.rec = rr.RecordingStream(application_id)
        self.address: str | None = None
        if path is not None:
            self.rec.save(str(path))
            self.address = str(path)
        elif serve:
            grpc_url = self.rec.serve_grpc(grpc_port=grpc_port)
            rr.serve_web_viewer(web_port=web_port, open_browser=False, connect_to=grpc_url)
            self.address = f"http://localhost:{web_port or 9090}/?url={grpc_url}"
        else:
            self.rec.connect_grpc(connect_url)  # None: the default local viewer
            self.address = connect_url or "rerun+http://127.0.0.1:9876/proxy"
        self.rec.log("world", rr.ViewCoordinates.RDF, static=True)  # camera coordinates
        self._annotated: set[int] = set()
        self._intrinsics: Any = None

    def log_frame(self, frame: Frame, masks: Mapping[int, np.ndarray], gaze_xy: GazeXY = None) -> None:
        rr, rec = self.rr, self.rec
        rec.set_time("frame", sequence=frame.index)
        rec.set_time("time", timestamp=np.datetime64(int(frame.timestamp_ns), "ns"))
        if frame.intrinsics is not None and frame.intrinsics != self._intrinsics:
            k = self._intrinsics = frame.intrinsics
            rec.log("world/camera", rr.Pinhole(focal_length=[k.fx, k.fy], principal_point=[k.cx, k.cy],
                                               resolution=[k.width, k.height]))  # fmt: skip
        rec.log("world/camera/image", rr.Image(frame.rgb, color_model="RGB"))
        if masks:
            self._annotate(masks.keys())
            ids = np.zeros(frame.rgb.shape[:2], np.uint16)
            for oid, mask in sorted(masks.items()):
                ids[mask] = oid
            rec.log("world/camera/image/mask", rr.SegmentationImage(ids))
        else:
            rec.log("world/camera/image/mask", rr.Clear(recursive=False))
        if gaze_xy is not None:
            rec.log("world/camera/image/gaze", rr.Points2D([gaze_xy], radii=6.0, colors=[(255, 255, 0)]))
        else:
            rec.log("world/camera/image/gaze", rr.Clear(recursive=False))

    def _annotate(self, ids: Any) -> None:
        if set(ids) <= self._annotated:
            return
        self._annotated |= set(ids)
        infos = [(0, "background", (0, 0, 0, 0))] + [
            (i, f"object {i}", (*object_color(i).tolist(), 128)) for i in sorted(self._annotated)
        ]
        self.rec.log("world/camera/image", self.rr.AnnotationContext(infos), static=True)

    def update(self, object_id: int, result: LiftResult) -> None:
        _check_ok(result)
        rr, base = self.rr, f"world/objects/{object_id}"
        self.rec.log(f"{base}/points", rr.Points3D(result.points_m, colors=_colors_u8(result, object_id), radii=0.002))
        self.rec.log(f"{base}/box", rr.Boxes3D(
            centers=[result.obb_center_m], half_sizes=[result.obb_extent_m / 2.0],
            quaternions=[rr.Quaternion(xyzw=quat_xyzw(result.obb_rotation))],
            colors=[object_color(object_id)], labels=[f"#{object_id}"],
        ))  # fmt: skip

    def remove_all(self) -> None:
        self.rec.log("world/objects", self.rr.Clear(recursive=True))

    def poll(self) -> bool:
        return True

    def close(self) -> None:
        """Flush and finish the recording (an .rrd file is complete after this)."""
        try:
            self.rec.flush()
        except RuntimeError as exc:  # e.g. no viewer ever answered at connect_url
            warnings.warn(f"Rerun could not deliver the recording to {self.address}: {exc}", stacklevel=2)
        self.rec.disconnect()


class ViserView:
    """A viser web server: clouds and wireframe boxes under a ``/camera`` frame turned to viser's
    +z-up world, and the colour image with masks and gaze in the side panel. ``port=0`` picks a
    free port; ``address`` is the URL to open."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, image_max_side_px: int = 640) -> None:
        viser = _import("viser", "viser")
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.address = f"http://{host}:{self.server.get_port()}"
        self.image_max_side_px = image_max_side_px
        self.root = self.server.scene.add_frame("/camera", show_axes=True, axes_length=0.1, axes_radius=0.003,
                                                wxyz=np.roll(quat_xyzw(CAMERA_TO_ZUP), 1))  # fmt: skip
        self.clouds: dict[int, Any] = {}
        self.boxes: dict[int, Any] = {}
        self._image: Any = None

    def log_frame(self, frame: Frame, masks: Mapping[int, np.ndarray], gaze_xy: GazeXY = None) -> None:
        n = max(masks, default=0)
        ordered = [masks.get(i, np.zeros(frame.rgb.shape[:2], bool)) for i in range(1, n + 1)]
        img = draw_overlay(frame.rgb, ordered)
        if gaze_xy is not None:
            cv2.circle(img, (round(gaze_xy[0]), round(gaze_xy[1])), 8, (255, 255, 0), 2)
        scale = self.image_max_side_px / max(img.shape[:2])
        if scale < 1:  # the browser gets a JPEG per frame: keep it small
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if self._image is None:
            self._image = self.server.gui.add_image(img, label="camera", format="jpeg")
        else:
            self._image.image = img

    def update(self, object_id: int, result: LiftResult) -> None:
        _check_ok(result)
        scene, base = self.server.scene, f"/camera/objects/{object_id}"
        self.clouds[object_id] = scene.add_point_cloud(  # same name: replaces the old node
            f"{base}/points", result.points_m.astype(np.float32), _colors_u8(result, object_id),
            point_size=0.003, precision="float32",
        )  # fmt: skip
        self.boxes[object_id] = scene.add_box(
            f"{base}/box", color=tuple(object_color(object_id).tolist()), dimensions=tuple(result.obb_extent_m),
            wireframe=True, wxyz=np.roll(quat_xyzw(result.obb_rotation), 1), position=result.obb_center_m,
        )  # fmt: skip

    def remove_all(self) -> None:
        for handle in [*self.clouds.values(), *self.boxes.values()]:
            handle.remove()
        self.clouds.clear()
        self.boxes.clear()

    def poll(self) -> bool:
        return True

    def close(self) -> None:
        self.server.stop()
