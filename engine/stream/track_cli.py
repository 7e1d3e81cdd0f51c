"""``arsel track``: select objects in a video/camera/folder stream and write a mask for every frame.

    arsel track SOURCE (--box X0,Y0,X1,Y1 | --point X,Y | --gaze GAZE.csv) [--model NAME]
        [--backend torch] [--keyframe-interval auto|K]
        [--motion homography|affine|none] [--async-encoder] --out DIR

Writes ``DIR/masks/NNNNN.png`` (one per input frame, input order, frame size; 0/255 for one
object, object ids for several), ``DIR/metrics.json`` and ``DIR/overlay.mp4`` (at the first
frame's size; frames of another size are resized to it and counted), through
:mod:`engine.stream.track_output`. ``--box`` and ``--point`` repeat for several objects and apply to the first frame. With ``--async-encoder`` on a file,
folder or recording (not a live camera) the first frame waits for its keyframe, so the frames
after it get masks instead of empty ones while the first encode runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2

from engine.cli_common import (UsageError, add_keyframe_args, add_model_args, keyframe_policy, parse_box,
                               parse_floats, verb_main)
from engine.stream.track_output import TrackWriter, track_metrics
from engine.threads import apply_threads, engine_threads


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
    add_model_args(p, model_help="registered model name (default lite_medsam)",
                   backend_help="runtime of encoder and decoder (default torch; onnxruntime/tensorrt export on "
                                "first use)")
    add_keyframe_args(p)
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
    return UsageError(msg)


def _prompts(args: argparse.Namespace, frame_hw: tuple[int, int] | None) -> list[Any]:
    """The CLI's box/point prompts, checked against the first frame's size (when known)."""
    from engine.stream.events import Prompt
    from engine.validate import box_xyxy, points_xy

    kinds = [k for k in ("box", "point", "gaze") if getattr(args, k)]
    if len(kinds) != 1:
        raise _usage("give one kind of prompt: --box X0,Y0,X1,Y1 or --point X,Y (repeatable), or --gaze GAZE.csv")
    prompts = [Prompt.box(box_xyxy("--box", parse_box(b), frame_hw), source="cli") for b in args.box or []]
    for t in args.point or []:
        (x, y), = points_xy("--point", [parse_floats(t, (2,), "--point")], frame_hw).tolist()
        prompts.append(Prompt.point(x, y, source="cli"))
    return prompts


def _check_numbers(args: argparse.Namespace) -> None:
    """Every numeric flag finite and in range, named in the error (before anything is opened)."""
    from engine.validate import number, optional_number

    optional_number("--max-frames", args.max_frames, lo=1, integer=True)
    number("--reuse-decode-px", args.reuse_decode_px, lo=0, hint=" (0: decode every frame)")
    optional_number("--roi-margin", args.roi_margin, lo=0, hi=100, hint=" (a fraction of the box size, e.g. 0.25)")
    optional_number("--gaze-offset-ms", args.gaze_offset_ms, lo=-86_400_000, hi=86_400_000,
                    hint=" (gaze time minus frame time, ms)")
    optional_number("--threads", args.threads, lo=1, hi=1024, integer=True)


def _first_frame_hw(source: Any) -> tuple[int, int] | None:
    """(height, width) of the source's frames without reading a frame, None when it cannot tell."""
    files = getattr(source, "files", None)
    if files:
        image = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
        return None if image is None else (int(image.shape[0]), int(image.shape[1]))
    frames = getattr(source, "frames_rgb", None)
    if frames:
        return int(frames[0].shape[0]), int(frames[0].shape[1])
    cap = getattr(source, "_cap", None)
    if cap is not None:
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        return (h, w) if h > 0 and w > 0 else None
    return None


def _gaze_replay(args: argparse.Namespace, frame_hw: tuple[int, int] | None) -> Any:
    """The gaze replay of ``--gaze``, read and checked now (before the model loads); None without
    ``--gaze`` or when the frame size is not known yet (then :func:`_events` reads it on the first frame)."""
    if not args.gaze:
        return None
    from engine.stream.prompt_sources import GazeReplay

    if frame_hw is None:
        return None  # a source that tells its size only with its first frame: read the CSV then
    offset = None if args.gaze_offset_ms is None else int(-args.gaze_offset_ms * 1e6)
    return GazeReplay.from_csv(args.gaze, frame_hw, offset_ns=offset)


