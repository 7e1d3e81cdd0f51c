"""Per-batch cost of the encoder: what a shared, batching encoder (Ray Serve, Triton) gains per image.

Usage: python bench/bench_encoder_batch.py [--model lite_medsam] [--batches 1 2 4] [--short] [--out FILE]

Runs the torch image encoder (``SamModel.image_encoder``; ``encode`` itself takes batch 1) at the
real weights on batches of b random normalised images. Each row: the batch's time (median and
spread of the timed runs after one warm-up), the time per image, and the per-image ratio against
the first batch size in the same run. ``--short``: 1 timed run per batch (default 3). Writes the
JSON result through ``bench.harness``. CPU figures; ``docs/scaling.md`` uses them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Run, add_mode_args, describe_host, repeat_ms, spread  # noqa: E402
from engine.models.registry import get_spec, load_model  # noqa: E402
from engine.weights import resolve  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite_medsam")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    add_mode_args(ap, "1 timed run per batch size")
    args = ap.parse_args()
    repeats = 1 if args.short else 3
    run = Run("encoder_batch", {"mode": "short" if args.short else "full", "model": args.model,
                                "batches": args.batches, "repeats": repeats, "threads": torch.get_num_threads()})
    model = load_model(args.model, resolve(args.model)).eval()
    side = get_spec(args.model).input_size
    print(f"{args.model} encoder, torch, {describe_host()}, threads {torch.get_num_threads()}")
    base = None
    for b in args.batches:
        x = torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(b))
        with torch.inference_mode():
            times = repeat_ms(lambda x=x: model.image_encoder(x), repeats)
        batch_ms, image_ms = spread(times), spread([t / b for t in times])
        base = base or image_ms["median"]
        vs_first = round(image_ms["median"] / base, 3)
        run.add({"model": args.model, "batch": b}, {"batch_ms": batch_ms, "image_ms": image_ms,
                                                    "image_vs_first": vs_first})
        print(f"  b={b}: {batch_ms['median']:.0f} ms per batch (min {batch_ms['min']:.0f}, max {batch_ms['max']:.0f}), "
              f"{image_ms['median']:.0f} ms per image ({vs_first:.2f}x b={args.batches[0]})", flush=True)
    run.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
