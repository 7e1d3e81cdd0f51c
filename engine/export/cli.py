"""The ``arsel export`` verb (wired into ``engine.cli.build_parser``).

    arsel export MODEL --out DIR [--checkpoint P] [--opset N] [--fp16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engine.cli_common import add_checkpoint_arg

__all__ = ["add_export_parser", "add_model_arg", "cmd_export"]


MIN_OPSET = 17  # LayerNormalization; the exported graphs are checked at 17 and newer


def _check_opset(opset: int) -> None:
    """``--opset`` within what this model's graphs and the installed torch exporter support."""
    from torch.onnx import _constants

    from engine.validate import number

    top = int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", 20)))
    number("--opset", opset, lo=MIN_OPSET, hi=top, integer=True, hint=f" (supported: {MIN_OPSET}..{top}; default 17)")


def cmd_export(args: argparse.Namespace) -> int:
    from engine.atomic import AtomicOutputs
    from engine.export.onnx_export import export_model
    from engine.models.registry import get_spec
    from engine.validate import output_dir
    from engine.weights import resolve

    get_spec(args.model)
    _check_opset(args.opset)
    out = Path(args.out)
    output_dir("--out", out)
    ckpt = resolve(args.model, Path(args.checkpoint) if args.checkpoint else None)  # a missing file fails here
    with AtomicOutputs() as outs:  # the encoder, decoder and export.json appear together, or not at all
        tmp = outs.folder(out)
        result = export_model(args.model, tmp, ckpt, opset=args.opset, fp16=args.fp16)
        report = tmp / f"{args.model}_export.json"  # name the files where they will live, not the temporary
        report.write_text(report.read_text().replace(json.dumps(str(tmp))[1:-1], json.dumps(str(out))[1:-1]))
    print(f"{out / result.encoder_path.name}: max |onnx - torch| {result.encoder_max_abs_diff:.2e}")
    print(f"{out / result.decoder_path.name}: max |onnx - torch| {result.decoder_max_abs_diff:.2e}")
    print(f"weights sha256 {result.model_sha256}")
    return 0


def add_model_arg(p: argparse.ArgumentParser) -> None:
    """Positional ``MODEL`` and ``--checkpoint``."""
    p.add_argument("model", metavar="MODEL", help="registered model name (see `arsel models`)")
    add_checkpoint_arg(p)


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``arsel export MODEL --out DIR [--checkpoint P] [--opset N] [--fp16]``."""
    p = subparsers.add_parser("export", help="export encoder + decoder ONNX, checked against torch")
    add_model_arg(p)
    p.add_argument("--out", required=True, help="output folder for MODEL_encoder.onnx and MODEL_decoder.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--fp16", action="store_true",
                   help="fp16 encoder (norms/softmax kept fp32, float32 I/O); needs onnxconverter-common")
    p.set_defaults(func=cmd_export)
    return p
