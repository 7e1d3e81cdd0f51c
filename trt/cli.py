"""The ``arsel build-engine`` verb (wired into ``engine.cli.build_parser``; ``arsel export`` lives in
``engine.export.cli``).

    arsel build-engine MODEL [--fp16] [--int8 CALIB_DIR] --out DIR [--checkpoint P] [--onnx-dir DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.export.cli import add_export_parser, add_model_arg, cmd_export

__all__ = ["add_build_engine_parser", "add_export_parser", "cmd_build_engine", "cmd_export"]


def cmd_build_engine(args: argparse.Namespace) -> int:
    from engine.export.onnx_export import export_model
    from engine.models.registry import get_spec
    from trt.build import build_engine, import_tensorrt

    from engine.validate import output_dir

    spec = get_spec(args.model)
    output_dir("--out", args.out)
    if args.int8 and not Path(args.int8).is_dir():
        raise FileNotFoundError(f"--int8 {args.int8}: calibration image folder not found")
    try:
        import_tensorrt()  # fail before a long export, as one line on the command line
    except ImportError as exc:
        raise RuntimeError(str(exc)) from None
    out = Path(args.out)
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else out
    encoder = onnx_dir / f"{args.model}_encoder.onnx"
    decoder = onnx_dir / f"{args.model}_decoder.onnx"
    if not (encoder.is_file() and decoder.is_file()):
        print(f"no ONNX files in {onnx_dir}: exporting {args.model} first")
        export_model(args.model, onnx_dir, Path(args.checkpoint) if args.checkpoint else None)
    enc_precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    dec_precision = "fp16" if (args.fp16 or args.int8) else "fp32"
    for onnx_path, precision in ((encoder, enc_precision), (decoder, dec_precision)):
        print(f"building {onnx_path.name} ({precision}) ...", flush=True)
        engine = build_engine(onnx_path, out, precision, calib_dir=args.int8, pixel_norm=spec.pixel_norm)
        print(engine)
    return 0


def add_build_engine_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``arsel build-engine MODEL [--fp16] [--int8 CALIB_DIR] --out DIR``."""
    p = subparsers.add_parser("build-engine", help="build TensorRT engines (not yet verified on a GPU; exports the ONNX first if needed)")
    add_model_arg(p)
    p.add_argument("--out", required=True, help="engine folder (engines are cached by ONNX hash, TRT version, GPU)")
    p.add_argument("--onnx-dir", help="folder of MODEL_encoder.onnx / MODEL_decoder.onnx (default: --out)")
    p.add_argument("--fp16", action="store_true", help="fp16 kernels; LayerNorm/softmax/reductions stay fp32 (not yet verified on a GPU)")
    p.add_argument("--int8", metavar="CALIB_DIR", help="int8 encoder calibrated on the images of CALIB_DIR "
                   "(TensorRT 10; the decoder is built fp16; not yet verified on a GPU)")
    p.set_defaults(func=cmd_build_engine)
    return p
