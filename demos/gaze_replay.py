"""Replay a gaze recording over a video or frame folder: dwell selects, the mask follows; overlay video.

Usage:
    python demos/gaze_replay.py SOURCE GAZE.csv --out overlay.mp4 [--model lite_medsam]
        [--keyframe-interval 5|auto] [--motion homography|affine|none] [--gaze-offset-ms MS] [--max-frames N]
        [--show]

SOURCE: a video file, a folder of frames (DAVIS layout ok) or synthetic[:N]. GAZE.csv:
``timestamp_ns,x,y,confidence`` in scene-camera pixels (or normalised, with ``# units:
normalized``). The gaze clock is aligned to the first frame unless ``--gaze-offset-ms`` is given.
Headless by default (writes the video); ``--show`` also opens a window (q / Esc quits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.cli_common import add_deprecated_flag  # noqa: E402
from engine.imageio import draw_overlay  # noqa: E402
from engine.stream.engine import StepResult, StreamEngine  # noqa: E402
from engine.stream.hud import draw_hud  # noqa: E402
from engine.stream.prompt_sources import GazeReplay  # noqa: E402
from engine.stream.scheduler import KeyframePolicy  # noqa: E402
from engine.stream.sources import open_source  # noqa: E402
from engine.types import Frame  # noqa: E402
from engine.video import VideoWriter  # noqa: E402


class App:
    """Source + gaze replay + stream engine -> overlay video (and optionally a window)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.engine = StreamEngine.from_name(args.model, args.checkpoint, args.device, backend=args.backend,
                                             policy=KeyframePolicy.parse(args.keyframe_interval), motion=args.motion)
        self.replay: GazeReplay | None = None
        self.writer: VideoWriter | None = None
        self.selections = 0

    def events(self, frame: Frame) -> list:
        """Gaze events up to this frame's time (the replay is opened on the first frame's size)."""
        if self.replay is None:
            offset = None if self.args.gaze_offset_ms is None else int(-self.args.gaze_offset_ms * 1e6)
            self.replay = GazeReplay.from_csv(self.args.gaze, frame.rgb.shape[:2], offset_ns=offset)
        evs = self.replay.events_until(frame.timestamp_ns)
        self.selections += sum(type(e).__name__ == "SelectEvent" for e in evs)
        return evs

    def draw(self, frame: Frame, res: StepResult) -> np.ndarray:
        img = draw_overlay(frame.rgb, res.masks_by_id())  # colours follow object ids
        gaze = None if self.replay is None else self.replay.gaze_xy
        if gaze is not None:
            cv2.circle(img, (int(gaze[0]), int(gaze[1])), 10, (255, 0, 255), 2)
        lines = [f"frame {res.frame_index} key {res.keyframe_index} objects {len(res.objects)}",
                 *self.engine.latency.hud_lines()]
        return cv2.cvtColor(draw_hud(img, lines), cv2.COLOR_RGB2BGR)

    def run(self) -> int:
        source = open_source(self.args.source)
        frames = 0
        try:
            for frame, res in self.engine.run_frames(source, self.events):
                if res.status == "bad_frame":
                    continue
                bgr = self.draw(frame, res)
                if self.writer is None:
                    self.writer = VideoWriter(self.args.out, source.fps, "check that its folder exists and is "
                                              "writable and the name ends in .mp4")
                self.writer.write_bgr(bgr)
                frames += 1
                if self.args.show:
                    cv2.imshow("arsel gaze replay", bgr)
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        break
                if self.args.max_frames and frames >= self.args.max_frames:
                    break
        finally:
            source.close()
            self.engine.close()
            if self.writer is not None:
                self.writer.close()
            if self.args.show:
                cv2.destroyAllWindows()
        dropped = 0 if self.replay is None else self.replay.prompts.dropped_out_of_order
        print(f"{self.args.out}: {frames} frames, {self.selections} gaze selections, {dropped} gaze samples "
              f"out of order, {self.engine.latency.fps():.1f} fps, source {source.stats.to_dict()}")
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("gaze", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="overlay video (mp4v)")
    ap.add_argument("--model", default="lite_medsam")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt", "auto"))
    ap.add_argument("--keyframe-interval", default="5", metavar="auto|K", help="keyframe interval K or 'auto'")
    add_deprecated_flag(ap, "--keyframe", use="--keyframe-interval", dest="keyframe_interval")
    ap.add_argument("--motion", default="homography", choices=("homography", "affine", "none"))
    ap.add_argument("--gaze-offset-ms", type=float, help="gaze time minus frame time (default: align starts)")
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--show", action="store_true", help="also show a window")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return App(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
