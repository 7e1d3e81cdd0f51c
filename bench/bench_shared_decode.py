"""Decoder latency when sessions share one backend, as ``arsel serve``'s sessions do.

Usage: python bench/bench_shared_decode.py [--short] [--sessions 1 2 4 8] [--repeats 20] [--out FILE.json]

LiteMedSAM (real weights) on ONNX Runtime, one thread, behind ``engine.serve.engines.SharedBackend``.
Each of S sessions holds its own keyframe embedding (the serving benchmarks' 640x480 blackswan stream,
``bench.swan``, frames 0, 10, 20, ... encoded by the backend, as a session's keyframe encoder does),
and the sessions decode the swan's box each in turn, S decodes per round. *Ours*: ``SharedBackend.decode`` (ONNX Runtime's no-mask pair, its
image side computed once per live embedding). *Reference*, in the same turns: the contract decoder
graph (one ``run`` per prompt, the image side computed every time), what every decode cost before
the no-mask pair. A cache that kept only the last embedding's image side would pay it again on
every switch, so with S >= 2 its cost would approach the reference's.
Modes: full (default); ``--short``: S in 1 and 4, 6 rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Run, add_mode_args, ratio, spread  # noqa: E402
from bench.swan import HW, frames_640, swan_box  # noqa: E402

DATA = Path("/work/shared/data")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="shared data root")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=20, help="rounds (each session decodes once per round)")
    add_mode_args(p, "S in 1 and 4, 6 rounds")
    args = p.parse_args(argv)
    if args.short:
        args.sessions, args.repeats = [1, 4], 6
    if min(args.sessions) < 1 or args.repeats < 2:
        p.error("--sessions must be >= 1 and --repeats >= 2")
    if not (args.data / "davis_blackswan" / "JPEGImages").is_dir():
        p.error(f"no DAVIS blackswan frames under {args.data}; pass --data /path/to/shared/data")

    from tqdm import tqdm

    from engine.backends.factory import create_backend
    from engine.contract import DECODER_INPUTS, DECODER_OUTPUTS
    from engine.models.registry import get_spec
    from engine.prompts import build_prompts
    from engine.serve.engines import SharedBackend
    from engine.transforms import preprocess

    spec = get_spec("lite_medsam")
    backend = create_backend("onnxruntime", "lite_medsam", None, "cpu", threads=1)
    shared = SharedBackend(backend)
    frames = frames_640(args.data)
    embeddings = []
    for k in tqdm(range(max(args.sessions)), desc="keyframes", unit="encode"):
        x, input_hw = preprocess(frames[(10 * k) % len(frames)], spec.input_size, spec.pixel_norm, spec.resize)
        embeddings.append(shared.encode(x))
    prompts = build_prompts(HW, input_hw, box_xyxy=np.array([swan_box(args.data, HW)], np.float32),
                            uniform_scale=spec.uniform_scale)
    feeds = (prompts.point_coords, prompts.point_labels, prompts.mask_input, prompts.has_mask_input)

    run = Run("bench_shared_decode", {"mode": "short" if args.short else "full", "sessions": args.sessions,
                                      "repeats": args.repeats, "model": "lite_medsam", "runtime": "onnxruntime",
                                      "threads": 1},
              notes=["S sessions, each on its own keyframe embedding, decode one box each in turn; ms per decode "
                     "after one warm-up round", "ours: SharedBackend.decode (image side once per live embedding); "
                     "reference: the contract decoder graph, image side every decode"])
    for s in tqdm(args.sessions, desc="sessions", unit="S"):
        ours: list[float] = []
        ref: list[float] = []
        for rnd in range(args.repeats + 1):
            for emb in embeddings[:s]:
                t0 = time.perf_counter()
                shared.decode(emb, *feeds)
                t1 = time.perf_counter()
                backend.decoder.run(list(DECODER_OUTPUTS), dict(zip(DECODER_INPUTS, (emb, *feeds))))
                t2 = time.perf_counter()
                if rnd:  # round 0 warms up (every embedding's first decode computes its image side)
                    ours.append((t1 - t0) * 1e3)
                    ref.append((t2 - t1) * 1e3)
        o, r = spread(ours), spread(ref)
        run.add({"sessions": s}, {"decode_ms": o, "reference_ms": r, "x_ref": ratio(o, r)})
        print(f"S={s}: ours {o['median']:.1f} ms, reference {r['median']:.1f} ms ({ratio(o, r):.2f}x)", flush=True)
    run.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
