"""Select objects in a live camera stream with the mouse (or the mouse playing gaze); masks every frame.

Usage:
    python demos/live_select.py [--source 0] [--model lite_medsam] [--keyframe-interval 5|auto]
                                [--motion homography|affine|none] [--sync-encoder]
    python demos/live_select.py --gaze-live udp:5005      # an eye tracker streams JSON lines to 127.0.0.1:5005
    python demos/live_select.py --gaze-live pupil          # a Pupil Labs Neon/Invisible on the network
    python demos/live_select.py --headless --frames 60 [--script click|drag|gaze] [--out run.mp4]

Mouse: left click = select (foreground point), drag = select with a box, right click or
shift-click = background point for the last object.

Keys:
    g        toggle mouse-as-gaze (dwell 600 ms on a spot selects it, looking away 1 s releases);
             it has its own dwell state, apart from a live tracker's (another clock)
    h        toggle hover preview (the object under the pointer, before clicking)
    c        release every object (and forget the gaze dwell in progress)
    q, Esc   quit

``--headless`` runs on the synthetic source (a photo moved by known homographies) without a
window, with a scripted click, drag or gaze dwell on the image centre.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cli_common import add_deprecated_flag  # noqa: E402
from engine.gaze import GazeSample  # noqa: E402
from engine.imageio import draw_overlay  # noqa: E402
from engine.stream.engine import StepResult, StreamEngine  # noqa: E402
from engine.stream.events import CursorEvent, PromptEvent, ReleaseEvent, SelectEvent  # noqa: E402
from engine.stream.hud import draw_hud  # noqa: E402
from engine.stream.prompt_sources import CursorPrompts, GazePrompts, open_live_gaze  # noqa: E402
from engine.stream.scheduler import KeyframePolicy  # noqa: E402
from engine.stream.sources import open_source  # noqa: E402
from engine.types import Frame  # noqa: E402
from engine.video import VideoWriter  # noqa: E402

WINDOW = "arsel live select"


class App:
    """Wires a frame source, the cursor/gaze prompt sources, the stream engine and an OpenCV view."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        policy = KeyframePolicy.parse(args.keyframe_interval)
        # the live tracker first: a bad or busy port fails in milliseconds, before the model loads
        self.live_gaze = open_live_gaze(args.gaze_live) if args.gaze_live else None
        self.engine = StreamEngine.from_name(args.model, args.checkpoint, args.device, backend=args.backend,
                                             policy=policy, motion=args.motion, async_encoder=not args.sync_encoder)
        self.cursor = CursorPrompts(hover=False)
        # A live tracker (udp/pupil; its clock, often epoch ns) drives ``gaze``, mouse-as-gaze
        # (monotonic ns) its own ``mouse_gaze``: one GazePrompts would drop one clock's samples as
        # out of order. Tracker samples are scene-camera pixels (map them with calibration.gaze).
        self.gaze = GazePrompts()
        self.mouse_gaze = GazePrompts()
        self.mouse_as_gaze = False
        self.pending: list[PromptEvent] = []
        self.pointer_xy: tuple[float, float] | None = None
        self.writer: VideoWriter | None = None

    # --- input -----------------------------------------------------------------------------------
    def on_mouse(self, event: int, x: int, y: int, flags: int, _param: Any = None) -> None:
        """OpenCV mouse callback -> cursor events (or gaze samples when mouse-as-gaze is on)."""
        now = time.monotonic_ns()
        self.pointer_xy = (float(x), float(y))
        if self.mouse_as_gaze:
            if event == cv2.EVENT_MOUSEMOVE:
                self.pending += self.mouse_gaze.push(GazeSample(now, float(x), float(y), 1.0))
            return
        shift = bool(flags & cv2.EVENT_FLAG_SHIFTKEY)
        kinds = {cv2.EVENT_LBUTTONDOWN: ("down", "left"), cv2.EVENT_LBUTTONUP: ("up", "left"),
                 cv2.EVENT_RBUTTONDOWN: ("down", "right"), cv2.EVENT_RBUTTONUP: ("up", "right"),
                 cv2.EVENT_MOUSEMOVE: ("move", "none")}
        if event in kinds:
            kind, button = kinds[event]
            self.pending += self.cursor.feed(CursorEvent(kind, x, y, button, shift, now))  # type: ignore[arg-type]

    def poll_live_gaze(self, frame_hw: tuple[int, int] | None = None) -> int:
        """Feed the live tracker's new samples to the gaze prompts; returns how many arrived.
        With ``frame_hw``, gaze off the frame counts as lost (``gaze.off_frame``): it never selects."""
        if self.live_gaze is None:
            return 0
        self.gaze.frame_hw = frame_hw or self.gaze.frame_hw
        samples = self.live_gaze.poll()
        for sample in samples:
            self.pending += self.gaze.push(sample)
        return len(samples)

    def on_key(self, key: int) -> bool:
        """Handle a key; False to quit."""
        if key in (ord("q"), 27):
            return False
        if key == ord("g"):
            self.mouse_as_gaze = not self.mouse_as_gaze
            self.mouse_gaze.dwell.reset()
        elif key == ord("h"):
            self.pending += self.cursor.set_hover(not self.cursor.hover)
        elif key == ord("c"):
            self.pending += self.cursor.release_all()
            self.gaze.dwell.reset()  # else a dwell in progress re-selects right after the release
            self.mouse_gaze.dwell.reset()
        return True

    def apply(self) -> None:
        """Hand the prompt events gathered since the last frame to the engine. Background clicks
        refine the object the cursor selected last; a gaze selection or a release of that object
        makes the cursor forget it (its points would refine the wrong object)."""
        events, self.pending = self.pending, []
        for ev in events:
            oid = self.engine.handle(ev)
            if isinstance(ev, SelectEvent) and ev.prompt.source == "cursor":
                self.cursor.current_object_id = oid  # a new object, or a refined one re-added after a release
            elif isinstance(ev, SelectEvent) and ev.object_id is None:
                self.cursor.forget()
            elif isinstance(ev, ReleaseEvent) and ev.object_id in (None, self.cursor.current_object_id):
                self.cursor.forget()

    # --- output ----------------------------------------------------------------------------------
    def draw(self, frame: Frame, res: StepResult) -> np.ndarray:
        """Overlay (one colour per object id), hover preview, pointer/gaze marker and the HUD (BGR)."""
        masks = res.masks_by_id()
        img = draw_overlay(frame.rgb, masks, boxes_xyxy=self.cursor.drag_box_xyxy)
        if res.hover is not None and res.hover.mask.any():
            contours, _ = cv2.findContours(res.hover.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(img, contours, -1, (255, 255, 255), 1)
        marker = (self.mouse_gaze.gaze_xy if self.mouse_as_gaze
                  else self.gaze.gaze_xy if self.live_gaze is not None else None)
        if marker is not None:
            cv2.circle(img, (int(marker[0]), int(marker[1])), 12, (255, 0, 255), 2)
        mode = ("gaze" if self.mouse_as_gaze else "live gaze" if self.live_gaze is not None
                else "hover" if self.cursor.hover else "click")
        lines = [f"frame {res.frame_index} key {res.keyframe_index} [{mode}] objects {len(res.objects)}",
                 *self.engine.latency.hud_lines()]
        if self.mouse_as_gaze or self.live_gaze is not None:
            lines.append(self.gaze_counters())
        return cv2.cvtColor(draw_hud(img, lines), cv2.COLOR_RGB2BGR)

    def gaze_counters(self) -> str:
        """One line of gaze counters: samples dropped as out of order, the live receiver's stats."""
        text = (f"gaze out-of-order {self.gaze.dropped_out_of_order + self.mouse_gaze.dropped_out_of_order} "
                f"off-frame {self.gaze.off_frame}")
        if self.live_gaze is not None:
            stats = getattr(self.live_gaze, "stats", {})
            text += " " + " ".join(f"{k} {v}" for k, v in stats.items() if v)
        return text

    def record(self, bgr: np.ndarray, fps: float) -> None:
        if self.args.out is None:
            return
        if self.writer is None:
            self.writer = VideoWriter(self.args.out, fps, "check that its folder exists and is writable and the "
                                      "name ends in .mp4, or leave out --out")
        self.writer.write_bgr(bgr)

    # --- loops -----------------------------------------------------------------------------------
    def run(self) -> int:
        if self.args.headless:
            return self.run_headless()
        source = open_source(self.args.source, realtime=True)
        try:
            cv2.namedWindow(WINDOW)
            cv2.setMouseCallback(WINDOW, self.on_mouse)
            for frame in source:
                self.poll_live_gaze(frame.rgb.shape[:2])
                self.apply()
                bgr = self.draw(frame, self.engine.step(frame))
                self.record(bgr, source.fps)
                cv2.imshow(WINDOW, bgr)
                if not self.on_key(cv2.waitKey(1) & 0xFF):
                    break
        finally:
            source.close()  # the camera is released whatever happened
            self.close()
            cv2.destroyAllWindows()
        return 0

    def run_headless(self) -> int:
        """Synthetic source, scripted input on the image centre, no window."""
        source = open_source(f"synthetic:{self.args.frames}")
        try:
            for frame in source:
                self.script(frame)
                self.poll_live_gaze(frame.rgb.shape[:2])
                self.apply()
                res = self.engine.step(frame)
                self.record(self.draw(frame, res), source.fps)
                if not self.args.sync_encoder and frame.index == 0:
                    self.engine.encoder.wait_idle()  # a first keyframe, so the run shows masks
                area = sum(int(r.mask.sum()) for r in res.objects)
                print(f"frame {res.frame_index:3d} key {res.keyframe_index:3d} {res.status:<12} objects "
                      f"{len(res.objects)} mask px {area}")
        finally:
            source.close()
            self.close()
        print(self.engine.latency.to_json())
        return 0

    def script(self, frame: Frame) -> None:
        h, w = frame.rgb.shape[:2]
        cx, cy = w / 2, h / 2
        t = frame.timestamp_ns
        if self.args.script == "click" and frame.index == 0:
            self.on_mouse(cv2.EVENT_LBUTTONDOWN, int(cx), int(cy), 0)
            self.on_mouse(cv2.EVENT_LBUTTONUP, int(cx), int(cy), 0)
        elif self.args.script == "drag" and frame.index == 0:
            self.pending += self.cursor.feed(CursorEvent("down", cx - 60, cy - 80, "left", False, t))
            self.pending += self.cursor.feed(CursorEvent("move", cx, cy, "left", False, t))
            self.pending += self.cursor.feed(CursorEvent("up", cx + 60, cy + 80, "left", False, t))
        elif self.args.script == "gaze":
            for k in range(4):  # ~120 Hz gaze on the centre, with jitter
                ts = t + k * 8_333_333
                jitter = np.sin(ts * 1e-7) * 2
                self.pending += self.gaze.push(GazeSample(ts, cx + jitter, cy - jitter, 1.0))

    def close(self) -> None:
        self.engine.close()
        if self.live_gaze is not None:
            self.live_gaze.close()
            print(self.gaze_counters())
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="0", help="camera index, video file, frame folder or synthetic[:N]")
    ap.add_argument("--model", default="lite_medsam")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt", "auto"))
    ap.add_argument("--keyframe-interval", default="5", metavar="auto|K", help="keyframe interval K or 'auto'")
    add_deprecated_flag(ap, "--keyframe", use="--keyframe-interval", dest="keyframe_interval")
    ap.add_argument("--motion", default="homography", choices=("homography", "affine", "none"))
    ap.add_argument("--sync-encoder", action="store_true", help="encode keyframes inline (default: worker thread)")
    ap.add_argument("--headless", action="store_true", help="synthetic source, scripted input, no window")
    ap.add_argument("--frames", type=int, default=60, help="frames of the headless run")
    ap.add_argument("--script", default="click", choices=("click", "drag", "gaze"), help="headless input")
    ap.add_argument("--out", type=Path, help="also write the view to this mp4")
    ap.add_argument("--gaze-live", metavar="udp[:PORT]|pupil[:HOST]",
                    help="live eye tracker: JSON lines on UDP (127.0.0.1) or Pupil Labs' real-time API")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        app = App(args)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:  # bad/busy port, model, flags: one line
        print(f"live_select: error: {exc}", file=sys.stderr)
        return 2
    return app.run()


if __name__ == "__main__":
    sys.exit(main())
