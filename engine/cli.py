"""The ``arsel`` command line.

Verbs: ``models``, ``segment``, ``everything``, ``weights fetch``, ``export``, ``build-engine``,
``track``, ``lift``, ``fuse``, ``calibrate intrinsics``, ``calibrate gaze``, ``demo``. Each verb's flags
are the contract users' scripts depend on (see the README).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


class UsageError(ValueError):
    """Bad command-line input; printed as one line, exit status 2."""


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{what} {text!r} must be comma-separated numbers") from None
    if len(vals) not in n:
        raise UsageError(f"{what} {text!r} must have {' or '.join(map(str, n))} values")
    return vals


def parse_points(items: Sequence[str] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``["X,Y[,LABEL]", ...]`` -> points ``(N, 2)`` float32 and labels ``(N,)`` (default 1)."""
    if not items:
        return None, None
    rows = [_floats(t, (2, 3), "--point") for t in items]
    pts = np.array([r[:2] for r in rows], dtype=np.float32)
    labels = np.array([r[2] if len(r) == 3 else 1.0 for r in rows], dtype=np.float32)
    if not np.all(np.isin(labels, (0.0, 1.0))):
        raise UsageError("--point LABEL must be 1 (foreground) or 0 (background)")
    return pts, labels


def parse_box(text: str | None) -> np.ndarray | None:
    """``"X0,Y0,X1,Y1"`` -> ``(4,)`` float32."""
    return None if text is None else np.array(_floats(text, (4,), "--box"), dtype=np.float32)


def _predictor(args: argparse.Namespace):  # noqa: ANN202 - lazy import keeps `arsel --help` fast
    from engine.predictor import Predictor

    return Predictor.from_name(args.model, Path(args.checkpoint) if args.checkpoint else None, args.device,
                               args.backend)


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
    from engine.imageio import draw_overlay, load_rgb, save_mask_png, save_rgb
    from engine.transforms import mask_to_box_xyxy

    points, labels = parse_points(args.point)
    box = parse_box(args.box)
    if points is None and box is None:
        raise UsageError("give a prompt: --point X,Y[,LABEL] (repeatable) and/or --box X0,Y0,X1,Y1")
    rgb = load_rgb(args.image)
    predictor = _predictor(args)
    predictor.set_image(rgb)
    pred = predictor.predict(points, labels, box, multimask_output=args.multimask)
    best = int(np.argmax(pred.scores[0]))
    mask, logits = pred.masks[0, best], pred.logits[0, best]  # type: ignore[index]
    save_mask_png(args.out, mask)
    if args.logits:
        Path(args.logits).parent.mkdir(parents=True, exist_ok=True)
        np.save(args.logits, logits.astype(np.float32))
    if args.overlay:
        save_rgb(args.overlay, draw_overlay(rgb, [mask], points, labels, box))
    bbox = mask_to_box_xyxy(mask)
    report = {
        "image": str(args.image),
        "model": args.model,
        "image_hw": list(rgb.shape[:2]),
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
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"{args.out}: score {report['score']:.3f}, area {report['area_px']} px, "
          f"encode {report['encode_ms']:.0f} ms, decode {report['decode_ms']:.1f} ms")
    return 0


def cmd_everything(args: argparse.Namespace) -> int:
    from engine.amg import AutoMaskConfig, generate_masks
    from engine.imageio import draw_overlay, load_rgb, save_mask_png, save_rgb

    cfg = AutoMaskConfig(points_per_side=args.points_per_side)  # bad flags fail before the model loads
    rgb = load_rgb(args.image)
    predictor = _predictor(args)
    t0 = time.perf_counter()
    predictor.set_image(rgb)
    masks = generate_masks(predictor, cfg, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, m in enumerate(masks):
        name = f"mask_{i:03d}.png"
        save_mask_png(out / name, m.mask)
        records.append({"file": name, "area_px": m.area_px, "bbox_xyxy": m.bbox_xyxy,
                        "predicted_iou": m.predicted_iou, "stability_score": m.stability_score})
    save_rgb(out / "overlay.jpg", draw_overlay(rgb, [m.mask for m in masks]))
    summary = {"image": str(args.image), "model": args.model, "num_masks": len(masks),
               "seconds": round(time.perf_counter() - t0, 2), "masks": records}
    (out / "masks.json").write_text(json.dumps(summary, indent=2))
    print(f"{out}: {len(masks)} masks in {summary['seconds']} s")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from engine.weights import fetch

    path = fetch(args.name, Path(args.dir) if args.dir else None)
    print(path)
    return 0


def _add_model_args(p: argparse.ArgumentParser, default: str = "lite_medsam") -> None:
    p.add_argument("--model", default=default, help=f"registered model name (default {default}; see `arsel models`)")
    p.add_argument("--checkpoint", help="checkpoint path (default: resolved, see `arsel models`)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime", "tensorrt", "auto"),
                   help="runtime (default torch; onnxruntime/tensorrt export ONNX into the cache on first use; "
                        "tensorrt is not yet verified on a GPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arsel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list models, their input size, prompt kinds and weights")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("segment", help="segment one image from point/box prompts")
    p.add_argument("image", help="image file, or sample:cat / sample:coffee (scikit-image data)")
    _add_model_args(p)
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
    _add_model_args(p)
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
    from engine.lift.cli import add_fuse_parser, add_lift_parser
    from engine.stream.track_cli import add_track_parser
    from trt.cli import add_build_engine_parser, add_export_parser

    for add in (add_export_parser, add_build_engine_parser, add_track_parser, add_lift_parser,
                add_fuse_parser, add_calibrate_parser, add_demo_parser):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError, ImportError) as exc:
        print(f"arsel {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
