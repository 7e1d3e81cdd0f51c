"""Stream engine benchmark: DAVIS tracking quality per keyframe setting, and throughput on 2 cores.

Usage: python bench/bench_stream.py [--short] [--davis DIR ...] [--frames 100] [--skip-davis]
                                    [--skip-throughput] [--runtimes torch onnxruntime] [--reuse-px 6]
                                    [--roi-margin 0.25] [--skip-starts] [--starts-seqs DIR ...]
                                    [--out FILE.json]

Modes: full (default: every DAVIS row on blackswan and the davis2016 sequences car-shadow, dog,
camel; throughput rows of 100 frames on each sequence); ``--short`` (3 DAVIS rows on blackswan and
car-shadow; throughput of 60 frames on blackswan, torch only). Each section also runs alone
(``--skip-davis --skip-throughput``: the starts; the result's ``config.sections`` says which ran)
and ``bench/make_docs.py`` shows each table from the newest run holding it. Writes
``bench/results/bench_stream-*.json`` and prints where.

1. DAVIS table (LiteMedSAM, real weights, box of the first annotation, box propagation from the
   previous mask +5 %): mean J for the encoder on every frame and for a keyframe every 2/5/10
   frames with/without motion compensation, and "auto". J follows the DAVIS protocol: frame 0,
   which carries the prompt, is excluded. Encodes are shared between rows (``CachingBackend``).
2. Starts (drift guards, issue 18): keyframe 5 + homography, synchronous keyframes: J over frames
   1.. for the ground-truth box, an interior point and a simulated gaze dwell there; the status
   counters; the worst area loss within 10 frames while the ground truth's area is stable (+-20 %);
   then the guards' cost on the first sequence (box start, guards off and on alternated twice).
3. Throughput: a 640x480 stream (the DAVIS frames resized, played forwards then backwards), the
   process pinned to 2 cores, one torch thread per engine thread, keyframe every 5 frames with the
   async encoder (and the synchronous encoder for comparison). Every fps stands beside its mean J
   (frame 0 excluded) and the mean/max embedding age: an async row whose encodes take longer than
   5 frames decodes on old keyframes, and its J says what that costs. Frame latency p50/p95 are
   per ``StreamEngine.step``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Run, add_mode_args, describe_host, spread  # noqa: E402
from engine.backends.torch_backend import TorchBackend  # noqa: E402
from engine.models.registry import get_spec, load_model  # noqa: E402
from engine.stream.engine import EngineConfig, StreamEngine  # noqa: E402
from engine.stream.evaluate import (  # noqa: E402
    START_KINDS,
    CachingBackend,
    box_of,
    davis_annotations,
    evaluate_davis,
    jaccard,
    worst_area_loss,
)
from engine.stream.guards import GuardConfig  # noqa: E402
from engine.stream.events import Prompt  # noqa: E402
from engine.stream.latency import LatencyRecorder  # noqa: E402
from engine.stream.results import EngineStats  # noqa: E402
from engine.stream.scheduler import KeyframePolicy  # noqa: E402
from engine.stream.sources import ArraySource, folder_images  # noqa: E402
from engine.types import Frame  # noqa: E402
from engine.weights import resolve  # noqa: E402

GUARD_COUNTERS = ("ok", "drift_corrected", "lost", "reacquired")
SHORT_ROWS = ("every frame", "k5 + homography", "k5, no motion")
DAVIS_ROWS = (  # (name, keyframe policy, motion model, decode-reuse tolerance px, roi margin)
    ("every frame", KeyframePolicy(interval=1), "none"),
    ("k2 + homography", KeyframePolicy(interval=2), "homography"),
    ("k5 + homography", KeyframePolicy(interval=5), "homography"),
    ("k5 + affine", KeyframePolicy(interval=5), "affine"),
    ("k5, no motion", KeyframePolicy(interval=5), "none"),
    ("k10 + homography", KeyframePolicy(interval=10), "homography"),
    ("k10, no motion", KeyframePolicy(interval=10), "none"),
    ("auto + homography", KeyframePolicy.parse("auto"), "homography"),
    ("k5 + homography, reuse 4 px", KeyframePolicy(interval=5), "homography", 4.0),
    ("k5 + homography, reuse 6 px", KeyframePolicy(interval=5), "homography", 6.0),
    ("k5 + homography, roi 0.25", KeyframePolicy(interval=5), "homography", 0.0, 0.25),
    ("k5 + homography, roi 0.25, reuse 6 px", KeyframePolicy(interval=5), "homography", 6.0, 0.25),
)


def _backend(runtime: str = "torch") -> Any:
    """LiteMedSAM on ``runtime``, one intra-op thread (onnxruntime: no spinning)."""
    if runtime == "onnxruntime":
        from engine.backends.factory import onnx_files
        from engine.backends.ort_backend import OrtBackend

        enc, dec = onnx_files("lite_medsam", None)
        return OrtBackend(enc, dec, 256, threads=1, spin=False)
    return TorchBackend(load_model("lite_medsam", resolve("lite_medsam")), 256)


def davis_table(folder: Path, short: bool) -> list[dict[str, Any]]:
    """One row per keyframe setting on one DAVIS-layout sequence."""
    backend = CachingBackend(_backend())
    spec = get_spec("lite_medsam")
    rows = []
    for name, policy, motion, *extra in DAVIS_ROWS:
        if short and name not in SHORT_ROWS:
            continue
        t0 = time.perf_counter()
        reuse = extra[0] if extra else 0.0
        roi = extra[1] if len(extra) > 1 else None
        config = EngineConfig(reuse_decode_px=reuse, roi_margin=roi)
        with StreamEngine(backend, spec, policy, motion=motion, config=config) as eng:
            res = evaluate_davis(eng, folder)
        rows.append({"sequence": folder.name, "config": name, "mean_j": round(res.mean_j_after_first, 4),
                     "frames_scored": len(res.j_per_frame) - 1, "embedding_age_mean": res.embedding_age_mean,
                     "keyframes": len(res.keyframes), "decodes_reused": eng.stats.decodes_reused,
                     "decode_ms": spread(eng.latency.stage("decode")), "motion_ms": spread(eng.latency.stage("motion")),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  {folder.name:<11} {name:<38} J {res.mean_j_after_first:.4f}  keyframes {len(res.keyframes):2d}", flush=True)
    base = rows[0]["mean_j"]
    for r in rows:
        r["j_vs_every_frame"] = round(r["mean_j"] / base, 3)
    return rows


def starts_table(folders: list[Path]) -> list[dict[str, Any]]:
    """J(1..) per sequence and start (box / point / gaze), status counters, worst area loss."""
    backend = CachingBackend(_backend())
    spec = get_spec("lite_medsam")
    rows = []
    for folder in folders:
        for start in START_KINDS:
            with StreamEngine(backend, spec, KeyframePolicy(interval=5), motion="homography") as eng:
                res = evaluate_davis(eng, folder, start=start)
            rows.append({"sequence": folder.name, "start": start, "mean_j_after_first": round(res.mean_j_after_first, 4),
                         "worst_area_loss_10": round(worst_area_loss(res.area_px, res.truth_area_px), 3),
                         **dict(eng.stats.track_status),
                         "decode_p50_ms": res.latency["stages"]["decode"]["p50_ms"]})
            print(f"  {folder.name:<12} {start:<5} J {res.mean_j_after_first:.4f}  {dict(eng.stats.track_status)}",
                  flush=True)
    for r in rows:
        box = next(b for b in rows if b["sequence"] == r["sequence"] and b["start"] == "box")
        r["ratio_vs_box"] = round(r["mean_j_after_first"] / box["mean_j_after_first"], 3)
    return rows


def guard_cost(folder: Path, repeats: int = 2) -> list[dict[str, Any]]:
    """Box start with the guards off and on, alternated ``repeats`` times (shared encodes): decode p50."""
    backend = CachingBackend(_backend())
    spec = get_spec("lite_medsam")
    samples: dict[str, list[float]] = {"off": [], "on": []}
    rows = []
    for _ in range(repeats):
        for name in ("off", "on"):
            config = EngineConfig(guard=GuardConfig(enabled=name == "on"))
            with StreamEngine(backend, spec, KeyframePolicy(interval=5), motion="homography", config=config) as eng:
                res = evaluate_davis(eng, folder)
            samples[name] += eng.latency.stage("decode")[1:]  # the first decode waits on nothing cached
            rows.append({"guards": name, "mean_j_after_first": round(res.mean_j_after_first, 4)})
    p50 = {k: float(np.median(v)) for k, v in samples.items()}
    out = [{"guards": k, "decode_p50_ms": round(p50[k], 2), "decode_p95_ms": round(float(np.percentile(samples[k], 95)), 2),
            "decodes": len(samples[k]), "ratio_vs_off": round(p50[k] / p50["off"], 3),
            "mean_j_after_first": [r["mean_j_after_first"] for r in rows if r["guards"] == k]} for k in ("off", "on")]
    return out


def stream_640x480(folder: Path, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` frames (RGB uint8 480x640) played forwards then backwards, and each frame's ground-truth mask."""
    files = folder_images(folder)
    imgs = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (640, 480), interpolation=cv2.INTER_AREA)
            for p in files]
    truth = [cv2.resize(a.astype(np.uint8), (640, 480), interpolation=cv2.INTER_NEAREST) > 0
             for a in davis_annotations(folder)]
    order = list(range(len(imgs))) + list(range(len(imgs) - 2, 0, -1))  # ping-pong keeps motion continuous
    picks = [order[i % len(order)] for i in range(n)]
    return [imgs[i] for i in picks], [truth[i] for i in picks]


