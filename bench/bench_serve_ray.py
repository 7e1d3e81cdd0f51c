"""``arsel serve --ray`` against the single-process ``arsel serve``: 1, 4 and 8 concurrent streams.

Usage: python bench/bench_serve.py --ray [--seconds 15] [--clients 1 4 8] [--out FILE.json]
       (or python bench/bench_serve_ray.py with the same flags)

Both servers run LiteMedSAM with the async encoder, a keyframe every 5 frames and the same engine
settings (``--backend`` torch by default, as the encoder deployment; ``arsel serve``'s decode reuse
and correction cap); every client sends
640x480 JPEG frames at 30 fps over loopback without waiting (the newest frame wins server-side).

- single process: ``arsel serve`` in its own process (torch threads ``--threads``);
- Ray: a local Ray instance (``--num-cpus``, dashboard off) running ``--gateways`` gateway replicas
  over one batching encoder replica (``--max-batch``, ``--batch-wait-ms``), as ``arsel serve --ray``.

Per configuration: aggregate processed fps, per-session p95 send->result, embedding age (p50 of
``embedding_age_frames``), keyframes/s (distinct ``keyframe_id`` values the sessions received, per
second), fairness (slowest / fastest session fps) and every session's fps, dropped frames; for Ray also the encoder's
batch-size histogram over the run and the summed resident memory of all Ray processes (this
process's descendants); for the single process its server's memory. Target (issue #16): at 8 streams Ray's keyframes/s >= 1.5x
the single process's, fairness >= 0.7. Writes ``bench/results/bench_serve_ray-*.json`` (rows per
server and stream count, plus the Ray / single ratios); ``bench/make_docs.py`` renders it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import swan  # noqa: E402
from bench.harness import Run  # noqa: E402
from engine.serve.cli import (  # noqa: E402
    LIVE_MAX_CORRECTION_DECODES,
    LIVE_REUSE_DECODE_PX,
    LIVE_ROI_MARGIN,
    engine_config,
    fraction_or_none,
)
from engine.serve.client import encode_frame  # noqa: E402

FPS = 30.0
BOX: list[float] = []  # the swan's ground-truth box in the 640x480 frames (set by main)


def frames_640(data: Path, n: int = 50) -> list[bytes]:
    """``swan.frames_640`` (there and back) as packed JPEG frame messages."""
    return [encode_frame(0, f, encoding="jpeg", jpeg_quality=85) for f in swan.frames_640(data, n)]


async def _session(url: str, jpegs: list[bytes], seconds: float, ready: list[int],
                   start: asyncio.Event) -> dict[str, Any]:
    """One client: waits for its first keyframe, then (once all are ready) 30 fps for ``seconds``."""
    from websockets.asyncio.client import connect

    sent: dict[int, float] = {}
    lat: list[float] = []
    ages: list[int] = []
    got: list[float] = []
    keyframes: set[int] = set()
    last: dict[str, Any] = {}
    async with connect(url, max_size=None, open_timeout=120, compression=None) as ws:  # as engine.serve.client
        await ws.send(json.dumps({"type": "hello", "client": "bench-ray"}))
        await ws.send(json.dumps({"type": "prompt", "frame_id": 0, "action": "add", "box": BOX, "points": []}))
        i = await swan.until_keyframe(ws, jpegs)
        ready.append(i)
        await start.wait()

        async def reader() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "result" and msg["frame_id"] in sent:
                    lat.append((time.perf_counter() - sent[msg["frame_id"]]) * 1e3)
                    ages.append(msg["embedding_age_frames"])
                    got.append(time.perf_counter())
                    keyframes.add(msg["keyframe_id"])
                    last.update(msg)

        task = asyncio.create_task(reader())
        t_start, first = time.perf_counter(), i
        while time.perf_counter() - t_start < seconds:
            await asyncio.sleep(max(0.0, t_start + (i - first) / FPS - time.perf_counter()))
            sent[i] = time.perf_counter()
            await ws.send(swan.renumber(jpegs[i % len(jpegs)], i))
            i += 1
        await asyncio.sleep(1.0)
        task.cancel()
    span = got[-1] - got[0] if len(got) > 1 else float("nan")
    return {"sent": i - first, "results": len(lat), "fps": (len(got) - 1) / span if span > 0 else 0.0,
            "latency_p50_ms": swan.pct(lat, 50), "latency_p95_ms": swan.pct(lat, 95), "dropped": last.get("dropped", 0),
            "embedding_age_p50": swan.pct(ages, 50), "embedding_age_max": max(ages, default=-1),
            "keyframes": len(keyframes)}


async def _ready_sessions(url: str, jpegs: list[bytes], clients: int, seconds: float) -> list[dict[str, Any]]:
    """``clients`` sessions; each waits for its first keyframe, then all stream together."""
    return await swan.start_together(lambda ready, start: _session(url, jpegs, seconds, ready, start), clients)


def _streams(url: str, jpegs: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    sessions = asyncio.run(_ready_sessions(url, jpegs, clients, seconds))
    fps = [s["fps"] for s in sessions]
    return {"clients": clients, "sessions": sessions, "wall_s": time.perf_counter() - t0,
            "fps_total": sum(fps), "fairness": min(fps) / max(fps) if max(fps) > 0 else 0.0,
            "latency_p95_ms_max": max(s["latency_p95_ms"] for s in sessions),
            "embedding_age_p50_max": max(s["embedding_age_p50"] for s in sessions),
            "keyframes_per_s": sum(s["keyframes"] for s in sessions) / seconds,
            "dropped": sum(s["dropped"] for s in sessions),
            "session_fps": " ".join(f"{f:.1f}" for f in sorted(fps))}


def rss_mb(pids: list[int]) -> float:
    """Summed resident memory of ``pids`` in MiB (processes gone meanwhile count 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def ray_processes() -> list[int]:
    """This process's descendants: a local Ray instance's processes (the single-process server is gone)."""
    import psutil

    return [c.pid for c in psutil.Process().children(recursive=True)]


def single_process(jpegs: list[bytes], clients: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """``arsel serve`` in its own process; one run per client count."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--threads", str(args.threads),
           "--backend", args.backend, "--reuse-decode-px", str(args.reuse_decode_px),
           "--max-correction-decodes", str(args.max_correction_decodes), "--roi-margin", str(args.roi_margin),
           "--keyframe-interval", str(args.keyframe_interval), "--max-sessions", str(max(clients) + 1)]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    out: dict[str, Any] = {}
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        port = re.search(r"127\.0\.0\.1:(\d+)/", line)
        if port is None:
            raise RuntimeError(f"arsel serve did not start: {line!r}")
        url = f"ws://127.0.0.1:{port.group(1)}/v1/stream"
        for n in clients:
            out[f"clients_{n}"] = run = _streams(url, jpegs, n, args.seconds)
            run["memory_mb"] = rss_mb([proc.pid])
            print(json.dumps({"single": _brief(run)}), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def on_ray(jpegs: list[bytes], clients: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """A local Ray instance serving the ``arsel`` application; one run per client count."""
    from engine.serve import ray_gateway as rg
    from engine.stream.scheduler import KeyframePolicy

    import ray

    rg.start_ray(None, "127.0.0.1", num_cpus=args.num_cpus)
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())  # noqa: SLF001
    out: dict[str, Any] = {}
    try:
        port = rg.free_port()
        settings = rg.GatewaySettings("lite_medsam", policy=KeyframePolicy(interval=args.keyframe_interval),
                                      max_sessions=max(clients) + 1, threads=args.threads, backend=args.backend,
                                      config=engine_config(args))
        rg.deploy(rg.build_application(settings, args.gateways, 1, args.max_batch, args.batch_wait_ms / 1e3),
                  "127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        for n in clients:
            before = _histogram(url)
            out[f"clients_{n}"] = run = _streams(url.replace("http", "ws") + "/v1/stream", jpegs, n, args.seconds)
            run["memory_mb"] = rss_mb(ray_processes())
            after = _histogram(url)
            run["batch_histogram"] = {k: after.get(k, 0) - before.get(k, 0) for k in after
                                      if after.get(k, 0) > before.get(k, 0)}
            run["encodes_per_s"] = sum(int(k) * v for k, v in run["batch_histogram"].items()) / run["wall_s"]
            print(json.dumps({"ray": _brief(run)}), flush=True)
    finally:
        rg.shutdown()
        shutil.rmtree(session_dir, ignore_errors=True)  # its logs: a benchmark leaves nothing behind
        latest = session_dir.parent / "session_latest"
        if latest.is_symlink() and not latest.exists():
            latest.unlink()
    return out


def _histogram(url: str, tries: int = 5) -> dict[str, int]:
    """The encoder's batch-size histogram (``/healthz`` of whichever gateway answers)."""
    for _ in range(tries):
        encoder = httpx.get(url + "/healthz", timeout=120).json()["ray"]["encoder"]
        if "batch_histogram" in encoder:
            return encoder["batch_histogram"]
        time.sleep(5)  # the encoder replica did not answer in time: busy with a batch
    raise RuntimeError(f"/healthz gave no encoder histogram: {encoder}")


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("clients", "fps_total", "fairness", "session_fps", "latency_p95_ms_max", "embedding_age_p50_max",
            "keyframes_per_s", "dropped", "memory_mb", "batch_histogram", "encodes_per_s")
    return {k: round(run[k], 2) if isinstance(run[k], float) else run[k] for k in keys if k in run}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="/work/shared/data", help="shared data root (DAVIS blackswan)")
    p.add_argument("--seconds", type=float, default=15.0, help="streaming time per configuration")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the single process and of each replica")
    p.add_argument("--keyframe-interval", type=int, default=5)
    p.add_argument("--backend", default="torch",
                   help="decode runtime of both servers (default torch: the encoder deployment's runtime too)")
    p.add_argument("--reuse-decode-px", type=float, default=LIVE_REUSE_DECODE_PX, help="as arsel serve's flag")
    p.add_argument("--max-correction-decodes", type=int, default=LIVE_MAX_CORRECTION_DECODES,
                   help="as arsel serve's flag")
    p.add_argument("--roi-margin", type=fraction_or_none, default=LIVE_ROI_MARGIN, help="as arsel serve's flag")
    p.add_argument("--num-cpus", type=float, default=2.0, help="CPUs of the local Ray instance")
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=50.0)
    p.add_argument("--out", type=Path, default=None,
                   help="result JSON (default bench/results/bench_serve_ray-<host>-<date>.json)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(p)
    args = p.parse_args(argv)
    BOX[:] = swan.swan_box(Path(args.data), swan.HW)
    jpegs = frames_640(Path(args.data))
    run = Run("bench_serve_ray", {**{k: v for k, v in vars(args).items() if k != "out"}, "mode": "full"},
              notes=["640x480 JPEG at 30 fps per stream over loopback, LiteMedSAM, async encoder, keyframe every 5",
                     "keyframes_per_s: distinct keyframes the sessions received per second; target at 8 streams: "
                     "Ray >= 1.5x the single process, fairness >= 0.7",
                     "other_cores includes Ray's own processes (GCS, raylet, replicas), which are no children of "
                     "the bench once shut down"])
    single = single_process(jpegs, args.clients, args)
    ray_runs = on_ray(jpegs, args.clients, args)
    ratios = {}
    for key in single:
        s, r = single[key], ray_runs[key]
        ratios[key] = {"keyframes_per_s": r["keyframes_per_s"] / s["keyframes_per_s"] if s["keyframes_per_s"] else None,
                       "fps_total": r["fps_total"] / s["fps_total"] if s["fps_total"] else None}
        for server, res in (("single process", s), ("ray", r)):
            figures = {k: v for k, v in _brief(res).items() if k != "clients"}
            if "batch_histogram" in figures:
                figures["batch_histogram"] = " ".join(f"{k}:{v}" for k, v in sorted(figures["batch_histogram"].items(),
                                                                                   key=lambda kv: int(kv[0])))
            if server == "ray":
                figures["keyframes_x_single"] = ratios[key]["keyframes_per_s"]
                figures["fps_x_single"] = ratios[key]["fps_total"]
            run.add({"server": server, "streams": res["clients"]}, figures)
    print(json.dumps({"ray_vs_single": ratios}, indent=1))
    run.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
