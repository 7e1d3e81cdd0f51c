"""``arsel serve`` benchmark: 640x480 JPEG at 30 fps over loopback, LiteMedSAM, async encoder.

Usage: python bench/bench_serve.py [--seconds 20] [--clients 1 4] [--repeats 1] [--threads 1]
                                   [--keyframe-interval 5] [--backend auto] [--reuse-decode-px 6]
                                   [--max-correction-decodes 4] [--roi-margin 0.25]
                                   [--frame-slots N] [--short] [--out FILE.json]
       python bench/bench_serve.py --ray ...   (Ray Serve vs this server: bench/bench_serve_ray.py)

The engine settings are ``arsel serve``'s (its defaults unless given), in both the reference and
the served runs: same backend, threads, decode reuse and correction cap.

1. Reference: in-process ``StreamEngine.step`` on the same frames (async encoder, keyframe every
   5 frames) paced at 30 fps: median and p95 step time.
2. ``arsel serve`` in its own process; one client, then N clients at once (each its own session),
   each waiting for its first keyframe, then sending JPEG frames at 30 fps without waiting and
   reading results as they come (all sessions start together once each has its keyframe). Per session: processed fps, send->result
   p50/p95 and its split at the median (``server_total``, from queueing to the result built, and the
   rest: sockets, parsing, thread hops), dropped (server-side), embedding age, and the share of
   results with the swan found (a lost object costs no decode, so a run that lost it looks fast);
   overall: fairness (slowest / fastest session fps)
   and the server's overhead over the in-process step at the median (send->result p50 / step p50 - 1).
Targets (issue #12): one client >= 20 fps, p95 <= 80 ms, overhead <= 15 %; four clients >= 5 fps
each, fairness >= 0.7. Writes ``bench/results/bench_serve-*.json`` (``bench/make_docs.py`` renders it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Run, add_mode_args  # noqa: E402
from bench.swan import HW, frames_640, renumber, start_together, swan_box, until_keyframe  # noqa: E402
from bench.swan import pct as _pct  # noqa: E402
from engine.serve.cli import (  # noqa: E402
    LIVE_MAX_CORRECTION_DECODES,
    LIVE_REUSE_DECODE_PX,
    LIVE_ROI_MARGIN,
    engine_config,
    fraction_or_none,
)
from engine.serve.client import encode_frame  # noqa: E402
from engine.stream.events import Prompt  # noqa: E402
from engine.stream.scheduler import KeyframePolicy  # noqa: E402
from engine.types import Frame  # noqa: E402

FPS = 30.0


def reference(engines: Any, frames: list[np.ndarray], box: list[float], seconds: float) -> dict[str, Any]:
    """In-process StreamEngine.step at 30 fps on one engine of the same factory."""
    eng = engines()
    steps, ages, found = [], [], []
    try:
        eng.add_object(Prompt.box(box))
        eng.step(Frame(0, time.time_ns(), frames[0]))
        eng.encoder.wait_idle()  # timing starts with an embedding, as a live stream's steady state
        t_start, i = time.perf_counter(), 1
        while time.perf_counter() - t_start < seconds:
            due = t_start + i / FPS
            time.sleep(max(0.0, due - time.perf_counter()))
            t0 = time.perf_counter()
            res = eng.step(Frame(i, time.time_ns(), frames[i % len(frames)]))  # index = frame_id
            steps.append((time.perf_counter() - t0) * 1e3)
            ages.append(res.embedding_age_frames)
            found.append(any(o.found for o in res.objects))
            i += 1
    finally:
        eng.close()
    warm = steps[len(steps) // 10:]
    assert res.status == "ok", "the engine has no embedding: the encoder never finished"
    return {"frames": len(steps), "step_p50_ms": _pct(warm, 50), "step_p95_ms": _pct(warm, 95),
            "embedding_age_p50": _pct(ages, 50), "found_pct": 100.0 * float(np.mean(found[len(found) // 10:]))}


async def _client(url: str, jpegs: list[bytes], box: list[float], seconds: float, ready: list[int],
                  start: asyncio.Event) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    sent: dict[int, float] = {}
    lat, ages, got, server, outside, found = [], [], [], [], [], []
    last: dict[str, Any] = {}
    async with connect(url, max_size=None, compression=None) as ws:  # as engine.serve.client
        await ws.send(json.dumps({"type": "hello", "client": "bench"}))
        await ws.send(json.dumps({"type": "prompt", "frame_id": 0, "action": "add", "box": box, "points": []}))

        async def reader() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "result":
                    lat.append((time.perf_counter() - sent[msg["frame_id"]]) * 1e3)
                    server.append(msg["latency_ms"]["server_total"])  # queued -> result built, in the server
                    outside.append(lat[-1] - server[-1])  # sockets, parsing, thread hops, the client's own work
                    ages.append(msg["embedding_age_frames"])
                    found.append(any(o["status"] != "lost" for o in msg["objects"]))
                    got.append(time.perf_counter())
                    last.update(msg)

        i = await until_keyframe(ws, jpegs)  # the clock starts once results come on a keyframe
        ready.append(i)
        await start.wait()  # ... in every session: all stream over the same span
        task = asyncio.create_task(reader())
        t_start, first = time.perf_counter(), i
        while time.perf_counter() - t_start < seconds:
            await asyncio.sleep(max(0.0, t_start + (i - first) / FPS - time.perf_counter()))
            sent[i] = time.perf_counter()
            await ws.send(renumber(jpegs[i % len(jpegs)], i))
            i += 1
        await asyncio.sleep(1.0)
        task.cancel()
    warm_lat = lat[len(lat) // 10:]
    span = (got[-1] - got[len(got) // 10]) if len(got) > 10 else float("nan")
    return {"sent": i - first, "results": len(lat), "fps": (len(got) - len(got) // 10 - 1) / span if span > 0 else 0.0,
            "latency_p50_ms": _pct(warm_lat, 50), "latency_p95_ms": _pct(warm_lat, 95),
            "dropped": last.get("dropped", 0), "embedding_age_p50": _pct(ages, 50),
            "server_total_p50_ms": _pct(server[len(server) // 10:], 50),
            "outside_server_p50_ms": _pct(outside[len(outside) // 10:], 50),
            "found_pct": 100.0 * float(np.mean(found[len(found) // 10:])) if found else 0.0}


def served_run(frames: list[np.ndarray], box: list[float], clients: int, seconds: float,
               args: argparse.Namespace) -> dict[str, Any]:
    """``arsel serve`` in its own process (as deployed), ``clients`` sessions from this one."""
    import os
    import re
    import subprocess

    jpegs = [encode_frame(0, f, encoding="jpeg", jpeg_quality=85) for f in frames]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--threads", str(args.threads),
           "--backend", args.backend, "--reuse-decode-px", str(args.reuse_decode_px),
           "--max-correction-decodes", str(args.max_correction_decodes), "--roi-margin", str(args.roi_margin),
           "--keyframe-interval", str(args.keyframe_interval), "--max-sessions", str(clients + 1)]
    if args.frame_slots is not None:
        cmd += ["--frame-slots", str(args.frame_slots)]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        port = re.search(r"127\.0\.0\.1:(\d+)/", line)
        if port is None:
            raise RuntimeError(f"arsel serve did not start: {line!r}")
        url = f"ws://127.0.0.1:{port.group(1)}/v1/stream"

        async def all_clients() -> list[dict[str, Any]]:
            return await start_together(lambda ready, start: _client(url, jpegs, box, seconds, ready, start), clients)

        sessions = asyncio.run(all_clients())
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    fps = [s["fps"] for s in sessions]
    return {"clients": clients, "sessions": sessions, "fps_min": min(fps), "fps_max": max(fps),
            "fairness": min(fps) / max(fps) if max(fps) > 0 else 0.0}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--ray" in argv:  # arsel serve --ray against the single process: bench/bench_serve_ray.py
        from bench.bench_serve_ray import main as ray_main

        return ray_main([a for a in argv if a != "--ray"])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/shared/data", help="shared data root (DAVIS blackswan)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per compute thread (default 1)")
    p.add_argument("--keyframe-interval", type=int, default=5)
    p.add_argument("--backend", default="auto", help="runtime (default auto: onnxruntime on the CPU)")
    p.add_argument("--reuse-decode-px", type=float, default=LIVE_REUSE_DECODE_PX)
    p.add_argument("--max-correction-decodes", type=int, default=LIVE_MAX_CORRECTION_DECODES)
    p.add_argument("--roi-margin", type=fraction_or_none, default=LIVE_ROI_MARGIN, help="as arsel serve's flag")
    p.add_argument("--frame-slots", type=int, default=None, help="arsel serve --frame-slots (default: its own)")
    add_mode_args(p, "8 s per run, one client only")
    args = p.parse_args(argv)
    from engine.serve.engines import LocalEngines

    if args.short:
        args.seconds, args.clients = 8.0, [1]
    frames = frames_640(Path(args.data))
    box = swan_box(Path(args.data), HW)
    engines = LocalEngines.load("lite_medsam", args.backend, threads=args.threads,
                                policy=KeyframePolicy(interval=args.keyframe_interval), async_encoder=True,
                                config=engine_config(args))
    config = {k: v for k, v in vars(args).items() if k not in ("out", "short")}
    run = Run("bench_serve", {**config, "mode": "short" if args.short else "full", "runtime": engines.backend_name},
              notes=["640x480 JPEG (q85) at 30 fps over loopback, LiteMedSAM, async encoder, box prompt on the swan; "
                     "blackswan frames 0..49 and back, looped (no scene cut)",
                     "latency: send -> result per frame; fps: results per second per session after the first 10 %",
                     "overhead: served send->result p50 / in-process step p50 - 1 (targets: one client >= 20 fps, "
                     "p95 <= 80 ms, overhead <= 15 %; four clients >= 5 fps each, fairness >= 0.7)"])
    for r in range(args.repeats):
        ref = reference(engines, frames, box, args.seconds)
        run.add({"repeat": r, "mode": "in-process step", "clients": 0, "session": "-"},
                {"step_p50_ms": ref["step_p50_ms"], "step_p95_ms": ref["step_p95_ms"],
                 "embedding_age_p50": ref["embedding_age_p50"], "frames": ref["frames"], "found_pct": ref["found_pct"]})
        for n in args.clients:
            served = served_run(frames, box, n, args.seconds, args)
            for k, sess in enumerate(served["sessions"]):
                figures = {key: sess[key] for key in ("fps", "latency_p50_ms", "latency_p95_ms", "dropped",
                                                      "embedding_age_p50", "sent", "results", "server_total_p50_ms",
                                                      "outside_server_p50_ms", "found_pct")}
                if n == 1:
                    figures["overhead_vs_step_p50"] = sess["latency_p50_ms"] / ref["step_p50_ms"] - 1
                figures["fairness"] = served["fairness"]
                run.add({"repeat": r, "mode": "served", "clients": n, "session": k}, figures)
            print(json.dumps({"clients": n, "fps": [round(x["fps"], 1) for x in served["sessions"]],
                              "p95_ms": [round(x["latency_p95_ms"], 1) for x in served["sessions"]],
                              "dropped": [x["dropped"] for x in served["sessions"]],
                              "found_pct": [round(x["found_pct"]) for x in served["sessions"]],
                              "fairness": round(served["fairness"], 2), "step_p50_ms": round(ref["step_p50_ms"], 1)}),
                  flush=True)
    run.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