def throughput(folder: Path, n: int, async_encoder: bool, interval: int, runtime: str,
               reuse_px: float = 0.0, roi_margin: float | None = None) -> dict[str, Any]:
    frames, truth = stream_640x480(folder, n)
    gt0 = truth[0]
    eng = StreamEngine(_backend(runtime), get_spec("lite_medsam"), KeyframePolicy(interval=interval),
                       motion="homography", async_encoder=async_encoder, config=EngineConfig(reuse_decode_px=reuse_px, roi_margin=roi_margin))
    eng.add_object(Prompt.box(box_of(gt0)))
    # warm-up: the first keyframe and one decode (allocations, lazy init), not timed
    eng.step(Frame(0, 0, frames[0]))
    eng.encoder.wait_idle()
    eng.step(Frame(0, 0, frames[0]))
    eng.latency = LatencyRecorder()
    eng.stats = EngineStats()  # the timed run's counters only
    t0 = time.perf_counter()
    with_mask, js = 0, []
    for i, res in enumerate(eng.run(ArraySource(frames))):  # a frame counts when an object was found there
        with_mask += any(r.status == "ok" and r.mask.any() for r in res.objects)
        js.append(jaccard(res.objects[0].mask, truth[i]) if res.objects else 0.0)
    wall = time.perf_counter() - t0
    eng.close()
    ages = eng.latency.to_json()["embedding_age_frames"]
    mode = f"{runtime}, {'async' if async_encoder else 'sync'} k{interval}"
    mode += f", reuse {reuse_px:g} px" if reuse_px else ""
    mode += f", roi {roi_margin:g}" if roi_margin is not None else ""
    stage = eng.latency.stage
    return {"sequence": folder.name, "mode": mode, "frames": n, "fps": round(n / wall, 2),
            "mean_j": round(float(np.mean(js[1:])), 4), "embedding_age_mean": ages["mean"],
            "embedding_age_max": ages["max"], "frames_with_mask": with_mask,
            "frame_ms": spread(stage("frame")), "decode_ms": spread(stage("decode")), "motion_ms": spread(stage("motion")),
            "postprocess_ms": spread(stage("postprocess")), "encode_ms": spread(stage("encode")),
            "keyframes": eng.stats.keyframes_total, "encode_requests_dropped_busy": eng.encoder.stats.dropped_busy,
            "decodes_reused": eng.stats.decodes_reused}


