"""Stream any ``arsel track`` source to an ``arsel serve`` server and write what ``arsel track`` writes.

Usage:
    python demos/serve_client.py SOURCE (--box X0,Y0,X1,Y1 | --point X,Y | --gaze GAZE.csv)
        [--depth DIR --intrinsics CAM.json] [--url ws://127.0.0.1:8765/v1/stream] [--token T]
        [--encoding jpeg|png|rgb8] [--max-frames N] [--no-overlay] --out DIR

Writes ``DIR/masks/NNNNN.png`` (0/255 for one object, ids for several), ``DIR/metrics.json`` and
``DIR/overlay.mp4`` with ``arsel track``'s writer, so the folders of a local and a remote run can
be compared file by file (with ``--encoding rgb8``/``png`` and a server run with ``--sync-encoder``
and the same keyframe interval the masks are identical). Each frame waits for its result (lock-step).
``--depth``: a folder of 16-bit depth images (sorted, one per frame, aligned to colour) sent with
``--intrinsics`` (arsel or Open3D JSON); the server then adds ``box3d`` per object to metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.serve.client import StreamClient, result_masks
from engine.stream.latency import LatencyRecorder
from engine.stream.results import MaskResult, StepResult
from engine.stream.track_output import TrackWriter


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="as arsel track: camera index, video, frame folder, synthetic[:N]")
    p.add_argument("--box", action="append", metavar="X0,Y0,X1,Y1", help="box on the first frame (repeatable)")
    p.add_argument("--point", action="append", metavar="X,Y", help="foreground point on the first frame")
    p.add_argument("--gaze", metavar="CSV", help="gaze recording timestamp_ns,x,y,confidence (start aligned)")
    p.add_argument("--depth", metavar="DIR", help="folder of 16-bit depth images, one per frame")
    p.add_argument("--intrinsics", metavar="JSON", help="colour/depth intrinsics (needed with --depth)")
    p.add_argument("--url", default="ws://127.0.0.1:8765/v1/stream")
    p.add_argument("--token")
    p.add_argument("--encoding", default="jpeg", choices=("jpeg", "png", "rgb8"))
    p.add_argument("--max-frames", type=int)
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if sum(bool(k) for k in (args.box or args.point, args.gaze)) != 1:
        p.error("give one kind of prompt: --box/--point (repeatable) or --gaze CSV")
    if bool(args.depth) != bool(args.intrinsics):
        p.error("--depth and --intrinsics go together")
    return args


class _Remote:
    """What ``TrackWriter`` reads from an engine: the latency HUD, here fed by the server's figures."""

    def __init__(self) -> None:
        self.latency = LatencyRecorder()


def step_result(msg: dict[str, Any], hw: tuple[int, int]) -> StepResult:
    """A server ``result`` as the engine's ``StepResult`` (for the track writers)."""
    masks = result_masks(msg)
    objs = tuple(MaskResult(o["id"], msg["frame_id"], msg["keyframe_id"], masks[o["id"]], float(o["score"]),
                            "ok" if o["status"] != "lost" else "lost",
                            None if o["bbox_xyxy"] is None else np.asarray(o["bbox_xyxy"], np.float32))
                 for o in msg["objects"])
    return StepResult(msg["frame_id"], msg["keyframe_id"], "ok", objs, hw, msg["embedding_age_frames"])


def _prompts(args: argparse.Namespace) -> list[dict[str, Any]]:
    from engine.cli_common import parse_box, parse_floats

    out = [{"box": [float(v) for v in parse_box(b)]} for b in args.box or []]
    out += [{"points": [[*parse_floats(t, (2,), "--point"), 1]]} for t in args.point or []]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from engine.stream.sources import open_source

    out = Path(args.out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    source = open_source(args.source)
    depths = sorted(p for p in Path(args.depth).iterdir() if p.is_file()) if args.depth else []
    intr = None
    if args.intrinsics:
        from calibration.intrinsics import load_intrinsics

        k = load_intrinsics(args.intrinsics)
        intr = (k.fx, k.fy, k.cx, k.cy)
    prompts, gaze, offset = _prompts(args), [], None
    remote, writer = _Remote(), None
    client = StreamClient(args.url, token=args.token)
    welcome = client.connect()
    t0, lift = time.perf_counter(), []
    try:
        for frame in source:
            if args.max_frames is not None and frame.index >= args.max_frames:
                break
            hw = frame.rgb.shape[:2]
            if writer is None:
                writer = TrackWriter(out, len(prompts) > 1, None if args.no_overlay else source.fps)
                if args.gaze:
                    from engine.gaze import read_gaze_csv

                    gaze = read_gaze_csv(args.gaze, hw)
                    offset = frame.timestamp_ns - gaze[0].timestamp_ns
                for p in prompts:
                    client.prompt(frame.index, "add", box=p.get("box"), points=p.get("points"))
            while gaze and gaze[0].timestamp_ns + offset <= frame.timestamp_ns:
                s = gaze.pop(0)
                client.gaze(s.timestamp_ns + offset, s.x if s.confidence > 0 else 0.0,
                            s.y if s.confidence > 0 else 0.0, s.confidence)
            kw: dict[str, Any] = {}
            if depths and frame.index < len(depths):
                kw = {"depth_raw": cv2.imread(str(depths[frame.index]), cv2.IMREAD_UNCHANGED), "intrinsics": intr}
            client.send_frame(frame.index, frame.rgb, t_capture_ns=frame.timestamp_ns, encoding=args.encoding, **kw)
            msg = client.result(frame.index)
            remote.latency.add_many({k: v for k, v in msg["latency_ms"].items()})
            remote.latency.add_age(msg["embedding_age_frames"])
            remote.latency.tick()
            lift += [{"frame_id": msg["frame_id"], "id": o["id"], "box3d": o["box3d"], "centroid_m": o["centroid_m"]}
                     for o in msg["objects"] if "box3d" in o]
            writer.write(step_result(msg, hw), frame, remote)
    finally:
        if writer is not None:
            writer.close()
        client.close()
        source.close()
    wall = time.perf_counter() - t0
    lat = remote.latency.to_json()
    metrics = {"source": args.source, "url": args.url, "model": welcome["model"], "frames": remote.latency.frames,
               "masks_written": 0 if writer is None else writer.count, "wall_s": round(wall, 3), "fps": lat["fps"],
               "stages": lat["stages"], "embedding_age_frames": lat["embedding_age_frames"],
               "server_errors": client.errors, "objects_3d": lift}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        m = run(args)
    except (OSError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"serve_client: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {m['masks_written']} masks, {m['fps']:.1f} fps, {len(m['server_errors'])} server errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
