"""The ``arsel`` command line.

Verbs: ``doctor``, ``models``, ``segment``, ``everything``, ``weights fetch``, ``export``, ``build-engine``,
``track``, ``lift``, ``fuse``, ``calibrate intrinsics``, ``calibrate gaze``, ``demo``. Each verb's flags
are the contract users' scripts depend on (see the README).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np


# The shared pieces live in the leaf ``engine.cli_common``; the old names stay importable from here.
from engine.cli_common import (UsageError, add_debug_arg, add_model_args, build_predictor, parse_box, parse_floats,
                               parse_points, parse_with_debug, run_verb)

_floats = parse_floats
_add_model_args = add_model_args
_predictor = build_predictor

__all__ = ["UsageError", "build_parser", "main", "parse_box", "parse_points"]


def cmd_models(args: argparse.Namespace) -> int:
    from engine.models.registry import REGISTRY
    from engine.weights import where

    print(f"{'name':<12} {'input':>5}  {'prompts':<16} weights")
    for spec in REGISTRY.values():
        path = where(spec.name)
        found = str(path) if path else f"not found: run `arsel weights fetch {spec.name}`"
        print(f"{spec.name:<12} {spec.input_size:>5}  {','.join(sorted(spec.prompt_kinds)):<16} {found}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from engine.atomic import AtomicOutputs
    from engine.imageio import draw_overlay, load_rgb, save_mask_png, save_rgb
    from engine.transforms import mask_to_box_xyxy
    from engine.validate import IMAGE_SUFFIXES, box_xyxy, json_text, output_file, points_xy

    points, labels = parse_points(args.point)
    box = parse_box(args.box)
    if points is None and box is None:
        raise UsageError("give a prompt: --point X,Y[,LABEL] (repeatable) and/or --box X0,Y0,X1,Y1")
    output_file("--out", args.out, IMAGE_SUFFIXES)
    output_file("--overlay", args.overlay, IMAGE_SUFFIXES)
    output_file("--logits", args.logits, (".npy",))
    output_file("--json", args.json, (".json",))
    rgb = load_rgb(args.image)
    box = None if box is None else box_xyxy("--box", box, rgb.shape[:2])
    points = None if points is None else points_xy("--point", points, rgb.shape[:2])
    predictor = build_predictor(args)
    predictor.set_image(rgb)
    pred = predictor.predict(points, labels, box, multimask_output=args.multimask)
    best = int(np.argmax(pred.scores[0]))
    mask, logits = pred.masks[0, best], pred.logits[0, best]  # type: ignore[index]
    bbox = mask_to_box_xyxy(mask)
    report = {
        "image": str(args.image),
        "model": args.model,
        "original_hw": list(rgb.shape[:2]),
        "image_hw": list(rgb.shape[:2]),  # the old key of original_hw: read by scripts outside arsel, kept one release
        "scores": [float(s) for s in pred.scores[0]],
        "chosen": best,
        "score": float(pred.scores[0, best]),
        "area_px": int(mask.sum()),
        "bbox_xyxy": None if bbox is None else [int(v) for v in bbox],
        "encode_ms": round(predictor.encode_ms, 2),
        "decode_ms": round(pred.timings_ms["decode_ms"], 2),
        "postprocess_ms": round(pred.timings_ms["postprocess_ms"], 2),
        "backend": predictor.backend.describe().runtime,
    }
    with AtomicOutputs() as outs:  # mask, logits, overlay and JSON appear together, or none of them
        save_mask_png(outs.file(args.out), mask)
        if args.logits:
            np.save(outs.file(args.logits), logits.astype(np.float32))
        if args.overlay:
            save_rgb(outs.file(args.overlay), draw_overlay(rgb, [mask], points, labels, box))
        if args.json:
            outs.file(args.json).write_text(json_text(report))
    print(f"{args.out}: score {report['score']:.3f}, area {report['area_px']} px, "
          f"encode {report['encode_ms']:.0f} ms, decode {report['decode_ms']:.1f} ms")
    return 0


def cmd_everything(args: argparse.Namespace) -> int:
    from engine.amg import AutoMaskConfig, generate_masks
    from engine.atomic import AtomicOutputs
    from engine.imageio import load_rgb
    from engine.validate import number, output_dir

    number("--points-per-side", args.points_per_side, lo=1, hi=MAX_POINTS_PER_SIDE, integer=True,
           hint=" (a grid of N x N point prompts; default 16)")
    output_dir("--out", args.out)
    cfg = AutoMaskConfig(points_per_side=args.points_per_side)  # bad flags fail before the model loads
    rgb = load_rgb(args.image)
    predictor = build_predictor(args)
    t0 = time.perf_counter()
    predictor.set_image(rgb)
    masks = generate_masks(predictor, cfg, progress=True)
    with AtomicOutputs() as outs:  # the masks, overlay and masks.json appear together, or not at all
        _write_everything(args, outs.folder(args.out), rgb, masks, time.perf_counter() - t0)
    print(f"{args.out}: {len(masks)} masks in {time.perf_counter() - t0:.2f} s")
    return 0


def _write_everything(args: argparse.Namespace, out: Path, rgb: np.ndarray, masks: list, seconds: float) -> None:
    from engine.imageio import draw_overlay, save_mask_png, save_rgb
    from engine.validate import json_text

    records = []
    for i, m in enumerate(masks):
        name = f"mask_{i:03d}.png"
        save_mask_png(out / name, m.mask)
        records.append({"file": name, "area_px": m.area_px, "bbox_xyxy": m.bbox_xyxy,
                        "predicted_iou": m.predicted_iou, "stability_score": m.stability_score})
    save_rgb(out / "overlay.jpg", draw_overlay(rgb, [m.mask for m in masks]))
    summary = {"image": str(args.image), "model": args.model, "num_masks": len(masks),
               "seconds": round(seconds, 2), "masks": records}
    (out / "masks.json").write_text(json_text(summary))


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from engine.validate import output_dir
    from engine.weights import fetch, source

    source(args.name)  # an unknown name fails before any folder is touched
    output_dir("--dir", args.dir)
    path = fetch(args.name, Path(args.dir) if args.dir else None)
    print(path)
    return 0


MAX_POINTS_PER_SIDE = 128  # 16,384 point prompts; beyond that the grid alone fills the memory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arsel", description=__doc__.splitlines()[0])
    add_debug_arg(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list models, their input size, prompt kinds and weights")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("doctor", help="what arsel sees: torch build, GPU, runtimes, cameras, weights, extras")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=lambda a: __import__("engine.doctor").doctor.run(a.json))

    p = sub.add_parser("segment", help="segment one image from point/box prompts")
    p.add_argument("image", help="image file, or sample:cat / sample:coffee (scikit-image data)")
    add_model_args(p)
    p.add_argument("--point", action="append", metavar="X,Y[,LABEL]", help="1 = foreground (default), 0 = background")
    p.add_argument("--box", metavar="X0,Y0,X1,Y1")
    p.add_argument("--multimask", action="store_true", help="decode 3 candidates, keep the best-scoring")
    p.add_argument("--out", required=True, help="mask PNG (input's HxW, values 0/255)")
    p.add_argument("--logits", help="save the mask's float32 logits at full HxW (.npy)")
    p.add_argument("--overlay", help="save an overlay image")
    p.add_argument("--json", help="save scores, area, bbox and timings")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("everything", help="segment everything (automatic mask generation)")
    p.add_argument("image")
    add_model_args(p)
    p.add_argument("--points-per-side", type=int, default=16)
    p.add_argument("--out", required=True, help="output folder: one PNG per mask + masks.json + overlay.jpg")
    p.set_defaults(func=cmd_everything)

    p = sub.add_parser("weights", help="manage checkpoints")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    f = wsub.add_parser("fetch", help="download an official checkpoint (resumable, sha256-checked)")
    f.add_argument("name")
    f.add_argument("--dir", help="destination folder (default: $ARSEL_WEIGHTS_DIR or the user cache)")
    f.set_defaults(func=cmd_weights_fetch)

    # Verbs that live beside their code; their modules import heavy libraries only when run.
    from calibration.cli import add_calibrate_parser
    from engine.demo.cli import add_demo_parser
    from engine.export.cli import add_export_parser
    from engine.lift.cli import add_fuse_parser, add_lift_parser
    from engine.stream.track_cli import add_track_parser
    from trt.cli import add_build_engine_parser

    for add in (add_export_parser, add_build_engine_parser, add_track_parser, add_lift_parser,
                add_fuse_parser, add_calibrate_parser, add_demo_parser):
        add(sub)
    from engine.serve.cli import add_serve_parser  # arsel serve: the arsel.v1 stream server

    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_verb(parse_with_debug(parser, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