def _cell(value: Any) -> str:
    return f"{value['median']:g} ({value['p5']:g}-{value['p95']:g})" if isinstance(value, dict) else str(value)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = Path(os.environ.get("ARSEL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    full_seqs = [data / "davis_blackswan"] + [data / "davis2016" / s for s in ("car-shadow", "dog", "camel")]
    ap.add_argument("--davis", type=Path, nargs="+", default=None,
                    help="DAVIS-layout sequence folders (default: blackswan + davis2016 car-shadow, dog, camel; "
                         "short: blackswan + car-shadow)")
    ap.add_argument("--frames", type=int, default=None, help="frames of each throughput stream (100; short 60)")
    ap.add_argument("--skip-davis", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-starts", action="store_true")
    ap.add_argument("--starts-seqs", type=Path, nargs="+", default=None,
                    help="DAVIS-layout sequences of the starts table (default: those of --davis)")
    ap.add_argument("--runtimes", nargs="+", default=None,
                    help="backends of the throughput rows (torch onnxruntime; short: torch)")
    ap.add_argument("--reuse-px", type=float, default=6.0, help="decode-reuse tolerance of the extra async row")
    ap.add_argument("--roi-margin", type=float, default=0.25, help="upscaling-window margin of the roi rows")
    add_mode_args(ap, "3 DAVIS rows on 2 sequences, 60-frame torch throughput on blackswan")
    args = ap.parse_args()
    seqs = args.davis or (full_seqs[:2] if args.short else full_seqs)
    missing = [str(p) for p in seqs if not (p / "Annotations").is_dir()]
    if missing:
        ap.error(f"not DAVIS sequence folders (JPEGImages/ + Annotations/): {missing}; pass --davis DIR or set ARSEL_DATA")
    frames = args.frames or (60 if args.short else 100)
    runtimes = args.runtimes or (["torch"] if args.short else ["torch", "onnxruntime"])
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 2:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
    torch.set_num_threads(1)  # one intra-op thread per engine thread (decoder, encoder worker)
    run = Run("bench_stream", {"mode": "short" if args.short else "full", "sequences": [p.name for p in seqs],
                               "throughput_frames": frames, "runtimes": runtimes, "torch_threads": 1,
                               "model": "lite_medsam",
                               "sections": [name for name, skip in (("davis", args.skip_davis), ("starts", args.skip_starts),
                                                                    ("throughput", args.skip_throughput)) if not skip]},
              notes=["mean J follows the DAVIS protocol: frame 0 (the prompted frame) is excluded",
                     "fps is one timed run (n=1) of the whole stream; stage spreads are per frame",
                     "embedding_age_*: frames between the keyframe decoded on and the frame"])
    print(describe_host(run.host), flush=True)
    if not args.skip_davis:
        print("DAVIS (LiteMedSAM, box propagation; mean J without frame 0):", flush=True)
        davis = [row for folder in seqs for row in davis_table(folder, args.short)]
        for r in davis:
            run.add({"table": "davis", "sequence": r["sequence"], "config": r["config"]},
                    {k: v for k, v in r.items() if k not in ("sequence", "config")})
        print(_table(davis, ["sequence", "config", "mean_j", "j_vs_every_frame", "embedding_age_mean", "keyframes",
                             "decodes_reused", "decode_ms"]))
    if not args.skip_starts:
        print("Starts (box / interior point / gaze dwell), k5 + homography, J over frames 1..:", flush=True)
        starts = starts_table(args.starts_seqs or seqs)
        for r in starts:
            run.add({"table": "starts", "sequence": r["sequence"], "config": r["start"]},
                    {k: v for k, v in r.items() if k not in ("sequence", "start")})
        print(_table(starts, ["sequence", "start", "mean_j_after_first", "ratio_vs_box", "worst_area_loss_10",
                              *GUARD_COUNTERS, "decode_p50_ms"]))
        cost = guard_cost(seqs[0])
        for r in cost:
            run.add({"table": "guard_cost", "sequence": seqs[0].name, "config": f"guards {r['guards']}"},
                    {k: v for k, v in r.items() if k != "guards"})
        print(_table(cost, ["guards", "decode_p50_ms", "decode_p95_ms", "decodes", "ratio_vs_off", "mean_j_after_first"]))
    if not args.skip_throughput:
        tseqs = seqs[:1] if args.short else seqs
        rows = [throughput(f, frames, a, 5, rt) for f in tseqs for rt in runtimes for a in (True, False)]
        rows += [throughput(seqs[0], frames, True, 5, rt, args.reuse_px) for rt in runtimes[-1:]]
        if "torch" in runtimes and not args.short:  # the upscaling window is an eager-torch option
            rows += [throughput(seqs[0], frames, True, 5, "torch", reuse, args.roi_margin)
                     for reuse in (0.0, args.reuse_px)]
        for r in rows:
            run.add({"table": "throughput", "sequence": r["sequence"], "config": r["mode"]},
                    {k: v for k, v in r.items() if k not in ("sequence", "mode")})
        print(f"\nThroughput, 640x480, {run.host['cores']} cores, LiteMedSAM (fps beside mean J and embedding age):")
        print(_table(rows, ["sequence", "mode", "fps", "mean_j", "embedding_age_mean", "embedding_age_max",
                            "frames_with_mask", "frame_ms", "decode_ms", "encode_ms", "keyframes", "decodes_reused"]))
    run.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