def _threads(args: argparse.Namespace) -> int | None:
    """Threads per engine thread (``engine.threads``): set with --threads or --async-encoder, else
    the runtime's default (None)."""
    if args.threads is not None and args.threads < 1:
        raise _usage(f"--threads must be >= 1, got {args.threads}")
    if args.threads is None and not args.async_encoder:
        return None
    threads = engine_threads(args.threads)
    apply_threads(args.backend, threads)
    return threads


def cmd_track(args: argparse.Namespace) -> int:
    from engine.atomic import AtomicOutputs
    from engine.stream.engine import EngineConfig, StreamEngine
    from engine.stream.sources import open_source
    from engine.validate import json_text, output_dir

    _check_numbers(args)
    policy = keyframe_policy(args)
    out = Path(args.out)
    output_dir("--out", out)
    source = open_source(args.source)  # first: a bad source fails before the model loads
    try:
        frame_hw = _first_frame_hw(source)
        if frame_hw is None and hasattr(source, "frame_count") and Path(args.source).is_file():
            raise ValueError(f"source {args.source}: OpenCV cannot decode it as a video (no frame size); "
                             "give a video file, a folder of frames or a camera index")
        prompts = _prompts(args, frame_hw)
        replay = _gaze_replay(args, frame_hw)
        threads = _threads(args)
        engine = StreamEngine.from_name(args.model, Path(args.checkpoint) if args.checkpoint else None,
                                        args.device, backend=args.backend, threads=threads, policy=policy,
                                        motion=args.motion, async_encoder=args.async_encoder,
                                        config=EngineConfig(reuse_decode_px=args.reuse_decode_px,
                                                            roi_margin=args.roi_margin))
    except BaseException:
        source.close()  # a camera is released even when the model fails to load
        raise
    with AtomicOutputs() as outs:  # masks/, metrics.json, overlay.mp4 appear together, or not at all
        tmp = outs.folder(out)
        (tmp / "masks").mkdir()
        writer = TrackWriter(tmp, len(prompts) > 1, None if args.no_overlay else source.fps)
        t0 = time.perf_counter()
        wait_first = engine.encoder.asynchronous and not _is_live(source)
        try:  # the camera/file is released and the encoder worker stopped whatever happens
            events = _Events(args, prompts, replay)
            for res, frame in _loop(engine, source, events, args.max_frames):
                writer.write(res, frame, engine)
                if wait_first:  # offline input: the first keyframe before the next frame, not masks left empty
                    engine.encoder.wait_idle()
                    wait_first = False
            total = _length(source)
            if args.max_frames is None and total is not None:
                writer.fill_to(total)  # trailing unreadable frames still get a mask
            if writer.count == 0:
                raise ValueError(f"source {args.source} gave no readable frame; nothing was written")
        finally:
            writer.close()
            engine.close()
            source.close()
        metrics = track_metrics(args, engine, source, writer, time.perf_counter() - t0)
        if events.replay is not None:
            metrics["gaze"] = events.replay.stats()
        (tmp / "metrics.json").write_text(json_text(metrics))
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


class _Events:
    """``events(frame)`` callback: the CLI prompts on the first frame, or gaze replay (read on the
    first frame when the source's size was not known before; ``replay`` keeps its counters)."""

    def __init__(self, args: argparse.Namespace, prompts: list[Any], replay: Any) -> None:
        self.args, self.prompts, self.replay = args, prompts, replay
        self.first = True

    def __call__(self, frame: Any) -> list[Any]:
        from engine.stream.events import SelectEvent

        if not self.args.gaze:
            first, self.first = self.first, False
            return [SelectEvent(p, None, frame.timestamp_ns) for p in self.prompts] if first else []
        if self.replay is None:
            self.replay = _gaze_replay(self.args, frame.rgb.shape[:2])
        return self.replay.events_until(frame.timestamp_ns)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (``python -m engine.stream.track_cli ...``), same flags as ``arsel track``."""
    return verb_main(add_track_parser, "track", argv)


if __name__ == "__main__":
    sys.exit(main())
