"""The ``arsel export`` verb (wired into ``engine.cli.build_parser``).

    arsel export MODEL --out DIR [--checkpoint P] [--opset N] [--fp16]
    arsel export MODEL --triton-repo DIR [--fp16] [--triton-max-batch B] [--triton-instances K]

``--triton-repo`` writes a Triton Inference Server model repository (``engine.export.triton_repo``);
``--out`` and ``--triton-repo`` may be given together.
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
    from engine.models.registry import get_spec
    from engine.validate import InputError, number, output_dir
    from engine.weights import resolve

    get_spec(args.model)
    _check_opset(args.opset)
    if args.out is None and args.triton_repo is None:
        raise InputError("arsel export needs --out DIR (ONNX files) or --triton-repo DIR (Triton repository), or both")
    number("--triton-max-batch", args.triton_max_batch, lo=1, hi=64, integer=True, hint=" (default 8)")
    number("--triton-instances", args.triton_instances, lo=1, hi=16, integer=True, hint=" (default 1)")
    repo = output_dir("--triton-repo", args.triton_repo)
    if repo is not None and repo.is_dir() and any(repo.iterdir()):
        raise InputError(f"--triton-repo {repo} is not empty; give a new or empty folder")
    if args.fp16 and not _fp16_converter_installed():
        raise InputError("--fp16 needs onnxconverter-common: pip install onnxconverter-common (or leave out --fp16)")
    out = output_dir("--out", args.out)
    ckpt = resolve(args.model, Path(args.checkpoint) if args.checkpoint else None)  # a missing file fails here
    if out is not None:
        _export_onnx(args, out, ckpt)
    if repo is not None:
        _export_triton(args, repo, ckpt)
    return 0


def _fp16_converter_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxconverter_common") is not None


def _export_triton(args: argparse.Namespace, repo: Path, ckpt: Path) -> None:
    from engine.atomic import AtomicOutputs
    from engine.export.triton_repo import write_triton_repo

    with AtomicOutputs() as outs:  # the whole repository appears at once, or not at all
        result = write_triton_repo(args.model, outs.folder(repo), ckpt, opset=args.opset, fp16=args.fp16,
                                   max_batch=args.triton_max_batch, instances=args.triton_instances)
    print(f"{repo}/encoder: batched max |onnx - torch| {result.encoder_max_abs_diff:.2e}, "
          f"max_batch_size {result.max_batch}")
    print(f"{repo}/decoder: max |onnx - torch| {result.decoder_max_abs_diff:.2e}")
    print(f"serve with: tritonserver --model-repository {repo.resolve()}  (not exercised in this project's CI)")


def _export_onnx(args: argparse.Namespace, out: Path, ckpt: Path) -> None:
    from engine.atomic import AtomicOutputs
    from engine.export.onnx_export import export_model

    with AtomicOutputs() as outs:  # the encoder, decoder and export.json appear together, or not at all
        tmp = outs.folder(out)
        result = export_model(args.model, tmp, ckpt, opset=args.opset, fp16=args.fp16)
        report = tmp / f"{args.model}_export.json"  # name the files where they will live, not the temporary
        report.write_text(report.read_text().replace(json.dumps(str(tmp))[1:-1], json.dumps(str(out))[1:-1]))
    print(f"{out / result.encoder_path.name}: max |onnx - torch| {result.encoder_max_abs_diff:.2e}")
    print(f"{out / result.decoder_path.name}: max |onnx - torch| {result.decoder_max_abs_diff:.2e}")
    print(f"weights sha256 {result.model_sha256}")


def add_model_arg(p: argparse.ArgumentParser) -> None:
    """Positional ``MODEL`` and ``--checkpoint``."""
    p.add_argument("model", metavar="MODEL", help="registered model name (see `arsel models`)")
    add_checkpoint_arg(p)


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``arsel export MODEL (--out DIR | --triton-repo DIR) [--checkpoint P] [--opset N] [--fp16] ...``."""
    p = subparsers.add_parser("export", help="export encoder + decoder ONNX, checked against torch")
    add_model_arg(p)
    p.add_argument("--out", help="output folder for MODEL_encoder.onnx and MODEL_decoder.onnx")
    p.add_argument("--triton-repo", metavar="DIR",
                   help="write a Triton model repository (encoder/1/model.onnx with a dynamic batch, "
                        "decoder/1/model.onnx, config.pbtxt each) to this new or empty folder")
    p.add_argument("--triton-max-batch", type=int, default=8, metavar="B",
                   help="Triton encoder max_batch_size; preferred batches are powers of two up to B (default 8)")
    p.add_argument("--triton-instances", type=int, default=1, metavar="K",
                   help="Triton instance_group count per GPU for each model (default 1)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--fp16", action="store_true",
                   help="fp16 encoder (norms/softmax kept fp32, float32 I/O); needs onnxconverter-common")
    p.set_defaults(func=cmd_export)
    return p
