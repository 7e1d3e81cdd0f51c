"""``arsel demo``'s pipeline: source -> gaze -> stream engine -> per-object masks -> 3D -> outputs.

One frame: the source yields ``Frame(rgb, depth_raw, intrinsics)``; prompt events come from the
gaze (simulated for the synthetic scene, a centre reticle for real input: point the camera at an
object and hold still); ``StreamEngine.step`` gives one mask per selected object; each ``ok`` mask
is lifted (``engine.lift.lift``: depth-edge test, outlier removal, clustering), and the lifted pixels,
with the frame's camera pose, join that object's fusion frames. At the end each object's frames
are TSDF-fused (``engine.lift.fuse_tsdf``) into a mesh whose oriented box gives the extents.
Poses: the renderer's for the synthetic scene, Open3D RGB-D odometry for RealSense input; without
any pose the best single view is kept. A camera without depth runs the 2D part only.

Extents are measured on the fused frames' lifted points (``fuse_points``; the TSDF mesh, written
as the PLY, stops short of a curved object's rim): for the synthetic scene (world z up) their
gravity-aligned box (``upright_box``: what a tape measures), with the PCA box as
``lifted_extent_pca_m``; for real input (world = the first camera) the PCA box. Only what was seen
can be measured (a can seen from one side comes out half as deep), so the synthetic summary gives
the error against the full object (``extent_error_m``) and against the renderer's truth of the
surface visible in the fused frames (``visible_extent_m``, ``visible_extent_error_m``), and the
extent of that visible surface inside the masks (``visible_in_masks_extent_m``: the part of the
error that segmentation, not lifting, makes).

Outputs in ``out``: ``overlay.mp4`` (masks, gaze dot, HUD), ``object_<id>.ply`` (fused mesh, or
the single-view cloud), ``gaze.csv`` (the simulated trace) and ``summary.json``. When the input
fails mid-run (``SourceError``: camera unplugged, broken recording) the frames gathered so far are
still fused and written, and ``summary.json`` says why it stopped under ``"error"``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.demo.objects import ObjectLog, largest_component, upright_box
from engine.lift import EDGE_GAP_M, fuse_points, fuse_tsdf, lift, oriented_box, save_ply
from engine.frame_source import SourceError
from engine.stream.hud import track_status_line
from engine.stream.latency import LatencyRecorder
from engine.types import Frame

InputKind = Literal["synthetic", "realsense", "bag", "camera"]


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """Knobs of one demo run. ``frames``: frames to process (synthetic: rendered; real: read);
    ``backend``: "auto" = TensorRT on a CUDA ``device`` when installed, else onnxruntime when
    installed, else torch; ``device``: "cpu" or "cuda[:N]" (``--backend tensorrt`` needs CUDA);
    ``voxel_m``/``trunc_m``: TSDF voxel and truncation (m); ``max_fusion_frames``: each object's
    fusion keeps between this many and twice as many frames, evenly spread over all the frames
    it was lifted in (memory stays bounded); ``erode_px``/``edge_gap_m``: ``lift``'s flying-pixel
    filters, by default the rule ``arsel lift`` uses (``engine.lift.EDGE_GAP_M``: a depth-edge
    test that keeps a ball's rim, where a 2 px erosion cost it ~1 cm); ``points_voxel_m``: voxel
    of the fused points the extents are measured on. ``async_encoder``: keyframes encoded on a
    worker thread (the live setting: under load the masks come from older keyframes) or in the
    frame loop; ``None`` = synchronous for the synthetic scene, so which keyframe each mask is
    decoded on, and with it every 3D figure, does not depend on the machine's load, and
    asynchronous for real input."""

    frames: int = 150
    model: str = "lite_medsam"
    backend: str = "auto"
    device: str = "cpu"
    checkpoint: str | None = None
    seed: int = 0
    keyframe_interval: int = 5
    async_encoder: bool | None = None
    video: bool = True
    input: InputKind = "synthetic"
    bag: str | None = None
    camera: int = 0
    voxel_m: float = 0.004
    trunc_m: float = 0.012
    max_fusion_frames: int = 40
    max_embedding_age: int | None = 10
    erode_px: int = 0
    edge_gap_m: float | None = EDGE_GAP_M
    points_voxel_m: float = 0.002

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}; pass --frames N with N >= 2")
        if self.keyframe_interval < 1:
            raise ValueError(f"keyframe_interval must be >= 1, got {self.keyframe_interval}")
        if self.input not in ("synthetic", "realsense", "bag", "camera"):
            raise ValueError(f"input must be synthetic, realsense, bag or camera, got {self.input!r}")
        if self.input == "bag" and not self.bag:
            raise ValueError("input 'bag' needs a file: pass --bag FILE.bag")
        if self.backend == "tensorrt" and not self.device.startswith("cuda"):
            raise ValueError(f"backend 'tensorrt' runs on a CUDA GPU, got device {self.device!r}; pass "
                             "--device cuda (or --backend auto / onnxruntime / torch on the CPU)")
        if self.max_fusion_frames < 1:
            raise ValueError(f"max_fusion_frames must be >= 1, got {self.max_fusion_frames}")

    @property
    def encoder_async(self) -> bool:
        """Whether keyframes are encoded on a worker thread (``async_encoder``, resolved)."""
        return self.input != "synthetic" if self.async_encoder is None else self.async_encoder


def _backend(name: str, device: str) -> str:
    if name != "auto":
        return name
    from engine.backends.factory import resolve_auto

    return resolve_auto(device)


def build_engine(config: DemoConfig) -> Any:
    """The stream engine: async encoder, a keyframe every ``keyframe_interval`` frames, one
    intra-op thread pool of half the cores for each of the encoder worker and the decoder."""
    from engine.stream.engine import StreamEngine
    from engine.stream.scheduler import KeyframePolicy
    from engine.threads import apply_threads, engine_threads

    backend = _backend(config.backend, config.device)
    threads = engine_threads()
    apply_threads(backend, threads)
    return StreamEngine.from_name(
        config.model, Path(config.checkpoint) if config.checkpoint else None, config.device, backend=backend,
        threads=threads,
        policy=KeyframePolicy(mode="interval", interval=config.keyframe_interval), async_encoder=config.encoder_async)


class Demo:
    """One run: ``run()`` steps the stream, then ``finish()`` fuses and writes the outputs."""

    def __init__(self, config: DemoConfig, out: Path, progress: bool = True) -> None:
        self.config, self.out, self.progress = config, Path(out), progress
        self.latency = LatencyRecorder()
        self.objects: dict[int, ObjectLog] = {}
        self.events = {"select": 0, "release": 0}
        self.video: Any = None
        self.frames_done = 0
        self.wall_s = 0.0
        self.lifting = "tsdf"
        self.no_depth_frames = 0
        self.error: str | None = None  # why the input stopped early (SourceError), if it did
        self.source: Any = None
        self.gaze: Any = None
        self.odometry: Any = None
        self.engine: Any = None
        self.intrinsics: Any = None  # of the first frame lifted (fusion uses it)

    # --- the frame loop ------------------------------------------------------------------------
    def run(self) -> None:
        from tqdm import tqdm

        from engine.demo.overlay import OverlayVideo
        from engine.demo.source import open_input

        self.source, self.gaze = open_input(self.config)
        try:
            self.out.mkdir(parents=True, exist_ok=True)  # only once the input opened
            self.engine = build_engine(self.config)
            fps = float(getattr(self.source, "fps", 30.0))
            self.video = OverlayVideo(self.out / "overlay.mp4", fps) if self.config.video else None
            t0 = time.perf_counter()
            with tqdm(total=self.config.frames, unit="frame", desc="demo", file=sys.stderr,
                      disable=None if self.progress else True) as bar:
                try:
                    for frame, res in self.engine.run_frames(self._paced(), self._events):
                        self._frame(frame, res)
                        bar.update(1)
                        self.frames_done += 1
                        if self.frames_done >= self.config.frames:
                            break
                except SourceError as exc:  # keep what was gathered: finish() still fuses and writes it
                    self.error = f"{type(exc).__name__}: {exc}"
                    print(f"arsel demo: the input stopped after {self.frames_done} frames: {exc}", file=sys.stderr)
            self.wall_s = time.perf_counter() - t0
        finally:
            if self.video is not None:
                self.video.close()
            if self.engine is not None:
                self.engine.close()
            self.source.close()

    def _paced(self) -> Any:
        """The source's frames; for synthetic input, waits for the encoder when the newest
        keyframe is ``max_embedding_age`` frames old (time recorded as ``encoder_wait``)."""
        from engine.demo.source import SyntheticRGBDSource

        limit = self.config.max_embedding_age
        paced = limit is not None and isinstance(self.source, SyntheticRGBDSource)
        for frame in self.source:
            encoder = self.engine.encoder
            kf = encoder.latest()
            if paced and encoder.busy and (kf is None or frame.index - kf.frame_index >= limit):
                t0 = time.perf_counter()
                encoder.wait_idle()
                self.latency.add("encoder_wait", (time.perf_counter() - t0) * 1e3)
            yield frame

    def _events(self, frame: Frame) -> list[Any]:
        from engine.demo.source import CentreGaze
        from engine.stream.events import ReleaseEvent, SelectEvent

        if isinstance(self.gaze, CentreGaze):
            events = self.gaze.events_until(frame.timestamp_ns, frame.rgb.shape[:2])
        else:
            events = self.gaze.events_until(frame.timestamp_ns)
        self.events["select"] += sum(isinstance(e, SelectEvent) for e in events)
        self.events["release"] += sum(isinstance(e, ReleaseEvent) for e in events)
        return events

    def _pose(self, frame: Frame) -> tuple[np.ndarray | None, Any]:
        """(camera-to-world pose or None, ground truth or None) of ``frame``."""
        from engine.demo.source import OdometryPoses, SyntheticRGBDSource

        if isinstance(self.source, SyntheticRGBDSource):
            truth = self.source.truth(frame.index)
            return truth.pose, truth
        if frame.depth_raw is None:
            if self.config.input == "camera":
                self.lifting = "skipped: the input has no depth (a plain camera); 2D selection only"
            else:
                self.no_depth_frames += 1  # a RealSense frameset without depth: counted, not lifted
            return None, None
        if self.odometry is None:
            self.odometry = OdometryPoses()
        t0 = time.perf_counter()
        pose = self.odometry.update(frame)
        self.latency.add("odometry", (time.perf_counter() - t0) * 1e3)
        return pose, None

    def _frame(self, frame: Frame, res: Any) -> None:
        pose, truth = self._pose(frame)
        n_true = 0 if truth is None else int(len(self.source.scene.objects))
        for r in res.objects:
            if not r.found:
                continue
            log = self.objects.setdefault(r.object_id, ObjectLog(r.object_id))
            log.frames_selected += 1
            if truth is not None:
                log.add_truth(r.mask, truth.object_ids, n_true)
            if frame.depth_raw is not None and frame.intrinsics is not None:
                self._lift(log, frame, r.mask, pose, truth)
        if self.video is not None:
            t0 = time.perf_counter()
            hud = [*self.engine.latency.hud_lines(), track_status_line(self.engine.stats.track_status)]
            self.video.write(frame, res, self.gaze.gaze_xy, hud, self.objects)
            self.latency.add("overlay", (time.perf_counter() - t0) * 1e3)

    def _lift(self, log: ObjectLog, frame: Frame, mask: np.ndarray, pose: np.ndarray | None, truth: Any) -> None:
        self.intrinsics = self.intrinsics or frame.intrinsics
        t0 = time.perf_counter()
        lifted = lift(mask, frame.depth_raw, frame.intrinsics, rgb=frame.rgb, max_depth_m=4.0,  # type: ignore[arg-type]
                      erode_px=self.config.erode_px, edge_gap_m=self.config.edge_gap_m, compute_volume=False)
        self.latency.add("lift", (time.perf_counter() - t0) * 1e3)
        if lifted.status != "ok":
            return
        log.live_extent_m = lifted.extent_m
        if log.best is None or lifted.num_points > log.best.num_points:
            log.best = lifted
        if pose is not None:
            kept = np.zeros(mask.shape, bool)
            kept[lifted.pixels_xy[:, 1], lifted.pixels_xy[:, 0]] = True  # type: ignore[index]
            fusion_frame = (frame.rgb, frame.depth_raw, kept, pose)
            visible = None
            if truth is not None:  # the true surfaces this mask overlaps, as the renderer saw them
                ids = np.unique(truth.object_ids[mask])
                visible = {int(i): (truth.visible_points_m(int(i), frame.intrinsics),
                                    truth.visible_points_m(int(i), frame.intrinsics, mask)) for i in ids if i > 0}
            log.add_fusion(fusion_frame, self.config.max_fusion_frames, visible)  # type: ignore[arg-type]

    # --- after the stream ----------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Fuse every object, write the PLYs and ``summary.json``; returns the summary."""
        objects = [self._object_summary(log) for log in sorted(self.objects.values(), key=lambda o: o.object_id)]
        summary = self._summary([o for o in objects if o is not None])
        from engine.validate import json_text

        (self.out / "summary.json").write_text(json_text(summary))  # strict JSON: NaN becomes null
        return summary

    def _object_summary(self, log: ObjectLog) -> dict[str, Any] | None:
        from engine.lift import save_mesh

        path = self.out / f"object_{log.object_id}.ply"
        record: dict[str, Any] = {"id": log.object_id, "frames_selected": log.frames_selected,
                                  "frames_fused": len(log.fusion)}
        mesh = None
        if log.fusion:
            t0 = time.perf_counter()
            mesh = largest_component(fuse_tsdf(log.fusion, self.intrinsics, self.config.voxel_m,
                                               self.config.trunc_m, max_depth_m=4.0))
            self.latency.add("fusion", (time.perf_counter() - t0) * 1e3)
        if mesh is not None and len(mesh.triangles) > 0:
            save_mesh(path, mesh)
            pts = fuse_points(log.fusion, self.intrinsics, self.config.points_voxel_m, max_depth_m=4.0)
            record.update(method="tsdf", num_points=int(len(mesh.vertices)), fused_points=int(len(pts)))
        elif log.best is not None:
            pts = log.best.points_m
            save_ply(path, log.best)
            record.update(method="single_view", num_points=int(len(pts)))
        else:
            pts = None
            record.update(method="none")
        upright = self.config.input == "synthetic"  # world z is up; real input: world = first camera
        if pts is not None:
            center, extent = _box(pts, upright)
            record.update(lifted_extent_m=_r(extent), centroid_m=_r(pts.mean(axis=0)),
                          lifted_extent_pca_m=_r(np.sort(oriented_box(pts)[2])[::-1]),
                          obb_center_m=_r(center), obb="upright" if upright else "pca", ply=path.name)
        true_id = log.true_id()
        if true_id is not None:
            record.update(self._truth_record(log, true_id, record.get("lifted_extent_m"), upright))
        return record

    def _truth_record(self, log: ObjectLog, true_id: int, lifted: list[float] | None, upright: bool) -> dict[str, Any]:
        """Errors against the full true object and against the surface the fused frames saw."""
        obj = self.source.scene.object(true_id)
        out: dict[str, Any] = {"true_object": obj.name, "true_id": true_id, "true_extent_m": _r(obj.true_extent_m),
                               "true_center_m": _r(obj.center_m), "mask_iou_vs_truth": round(log.mean_iou(true_id), 4)}
        visible, in_mask = log.visible_points_m(true_id), log.visible_points_m(true_id, in_mask=True)
        if visible is not None:
            out["visible_extent_m"] = _r(_box(visible.astype(np.float64), upright)[1])
        if in_mask is not None:  # what a perfect lifting of these masks would give: segmentation error alone
            out["visible_in_masks_extent_m"] = _r(_box(in_mask.astype(np.float64), upright)[1])
        if lifted is not None:
            out["extent_error_m"] = _r(np.asarray(lifted) - obj.true_extent_m)
            if visible is not None:
                out["visible_extent_error_m"] = _r(np.asarray(lifted) - np.asarray(out["visible_extent_m"]))
        return out

    def _summary(self, objects: list[dict[str, Any]]) -> dict[str, Any]:
        eng = self.engine
        lat = eng.latency.summary()
        lat.update(self.latency.summary())
        render = getattr(self.source, "render_ms", None)
        if render:
            rec = LatencyRecorder()
            for ms in render:
                rec.add("render", ms)
            lat.update(rec.summary())
        return {
            "input": self.config.input if self.config.input != "bag" else f"bag:{self.config.bag}",
            "model": self.config.model,
            "backend": eng.predictor.backend.describe().runtime,
            "frames": self.frames_done,
            "stream_fps": round(float(getattr(self.source, "fps", float("nan"))), 3),
            "wall_s": round(self.wall_s, 2),
            "wall_fps": round(self.frames_done / self.wall_s, 3) if self.wall_s > 0 else None,
            "engine_fps": _finite(eng.latency.engine_fps()),
            "latency_ms": lat,
            "embedding_age_frames": eng.latency.to_json()["embedding_age_frames"],
            "keyframes_used": eng.stats.keyframes_total,
            "encoder": "async" if self.config.encoder_async else "sync",
            "gaze_events": dict(self.events),
            "lifting": self.lifting,
            "no_depth_frames": self.no_depth_frames,
            "overlay_frames": 0 if self.video is None else self.video.frames,
            "objects": objects,
            **({"error": self.error} if self.error else {}),
        }


def _box(pts: np.ndarray, upright: bool) -> tuple[np.ndarray, np.ndarray]:
    """(center (3,), extents (3,) sorted descending) of the upright or the PCA box of ``pts``."""
    if upright:
        center, extent = upright_box(pts)
    else:
        center, _, extent = oriented_box(pts)
    return center, np.sort(extent)[::-1]


def _finite(value: float) -> float | None:
    return round(value, 3) if np.isfinite(value) else None


def _r(arr: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in np.asarray(arr).reshape(-1)]


def run_demo(config: DemoConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary (also in ``out/summary.json``).

    An input that fails after some frames still gives the outputs of those frames, with
    ``summary["error"]`` saying why it stopped; one that delivered no frame raises.
    """
    demo = Demo(config, out, progress)
    demo.run()
    if demo.frames_done == 0:
        why = f" ({demo.error})" if demo.error else ""
        raise RuntimeError(f"the source delivered no frames{why}; check the camera/bag file")
    summary = demo.finish()
    from engine.gaze import write_gaze_csv

    write_gaze_csv(Path(out) / "gaze.csv", list(demo.gaze.samples))  # replay: arsel track ... --gaze gaze.csv
    return summary
