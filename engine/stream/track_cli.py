"""``arsel track``: select objects in a video/camera/folder stream and write a mask for every frame.

    arsel track SOURCE (--box X0,Y0,X1,Y1 | --point X,Y | --gaze GAZE.csv) [--model NAME]
        [--backend torch] [--keyframe-interval K | --keyframe auto|K]
        [--motion homography|affine|none] [--async-encoder] --out DIR

Writes ``DIR/masks/NNNNN.png`` (one per input frame, input order, frame size; 0/255 for one
object, object ids for several), ``DIR/metrics.json`` and ``DIR/overlay.mp4`` (at the first
frame's size; frames of another size are resized to it and counted). ``--box`` and ``--point``
repeat for several objects and apply to the first frame. With ``--async-encoder`` on a file,
folder or recording (not a live camera) the first frame waits for its keyframe, so the frames
after it get masks instead of empty ones while the first encode runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# Wire into ``engine/cli.py``'s ``build_parser``:  add_track_parser(sub)


def add_track_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``track`` verb to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("track", help="track objects through a video, camera or frame folder")
    p.add_argument("source", help="camera index (0), video file, folder of frames (DAVIS layout ok), synthetic[:N]")
    prompt = p.add_argument_group("prompt (one kind; --box/--point repeat for several objects)")
    prompt.add_argument("--box", action="append", metavar="X0,Y0,X1,Y1", help="box on the first frame")
    prompt.add_argument("--point", action="append", metavar="X,Y", help="foreground point on the first frame")
    prompt.add_argument("--gaze", metavar="GAZE.csv",
                        help="gaze recording (timestamp_ns,x,y,confidence): a dwell selects")
    prompt.add_argument("--gaze-offset-ms", type=float, help="gaze time minus frame time (default: align starts)")
    p.add_argument("--model", default="lite_medsam", help="registered model name (default lite_medsam)")
    p.add_argument("--checkpoint", help="checkpoint path (default: resolved, see `arsel models`)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt", "auto"),
                   help="runtime of encoder and decoder (default torch; onnxruntime/tensorrt export on first use)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--keyframe-interval", type=int, metavar="K", help="encode every K frames (default 5)")
    key.add_argument("--keyframe", metavar="auto|K", help="'auto' (motion/score driven) or an interval K")
    p.add_argument("--motion", default="homography", choices=("homography", "affine", "none"),
                   help="keyframe->frame motion compensation (default homography)")
    p.add_argument("--async-encoder", action="store_true", help="encode keyframes on a worker thread")
    p.add_argument("--reuse-decode-px", type=float, default=0.0, metavar="PX",
                   help="reuse an object's last decode on the same keyframe when its prompt moved <= PX there "
                        "(0: decode every frame)")
    p.add_argument("--roi-margin", type=float, default=None, metavar="F",
                   help="upscale box-prompted masks only around the box grown by F times its size (torch "
                        "eager; exact inside, background outside; e.g. 0.25; default: whole masks)")
    p.add_argument("--threads", type=int, help="CPU threads per engine thread (default: half the cores with "
                   "--async-encoder, so the encoder worker and the decoder do not fight over them)")
    p.add_argument("--max-frames", type=int, help="stop after N input frames")
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    p.add_argument("--out", required=True, help="output folder: masks/, metrics.json, overlay.mp4")
    p.set_defaults(func=cmd_track)
    return p


def _usage(msg: str) -> Exception:
    from engine.cli import UsageError

    return UsageError(msg)


def _policy(args: argparse.Namespace) -> Any:
    from engine.stream.scheduler import KeyframePolicy

    if args.keyframe is not None:
        try:
            return KeyframePolicy.parse(args.keyframe)
        except ValueError as exc:
            raise _usage(f"--keyframe: {exc}") from None
    k = 5 if args.keyframe_interval is None else args.keyframe_interval
    if k < 1:
        raise _usage(f"--keyframe-interval must be >= 1 (1 = every frame), got {k}")
    return KeyframePolicy(mode="interval", interval=k)


def _prompts(args: argparse.Namespace) -> list[Any]:
    from engine.cli import _floats, parse_box
    from engine.stream.events import Prompt

    kinds = [k for k in ("box", "point", "gaze") if getattr(args, k)]
    if len(kinds) != 1:
        raise _usage("give one kind of prompt: --box X0,Y0,X1,Y1 or --point X,Y (repeatable), or --gaze GAZE.csv")
    prompts = [Prompt.box(parse_box(b), source="cli") for b in args.box or []]
    prompts += [Prompt.point(*_floats(t, (2,), "--point"), source="cli") for t in args.point or []]
    return prompts


def _threads(args: argparse.Namespace) -> int | None:
    """Threads per engine thread. Encoder and decoder each run their own intra-op pool: half the
    cores each avoids oversubscription (two pools of all cores fight over them)."""
    if args.threads is not None and args.threads < 1:
        raise _usage(f"--threads must be >= 1, got {args.threads}")
    if args.threads is None and not args.async_encoder:
        return None
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    if args.backend == "torch":
        import torch

        torch.set_num_threads(threads)
    return threads


def cmd_track(args: argparse.Namespace) -> int:
    from engine.stream.engine import EngineConfig, StreamEngine
    from engine.stream.sources import open_source

    policy = _policy(args)
    prompts = _prompts(args)
    if args.max_frames is not None and args.max_frames < 1:
        raise _usage(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.reuse_decode_px < 0:
        raise _usage(f"--reuse-decode-px must be >= 0, got {args.reuse_decode_px}")
    if args.roi_margin is not None and args.roi_margin < 0:
        raise _usage(f"--roi-margin must be >= 0 (a fraction of the box size), got {args.roi_margin}")
    threads = _threads(args)
    out = Path(args.out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    source = open_source(args.source)  # first: a bad source fails before the model loads
    try:
        engine = StreamEngine.from_name(args.model, Path(args.checkpoint) if args.checkpoint else None,
                                        args.device, backend=args.backend, threads=threads, policy=policy,
                                        motion=args.motion, async_encoder=args.async_encoder,
                                        config=EngineConfig(reuse_decode_px=args.reuse_decode_px,
                                                            roi_margin=args.roi_margin))
    except BaseException:
        source.close()  # a camera is released even when the model fails to load
        raise
    writer = _Writer(out, len(prompts) > 1, None if args.no_overlay else source.fps)
    t0 = time.perf_counter()
    wait_first = engine.encoder.asynchronous and not _is_live(source)
    try:  # the camera/file is released and the encoder worker stopped whatever happens
        events = _events(args, engine, prompts)
        for res, frame in _loop(engine, source, events, args.max_frames):
            writer.write(res, frame, engine)
            if wait_first:  # offline input: the first keyframe before the next frame, not masks left empty
                engine.encoder.wait_idle()
                wait_first = False
        total = _length(source)
        if args.max_frames is None and total is not None:
            writer.fill_to(total)  # trailing unreadable frames still get a mask
    finally:
        writer.close()
        engine.close()
        source.close()
    metrics = _metrics(args, engine, source, writer, time.perf_counter() - t0)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"{out}: {writer.count} masks, {metrics['fps']:.1f} fps, keyframes {metrics['keyframes_total']}, "
          f"frame p95 {metrics['stages'].get('frame', {}).get('p95_ms', float('nan')):.0f} ms")
    return 0


def _length(source: Any) -> int | None:
    """Input frames the source announces, None when it cannot tell (camera, video without a count)."""
    try:
        return len(source)
    except TypeError:
        return None


def _is_live(source: Any) -> bool:
    """A live camera (OpenCV or RealSense without a recording): it must never wait for the encoder."""
    from engine.stream.sources import CameraSource

    return isinstance(source, CameraSource) or (type(source).__name__ == "RealSenseSource"
                                                and getattr(source, "bag", None) is None)


def _events(args: argparse.Namespace, engine: Any, prompts: list[Any]) -> Any:
    """``events(frame)`` callback: the CLI prompts on the first frame, or gaze replay."""
    state: dict[str, Any] = {"first": True, "replay": None}

    def events(frame: Any) -> list[Any]:
        from engine.stream.events import SelectEvent

        if not args.gaze:
            first, state["first"] = state["first"], False
            return [SelectEvent(p, None, frame.timestamp_ns) for p in prompts] if first else []
        if state["replay"] is None:
            from engine.stream.prompt_sources import GazeReplay

            offset = None if args.gaze_offset_ms is None else int(-args.gaze_offset_ms * 1e6)
            state["replay"] = GazeReplay.from_csv(args.gaze, frame.rgb.shape[:2], offset_ns=offset)
        return state["replay"].events_until(frame.timestamp_ns)

    return events


def _loop(engine: Any, source: Any, events: Any, max_frames: int | None) -> Any:
    from tqdm import tqdm

    total = _length(source)
    if max_frames is not None:
        total = min(total or max_frames, max_frames)
    with tqdm(total=total, unit="frame", desc="track", file=sys.stderr, disable=None) as bar:
        for frame, res in engine.run_frames(source, events):
            yield res, frame
            bar.update(1)
            if max_frames is not None and frame is not None and frame.index + 1 >= max_frames:
                return


class _Writer:
    """Masks (one per input frame, gaps filled with empty masks), overlay video."""

    def __init__(self, out: Path, id_values: bool, overlay_fps: float | None) -> None:
        self.out, self.id_values, self.overlay_fps = out, id_values, overlay_fps
        self.count = 0
        self.next_index = 0
        self.hw: tuple[int, int] | None = None
        self.video: cv2.VideoWriter | None = None
        self.video_hw: tuple[int, int] | None = None  # the overlay video's size (its first frame's)
        self.video_frames = 0
        self.video_resized = 0  # overlay frames of another size, resized to video_hw

    def _mask(self, index: int, mask: np.ndarray) -> None:
        from engine.imageio import save_mask_png

        save_mask_png(self.out / "masks" / f"{index:05d}.png", mask)
        self.count += 1

    def fill_to(self, index: int) -> None:
        """Empty masks for input frames ``next_index .. index-1`` that produced no result."""
        if self.hw is None:
            return
        for i in range(self.next_index, index):
            self._mask(i, np.zeros(self.hw, bool if not self.id_values else np.uint8))
        self.next_index = max(self.next_index, index)

    def write(self, res: Any, frame: Any, engine: Any) -> None:
        if res.status == "bad_frame" or frame is None:
            return
        self.hw = res.frame_hw
        self.fill_to(frame.index)
        ids = res.id_map()
        self._mask(frame.index, ids if self.id_values else ids > 0)
        self.next_index = frame.index + 1
        if self.overlay_fps is not None:
            self._overlay(res, frame, engine)

    def _overlay(self, res: Any, frame: Any, engine: Any) -> None:
        from engine.imageio import draw_overlay
        from engine.stream.latency import draw_hud

        masks = res.masks_by_id()
        boxes = [r.box_xyxy for r in res.objects if r.box_xyxy is not None]
        img = draw_overlay(frame.rgb, masks, boxes_xyxy=np.array(boxes) if boxes else None)
        lines = [f"frame {res.frame_index}  key {res.keyframe_index}  age {res.embedding_age_frames}",
                 *engine.latency.hud_lines()]
        draw_hud(img, lines)
        if self.video is None:
            path = str(self.out / "overlay.mp4")
            self.video_hw = h, w = img.shape[:2]
            self.video = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), self.overlay_fps, (w, h))
            if not self.video.isOpened():
                raise OSError(f"cannot write {path} with OpenCV's mp4v codec; pass --no-overlay")
        if img.shape[:2] != self.video_hw:  # the source changed size: a video has one size
            h, w = self.video_hw  # type: ignore[misc]
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            self.video_resized += 1
        self.video.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        self.video_frames += 1

    def close(self) -> None:
        if self.video is not None:
            self.video.release()
            self.video = None


def _metrics(args: argparse.Namespace, engine: Any, source: Any, writer: _Writer, wall_s: float) -> dict[str, Any]:
    lat = engine.latency.to_json()
    enc = engine.encoder.stats
    src = source.stats.to_dict()
    return {
        "source": args.source,
        "model": args.model,
        "backend": engine.predictor.backend.describe().runtime,
        "policy": {"mode": engine.policy.mode, "interval": engine.policy.interval},
        "motion": args.motion,
        "async_encoder": bool(args.async_encoder),
        "frames": engine.stats.frames,
        "masks_written": writer.count,
        "overlay_frames": writer.video_frames,
        "overlay_frames_resized": writer.video_resized,
        "wall_s": round(wall_s, 3),
        "fps": lat["fps"],
        "stages": lat["stages"],
        "embedding_age_frames": lat["embedding_age_frames"],
        "keyframes_used": list(engine.stats.keyframes_used),  # the most recent RECENT_KEYFRAMES
        "keyframes_total": engine.stats.keyframes_total,
        "keyframe_requests": engine.stats.keyframe_requests,
        "keyframe_requests_dropped_busy": enc.dropped_busy,
        "decodes_reused": engine.stats.decodes_reused,
        "dropped_frames": src["dropped"],
        "late_frames": src["late"] + engine.stats.late_frames,
        "late_frames_over_budget": engine.stats.late_frames,
        "frame_budget_ms": engine.config.frame_budget_ms,
        "bad_frames": src["bad"] + engine.stats.bad_frames,
        "source_stats": src,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (``python -m engine.stream.track_cli ...``), same flags as ``arsel track``."""
    from engine.cli import UsageError

    parser = argparse.ArgumentParser(prog="arsel")
    add_track_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["track", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (UsageError, ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"arsel track: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
