"""``arsel demo``: the one-command tour - gaze selects objects in an RGB-D stream, they are lifted to 3D.

Usage:
    arsel demo [--out DIR] [--frames N] [--model NAME] [--backend auto|torch|onnxruntime|tensorrt]
               [--device cpu|cuda[:N]] [--seed S] [--async-encoder | --sync-encoder] [--no-video]
    arsel demo --realsense | --bag FILE.bag | --camera 0     (the same on real input)

Without an input flag it renders a synthetic table-top scene (three objects of known size, an
orbiting RealSense-like camera) with a simulated gaze that fixates each object in turn, and
reports true vs lifted sizes. Real input selects by head gaze: hold an object in the middle of the
view for 0.6 s. ``--camera`` has no depth, so it runs the 2D part only.

Writes into ``--out`` (default ``arsel-demo-YYYYmmdd-HHMMSS``): ``overlay.mp4``, one
``object_<id>.ply`` per selected object, ``gaze.csv`` and ``summary.json``.

Exit status: 0 done; 1 the input failed mid-run (camera unplugged, broken recording): what was
gathered is still written and ``summary.json`` has ``"error"``; 2 bad input, or an input that
could not be opened or delivered no frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from engine.cli_common import UsageError, add_model_args, verb_main

DEFAULT_FRAMES = 150
EXIT_INPUT_FAILED = 1


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` verb to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("demo", help="gaze-select objects in an RGB-D stream and lift them to 3D "
                              "(synthetic scene by default)", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--realsense", action="store_true", help="live Intel RealSense camera (needs pyrealsense2)")
    src.add_argument("--bag", metavar="FILE.bag", help="RealSense recording (.bag) played back")
    src.add_argument("--camera", type=int, metavar="INDEX", help="plain camera (no depth: 2D selection only)")
    p.add_argument("--out", help="output folder (default: a new arsel-demo-<timestamp> folder here)")
    p.add_argument("--frames", type=int, default=None,
                   help=f"frames to process (default {DEFAULT_FRAMES} synthetic; real input: 300)")
    add_model_args(p, model_help="registered model name (default lite_medsam)", backend_default="auto",
                   device_help="cpu or cuda[:N] (default cpu; --backend tensorrt needs cuda)",
                   backend_help="runtime (default auto: TensorRT on a CUDA --device when installed, else "
                                "onnxruntime when installed, else torch)")
    p.add_argument("--keyframe-interval", type=int, default=5, metavar="K", help="encode every K frames (default 5)")
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--async-encoder", dest="async_encoder", action="store_const", const=True, default=None,
                     help="encode keyframes on a worker thread (default for real input)")
    enc.add_argument("--sync-encoder", dest="async_encoder", action="store_const", const=False,
                     help="encode keyframes in the frame loop (default for the synthetic scene: its 3D figures "
                          "then do not depend on the machine's load)")
    p.add_argument("--seed", type=int, default=0, help="scene noise and gaze seed (synthetic)")
    p.add_argument("--no-video", action="store_true", help="skip overlay.mp4")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    return p


def _config(args: argparse.Namespace) -> Any:
    from engine.demo.pipeline import DemoConfig

    kind = ("realsense" if args.realsense else "bag" if args.bag
            else "camera" if args.camera is not None else "synthetic")
    if args.bag and not Path(args.bag).is_file():
        raise FileNotFoundError(f"--bag {args.bag}: no such file; record one with the RealSense Viewer")
    frames = args.frames if args.frames is not None else DEFAULT_FRAMES if kind == "synthetic" else 300
    if frames < 2:
        raise UsageError(f"--frames must be >= 2, got {frames}")
    if args.keyframe_interval < 1:
        raise UsageError(f"--keyframe-interval must be >= 1 (1 = every frame), got {args.keyframe_interval}")
    if args.camera is not None and args.camera < 0:
        raise UsageError(f"--camera must be a camera index >= 0, got {args.camera}")
    if args.backend == "tensorrt" and not args.device.startswith("cuda"):
        raise UsageError(f"--backend tensorrt runs on a CUDA GPU: add --device cuda (got --device {args.device})")
    return DemoConfig(frames=frames, model=args.model, backend=args.backend, device=args.device,
                      checkpoint=args.checkpoint,
                      seed=args.seed, keyframe_interval=args.keyframe_interval, video=not args.no_video,
                      async_encoder=args.async_encoder,
                      input=kind, bag=args.bag, camera=0 if args.camera is None else args.camera)


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out:
        from engine.validate import output_dir

        out = Path(args.out)
        output_dir("--out", out)
        return out
    out = Path(f"arsel-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    k = 1
    while out.exists():
        out, k = Path(f"arsel-demo-{time.strftime('%Y%m%d-%H%M%S')}-{k}"), k + 1
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo.pipeline import run_demo

    from engine.atomic import AtomicOutputs

    config = _config(args)
    out = _out_dir(args)
    with AtomicOutputs() as outs:  # the demo's files appear together when it ends, or not at all
        summary = run_demo(config, outs.folder(out), progress=not args.quiet)
    print(format_summary(summary, out))
    return EXIT_INPUT_FAILED if summary.get("error") else 0


def format_summary(summary: dict[str, Any], out: Path) -> str:
    """The lines ``arsel demo`` prints: throughput, then true vs lifted extents per object."""
    lat = summary["latency_ms"]
    frame = {k: lat.get("frame", {}).get(k, float("nan")) for k in ("p50_ms", "p95_ms")}
    engine_fps = summary.get("engine_fps") or float("nan")
    lines = [f"{out}: {summary['frames']} frames in {summary['wall_s']:.1f} s: engine {engine_fps:.1f} fps "
             f"(step p50 {frame['p50_ms']:.0f} ms, p95 {frame['p95_ms']:.0f} ms), wall {summary['wall_fps']:.2f} fps "
             f"(rendering, lifting, video and keyframe waits included), {summary['backend']}, "
             f"lifting: {summary['lifting']}"]
    for obj in summary["objects"]:
        lifted = obj.get("lifted_extent_m")
        text = f"  object {obj['id']}"
        if "true_object" in obj:
            text += f" ({obj['true_object']}, mask IoU {obj['mask_iou_vs_truth']:.2f})"
            text += f": true {_cm(obj['true_extent_m'])}"
            if "visible_extent_m" in obj:
                text += f", visible {_cm(obj['visible_extent_m'])}"
        text += f", lifted {_cm(lifted) if lifted else 'n/a'} [{obj['method']}, {obj['frames_selected']} frames]"
        lines.append(text)
    if not summary["objects"]:
        lines.append("  no object was selected (gaze never dwelt long enough on one)")
    if summary.get("no_depth_frames"):
        lines.append(f"  {summary['no_depth_frames']} frames came without depth (not lifted)")
    if summary.get("error"):
        lines.append(f"  stopped early, results so far written: {summary['error']}")
    return "\n".join(lines)


def _cm(extent_m: list[float]) -> str:
    return " x ".join(f"{100 * v:.1f}" for v in extent_m) + " cm"


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m engine.demo.cli ...``), same flags as ``arsel demo``."""
    return verb_main(add_demo_parser, "demo", argv)


if __name__ == "__main__":
    sys.exit(main())
