"""Per-batch cost of the encoder: what a shared, batching encoder (Ray Serve, Triton) gains per image.

Usage: python bench/bench_encoder_batch.py [--model lite_medsam] [--batches 1 2 4] [--repeats 3] [--json OUT.json]

Runs the torch image encoder (``SamModel.image_encoder``; ``encode`` itself takes batch 1) at the
real weights on batches of b random normalised images; each row is the median and spread (min, max)
of ``--repeats`` runs after one warm-up, and the per-image cost relative to the first batch size in
the same run; ``--json OUT`` writes the table.
These are CPU figures; ``docs/scaling.md`` uses them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.host import describe_host  # noqa: E402
from engine.models.registry import get_spec, load_model  # noqa: E402
from engine.weights import resolve  # noqa: E402


def time_batch(model: torch.nn.Module, side: int, batch: int, repeats: int) -> list[float]:
    """Wall times in ms of ``repeats`` encodes of a ``(batch, 3, side, side)`` float32 batch, after one warm-up."""
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(batch))
    times = []
    with torch.inference_mode():
        model.image_encoder(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.image_encoder(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite_medsam")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    model = load_model(args.model, resolve(args.model)).eval()
    side = get_spec(args.model).input_size
    rows = []
    for b in args.batches:
        t = time_batch(model, side, b, args.repeats)
        rows.append({"batch": b, "median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t),
                     "per_image_ms": statistics.median(t) / b})
    base = rows[0]["per_image_ms"]
    for r in rows:
        r["per_image_vs_first"] = r["per_image_ms"] / base
    host = describe_host()
    print(f"{args.model} encoder, torch, {host}, threads {torch.get_num_threads()}")
    for r in rows:
        print(f"  b={r['batch']}: {r['median_ms']:.0f} ms per batch (min {r['min_ms']:.0f}, max {r['max_ms']:.0f}), "
              f"{r['per_image_ms']:.0f} ms per image ({r['per_image_vs_first']:.2f}x b={rows[0]['batch']})")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "host": host, "threads": torch.get_num_threads(),
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
