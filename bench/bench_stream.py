"""Stream engine benchmark: DAVIS tracking quality per keyframe setting, and throughput on 2 cores.

Usage: python bench/bench_stream.py [--davis DIR] [--frames 100] [--skip-davis] [--skip-throughput]
                                    [--skip-starts] [--starts-seqs DIR ...]
                                    [--runtimes torch onnxruntime] [--reuse-px 6] [--roi-margin 0.25]
                                    [--json OUT.json]

1. DAVIS table (LiteMedSAM, real weights, blackswan 50 frames, box of the first annotation, box
   propagation from the previous mask +5 %): mean J for the encoder on every frame and for a
   keyframe every 2/5/10 frames with/without motion compensation, and "auto". Encodes are shared
   between rows (``CachingBackend``), so the stage times there are decoder-side only.
2. Starts (drift guards, issue 18): on blackswan and the davis2016 clips (car-shadow, dog, camel),
   keyframe 5 + homography, synchronous keyframes: J over frames 1.. (DAVIS protocol) for the
   ground-truth box, an interior point and a simulated gaze dwell there; the status counters; the
   worst area loss within 10 frames while the ground truth's area is stable (+-20 %). Then the
   guards' cost: the blackswan box start with the guards off and on, alternated twice in one run,
   decoder-stage p50 of each (targets: point and gaze J >= 0.9 x box J; worst loss < 50 %;
   decode p50 with guards <= 1.15 x without).
3. Throughput: a 640x480 stream (the DAVIS frames resized, played forwards then backwards), the
   process pinned to 2 cores, one torch thread per engine thread, keyframe every 5 frames with the
   async encoder (and the synchronous encoder for comparison): fps with a mask every frame, p50/p95
   frame latency (the decoder never waits for an encode); rows with decode reuse and with the
   upscaling window around the box (``--roi-margin``, torch eager). Targets: J(k5 + motion) >= 0.97 x J(every
   frame); >= 20 fps and p95 <= 60 ms with the async encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.host import describe_host  # noqa: E402
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
DAVIS_ROWS = (  # (name, keyframe policy, motion model, decode-reuse tolerance px)
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


def davis_table(folder: Path) -> list[dict[str, Any]]:
    backend = CachingBackend(_backend())
    spec = get_spec("lite_medsam")
    rows = []
    for name, policy, motion, *extra in DAVIS_ROWS:
        t0 = time.perf_counter()
        reuse = extra[0] if extra else 0.0
        roi = extra[1] if len(extra) > 1 else None
        config = EngineConfig(reuse_decode_px=reuse, roi_margin=roi)
        with StreamEngine(backend, spec, policy, motion=motion, config=config) as eng:
            res = evaluate_davis(eng, folder)
        st = res.latency["stages"]
        rows.append({"config": name, "mean_j": round(res.mean_j, 4), "keyframes": len(res.keyframes),
                     "decodes_reused": eng.stats.decodes_reused,
                     "decode_p50_ms": st["decode"]["p50_ms"], "motion_p50_ms": st["motion"]["p50_ms"],
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"  {name:<18} J {res.mean_j:.4f}  keyframes {len(res.keyframes):2d}", flush=True)
    base = rows[0]["mean_j"]
    for r in rows:
        r["ratio_vs_every_frame"] = round(r["mean_j"] / base, 3)
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
    st = eng.latency.summary()
    mode = f"{runtime}, {'async' if async_encoder else 'sync'} k{interval}"
    mode += f", reuse {reuse_px:g} px" if reuse_px else ""
    mode += f", roi {roi_margin:g}" if roi_margin is not None else ""
    return {"mode": mode, "frames": n, "fps": round(n / wall, 2), "mean_j": round(float(np.mean(js)), 4),
            "frames_with_mask": with_mask, "frame_p50_ms": st["frame"]["p50_ms"], "frame_p95_ms": st["frame"]["p95_ms"],
            "decode_p50_ms": st["decode"]["p50_ms"], "motion_p50_ms": st["motion"]["p50_ms"],
            "postprocess_p50_ms": st["postprocess"]["p50_ms"],
            "encode_p50_ms": st.get("encode", {}).get("p50_ms"), "keyframes": eng.stats.keyframes_total,
            "encode_requests_dropped_busy": eng.encoder.stats.dropped_busy, "decodes_reused": eng.stats.decodes_reused,
            "embedding_age_mean": eng.latency.to_json()["embedding_age_frames"]["mean"]}


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("ARSEL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--davis", type=Path, default=default / "davis_blackswan")
    ap.add_argument("--frames", type=int, default=100, help="frames of the throughput stream")
    ap.add_argument("--skip-davis", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-starts", action="store_true")
    ap.add_argument("--starts-seqs", type=Path, nargs="+",
                    default=[default / "davis_blackswan", *(default / "davis2016" / n for n in ("car-shadow", "dog", "camel"))],
                    help="DAVIS-layout sequences of the starts table")
    ap.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"], help="backends of the throughput rows")
    ap.add_argument("--reuse-px", type=float, default=6.0, help="decode-reuse tolerance of the extra async row")
    ap.add_argument("--roi-margin", type=float, default=0.25, help="upscaling-window margin of the roi rows")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 2:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
    torch.set_num_threads(1)  # one intra-op thread per engine thread (decoder, encoder worker)
    out: dict[str, Any] = {"host": describe_host(), "cores": len(os.sched_getaffinity(0)), "torch_threads": 1}
    print(out["host"], flush=True)
    if not args.skip_davis:
        print(f"DAVIS {args.davis.name} (LiteMedSAM, box propagation):", flush=True)
        out["davis"] = davis_table(args.davis)
        print(_table(out["davis"], ["config", "mean_j", "ratio_vs_every_frame", "keyframes", "decodes_reused",
                                    "decode_p50_ms",
                                    "motion_p50_ms"]))
    if not args.skip_starts:
        print("Starts (box / interior point / gaze dwell), k5 + homography, J over frames 1..:", flush=True)
        out["starts"] = starts_table(args.starts_seqs)
        print(_table(out["starts"], ["sequence", "start", "mean_j_after_first", "ratio_vs_box", "worst_area_loss_10",
                                     *GUARD_COUNTERS, "decode_p50_ms"]))
        out["guard_cost"] = guard_cost(args.davis)
        print(_table(out["guard_cost"], ["guards", "decode_p50_ms", "decode_p95_ms", "decodes", "ratio_vs_off",
                                         "mean_j_after_first"]))
    if not args.skip_throughput:
        rows = [throughput(args.davis, args.frames, a, 5, rt) for rt in args.runtimes for a in (True, False)]
        rows += [throughput(args.davis, args.frames, True, 5, rt, args.reuse_px) for rt in args.runtimes[-1:]]
        if "torch" in args.runtimes:  # the upscaling window is an eager-torch option
            rows += [throughput(args.davis, args.frames, True, 5, "torch", reuse, args.roi_margin)
                     for reuse in (0.0, args.reuse_px)]
        out["throughput"] = rows
        print(f"\nThroughput, 640x480, {out['cores']} cores, LiteMedSAM:")
        print(_table(rows, ["mode", "fps", "mean_j", "embedding_age_mean", "frames_with_mask", "frame_p50_ms", "frame_p95_ms", "decode_p50_ms",
                            "motion_p50_ms", "postprocess_p50_ms", "encode_p50_ms", "keyframes",
                            "encode_requests_dropped_busy", "decodes_reused"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
