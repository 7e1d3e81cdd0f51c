"""Click an object in a RealSense colour stream; see its 3D point cloud and box live in 3D.

Usage:
    python demos/realsense_lift.py                       # live camera (first one found)
    python demos/realsense_lift.py --bag session.db3     # a .bag/.db3 recording, every frame
    python demos/realsense_lift.py --synthetic 90        # a synthetic sphere through the SDK
    python demos/realsense_lift.py --bag s.db3 --headless --out run/ --box 95,80,175,160
    python demos/realsense_lift.py --view viser:0.0.0.0:8080    # 3D in a browser (e.g. a headset)
    python demos/realsense_lift.py --bag s.db3 --headless --out run/ --view rerun:run/lift.rrd

Mouse (colour window): left click = select (foreground point), drag = select with a box, right
click or shift-click = background point for the last object.

Keys (colour window):
    c        release every object
    s        save PLY + JSON of the current objects now (needs --out)
    q, Esc   quit (closing the Open3D window quits too)

Each selected object's mask is lifted with ``engine.lift.lift`` every ``--lift-every`` frames
and shown as a coloured cloud with its oriented box in the ``--view``: ``open3d`` (a desktop
window, the default), ``rerun:FILE.rrd`` / ``rerun:serve`` / ``rerun:connect[=URL]`` (image, masks,
clouds and boxes on a Rerun timeline), ``viser[:[HOST:]PORT]`` (a web page) or ``none`` (the
default with ``--headless``); see ``engine.lift.remote_view``. With ``--out DIR`` the run writes
``overlay.mp4``, ``overlay_last.png``, ``object_<id>.ply`` (the last good lift of each object),
``objects.json`` (extents, centroid, box, volume, lift counts, source stats) and
``intrinsics.json`` (the shared intrinsics format). ``--headless`` opens no window and needs a
scripted prompt (``--box`` or ``--click``; default: a click on the image centre).

If the camera or recording fails mid-run (``SourceError``, e.g. the camera unplugged) the error
goes to stderr, what was gathered is still saved (``objects.json`` has ``"error"``) and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cli_common import add_deprecated_flag  # noqa: E402
from engine.demo.overlay import OverlayVideo  # noqa: E402
from engine.imageio import draw_overlay  # noqa: E402
from engine.lift import LiftResult, lift, save_ply  # noqa: E402
from engine.lift.remote_view import VIEW_FORMS, ObjectView, ViewSpec, open_view  # noqa: E402
from engine.realsense import DepthFilterConfig, RealSenseConfig, RealSenseSource, SyntheticRealSense  # noqa: E402
from engine.stream.engine import StepResult, StreamEngine  # noqa: E402
from engine.stream.events import CursorEvent, Prompt, PromptEvent, SelectEvent  # noqa: E402
from engine.stream.hud import draw_hud  # noqa: E402
from engine.stream.prompt_sources import CursorPrompts  # noqa: E402
from engine.stream.scheduler import KeyframePolicy  # noqa: E402
from engine.stream.sources import SourceError  # noqa: E402
from engine.types import Frame  # noqa: E402

WINDOW = "arsel realsense lift"
EXIT_INPUT_FAILED = 1


@dataclass
class ObjectState:
    """What the demo knows of one object: its last good lift and how its lifts went."""

    last_ok: LiftResult | None = None
    last_ok_frame: int = -1
    statuses: Counter = field(default_factory=Counter)


class App:
    """Wires a RealSense source, cursor prompts, the stream engine, lifting and the two views."""

    def __init__(self, args: argparse.Namespace, engine: StreamEngine | None = None) -> None:
        self.args = args
        self.engine = engine or StreamEngine.from_name(
            args.model, args.checkpoint, args.device, backend=args.backend,
            policy=KeyframePolicy.parse(args.keyframe_interval), async_encoder=not args.sync_encoder,
        )  # fmt: skip
        self.cursor = CursorPrompts(hover=False)
        self.pending: list[PromptEvent] = []
        self.objects: dict[int, ObjectState] = {}
        self.writer: OverlayVideo | None = None
        self.last_bgr: np.ndarray | None = None
        self.source: Any = None
        self.view: ObjectView | None = None
        self.frames = 0
        self.error: str | None = None  # why the input stopped early, if it did

    # --- input -----------------------------------------------------------------------------------
    def open_source(self) -> Any:
        a = self.args
        filters = DepthFilterConfig.off() if a.no_filters else DepthFilterConfig(hole_filling=a.hole_filling)
        if a.synthetic:
            return SyntheticRealSense(a.synthetic, hw=(480, 640), filters=filters)
        (cw, ch), fps = a.color, a.fps
        config = RealSenseConfig(color_wh=(cw, ch), depth_wh=a.depth or (cw, ch), fps=fps, serial=a.serial,
                                 filters=filters, record_to=a.record)
        return RealSenseSource(config, bag=a.bag)

    def on_mouse(self, event: int, x: int, y: int, flags: int, _param: Any = None) -> None:
        """OpenCV mouse callback -> cursor events -> prompt events for the next frame."""
        shift = bool(flags & cv2.EVENT_FLAG_SHIFTKEY)
        kinds = {cv2.EVENT_LBUTTONDOWN: ("down", "left"), cv2.EVENT_LBUTTONUP: ("up", "left"),
                 cv2.EVENT_RBUTTONDOWN: ("down", "right"), cv2.EVENT_RBUTTONUP: ("up", "right"),
                 cv2.EVENT_MOUSEMOVE: ("move", "none")}
        if event in kinds:
            kind, button = kinds[event]
            ev = CursorEvent(kind, x, y, button, shift, time.monotonic_ns())  # type: ignore[arg-type]
            self.pending += self.cursor.feed(ev)

    def on_key(self, key: int) -> bool:
        """Handle a key; False to quit."""
        if key in (ord("q"), 27):
            return False
        if key == ord("c"):
            self.pending += self.cursor.release_all()
            self.objects.clear()
            if self.view is not None:
                self.view.remove_all()
        elif key == ord("s"):
            self.save()
        return True

    def script(self, frame: Frame) -> None:
        """The scripted prompt (``--box`` / ``--click``, headless default: centre click) on frame 1."""
        if self.frames != 0:
            return
        a = self.args
        if a.box is not None:
            self.engine.add_object(Prompt.box(a.box))
        elif a.click is not None or a.headless:
            h, w = frame.rgb.shape[:2]
            x, y = a.click if a.click is not None else (w / 2, h / 2)
            self.engine.add_object(Prompt.point(x, y))

    def apply(self) -> None:
        events, self.pending = self.pending, []
        for ev in events:
            oid = self.engine.handle(ev)
            if isinstance(ev, SelectEvent) and ev.object_id is None:
                self.cursor.current_object_id = oid

    # --- per frame -------------------------------------------------------------------------------
    def lift_objects(self, frame: Frame, res: StepResult) -> None:
        """Lift every tracked object's mask every ``--lift-every`` processed frames (counted here:
        ``frame.index`` skips the frames the camera dropped)."""
        if self.frames % self.args.lift_every:
            return
        for r in res.objects:
            state = self.objects.setdefault(r.object_id, ObjectState())
            if frame.depth_raw is None or frame.intrinsics is None:
                state.statuses["no_depth"] += 1
                continue
            if r.status != "ok":
                state.statuses[f"mask_{r.status}"] += 1
                continue
            out = lift(r.mask, frame.depth_raw, frame.intrinsics, rgb=frame.rgb)
            state.statuses[out.status] += 1
            if out.status == "ok":
                state.last_ok, state.last_ok_frame = out, frame.index
                if self.view is not None:
                    self.view.update(r.object_id, out)

    def draw(self, frame: Frame, res: StepResult) -> np.ndarray:
        """Overlay (one colour per object id), extents text and the HUD, as BGR."""
        masks = res.masks_by_id()
        img = draw_overlay(frame.rgb, masks, boxes_xyxy=self.cursor.drag_box_xyxy)
        lines = [f"frame {frame.index} objects {len(res.objects)} depth {'yes' if frame.depth_raw is not None else 'NO'}"]
        for oid, st in sorted(self.objects.items()):
            if st.last_ok is not None:
                ext = " x ".join(f"{e * 100:.1f}" for e in st.last_ok.extent_m)
                z = st.last_ok.centroid_m[2]
                lines.append(f"#{oid}: {ext} cm at {z:.2f} m ({st.last_ok.num_points} pts)")
        lines += self.engine.latency.hud_lines()
        return cv2.cvtColor(draw_hud(img, lines), cv2.COLOR_RGB2BGR)

    def step(self, frame: Frame) -> np.ndarray:
        self.script(frame)
        self.apply()
        res = self.engine.step(frame)
        if self.frames == 0 and self.engine.encoder.asynchronous:
            self.engine.encoder.wait_idle()  # a first keyframe, so the next frames show masks
        if self.view is not None:
            self.view.log_frame(frame, {r.object_id: r.mask for r in res.objects})
        self.lift_objects(frame, res)
        bgr = self.draw(frame, res)
        self.record(bgr)
        self.frames += 1
        return bgr

    # --- output ----------------------------------------------------------------------------------
    def record(self, bgr: np.ndarray) -> None:
        self.last_bgr = bgr
        if self.args.out is None:
            return
        if self.writer is None:
            self.args.out.mkdir(parents=True, exist_ok=True)
            fps = float(getattr(self.source, "fps", 30.0))
            self.writer = OverlayVideo(self.args.out / "overlay.mp4", fps, fix="run without --out")
        self.writer.write_bgr(bgr)

    def save(self) -> Path | None:
        """PLY per object, objects.json, intrinsics.json and the last overlay into ``--out``."""
        out = self.args.out
        if out is None:
            print("nothing saved: give --out DIR")
            return None
        out.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"frames": self.frames, "objects": {}}
        if self.error is not None:
            report["error"] = self.error
        if self.source is not None:
            report["source_stats"] = self.source.stats.to_dict()
            if getattr(self.source, "intrinsics", None) is not None:
                from calibration.intrinsics import save_intrinsics

                report["intrinsics"] = save_intrinsics(out / "intrinsics.json", self.source.intrinsics).name
        for oid, st in sorted(self.objects.items()):
            entry: dict[str, Any] = {"lift_statuses": dict(st.statuses), "last_ok_frame": st.last_ok_frame}
            r = st.last_ok
            if r is not None:
                entry.update(
                    ply=save_ply(out / f"object_{oid}.ply", r).name, num_points=r.num_points,
                    extent_m=r.extent_m.tolist(), centroid_m=r.centroid_m.tolist(),
                    obb_center_m=r.obb_center_m.tolist(), obb_extent_m=r.obb_extent_m.tolist(),
                    obb_rotation=r.obb_rotation.tolist(), volume_m3=r.volume_m3,
                )  # fmt: skip
            report["objects"][str(oid)] = entry
        if self.last_bgr is not None:
            cv2.imwrite(str(out / "overlay_last.png"), self.last_bgr)
        path = out / "objects.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        return path

    # --- loops -----------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.source = self.open_source()
            if not self.args.headless:
                cv2.namedWindow(WINDOW)
                cv2.setMouseCallback(WINDOW, self.on_mouse)
            self.view = open_view(self.args.view)
            if getattr(self.view, "address", None):
                print(f"3D view ({self.args.view.kind}): {self.view.address}")
            try:
                self.loop()
            except SourceError as exc:  # camera lost: keep and save what was gathered
                self.error = f"{type(exc).__name__}: {exc}"
                print(f"input stopped after {self.frames} frames: {exc}", file=sys.stderr)
            saved = self.save() if self.args.out is not None else None
            if saved is not None:
                print(f"wrote {saved}")
        finally:
            self.close()
        return EXIT_INPUT_FAILED if self.error is not None else 0

    def loop(self) -> None:
        """Step every frame of the source until it ends, q/Esc, the 3D view closes or ``--frames``."""
        for frame in self.source:
            bgr = self.step(frame)
            if self.args.headless:
                st = ", ".join(f"#{k}: {dict(v.statuses)}" for k, v in sorted(self.objects.items()))
                print(f"frame {frame.index:4d} {st}")
            else:
                cv2.imshow(WINDOW, bgr)
                if not self.on_key(cv2.waitKey(1) & 0xFF):
                    break
            if self.view is not None and not self.view.poll():
                break
            if self.args.frames and self.frames >= self.args.frames:
                break

    def close(self) -> None:
        """Release the camera/recording, the engine, the writer and the windows."""
        if self.source is not None:
            self.source.close()
        self.engine.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.view is not None:
            self.view.close()
            self.view = None
        if not self.args.headless:
            cv2.destroyAllWindows()


def _numbers(count: int, kind: type = float) -> Any:
    def parse(text: str) -> tuple:
        parts = text.replace("x", ",").split(",")
        if len(parts) != count:
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers, got {text!r}")
        try:
            return tuple(kind(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {count} numbers, got {text!r}") from None

    return parse


def _view(text: str) -> ViewSpec:
    try:
        return ViewSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--bag", type=Path, help="play a RealSense .bag/.db3 recording (default: live camera)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N frames of a synthetic sphere (software device)")
    ap.add_argument("--serial", help="serial of the live camera to open")
    ap.add_argument("--color", type=_numbers(2, int), default=(640, 480), help="live colour WxH (default 640x480)")
    ap.add_argument("--depth", type=_numbers(2, int), help="live depth WxH (default: the colour size)")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--record", type=Path, help="also record the live session (.db3 on librealsense >= 2.56)")
    ap.add_argument("--no-filters", action="store_true", help="no spatial/temporal depth filtering")
    ap.add_argument("--hole-filling", action="store_true", help="fill depth holes (invents depth at borders)")
    ap.add_argument("--model", default="lite_medsam")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt", "auto"))
    ap.add_argument("--keyframe-interval", default="5", metavar="auto|K", help="keyframe interval K or 'auto'")
    add_deprecated_flag(ap, "--keyframe", use="--keyframe-interval", dest="keyframe_interval")
    ap.add_argument("--sync-encoder", action="store_true", help="encode keyframes inline (default: worker thread)")
    ap.add_argument("--box", type=_numbers(4), metavar="X0,Y0,X1,Y1", help="scripted box prompt on the first frame")
    ap.add_argument("--click", type=_numbers(2), metavar="X,Y", help="scripted point prompt on the first frame")
    ap.add_argument("--lift-every", type=int, default=1, metavar="N", help="lift every N-th frame (default 1)")
    ap.add_argument("--frames", type=int, default=0, help="stop after this many frames (0: until the end)")
    ap.add_argument("--headless", action="store_true", help="no windows; scripted prompt; write to --out")
    ap.add_argument("--out", type=Path, help="folder for overlay.mp4, PLYs, objects.json, intrinsics.json")
    ap.add_argument("--view", type=_view, metavar="VIEW", help=f"3D view: {VIEW_FORMS} (default: open3d, "
                    "none with --headless)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.view is None:
        args.view = ViewSpec("none" if args.headless else "open3d")
    if args.headless and args.view.kind == "open3d":
        ap.error("--headless opens no window: use --view rerun:FILE.rrd, rerun:serve, viser[:PORT] or none")
    if args.lift_every < 1:
        ap.error(f"--lift-every must be >= 1, got {args.lift_every}")
    if args.synthetic is not None and args.synthetic < 2:
        ap.error(f"--synthetic needs N >= 2 frames, got {args.synthetic}")
    if args.headless and args.out is None:
        ap.error("--headless writes its results to a folder: give --out DIR")
    if args.record is not None and (args.bag or args.synthetic):
        ap.error("--record records a live camera; it cannot be combined with --bag or --synthetic")
    return args


def main(argv: list[str] | None = None, engine: StreamEngine | None = None) -> int:
    """Run the demo; ``engine`` replaces the model named by ``--model`` (tests pass a fast double)."""
    return App(parse_args(argv), engine).run()


if __name__ == "__main__":
    sys.exit(main())
