"""The one timing, host and result harness every ``bench/*.py`` uses.

* :func:`interleaved_ms` times several functions taking turns every repeat (after warm-ups), so
  load from other processes hits them alike and their ratios stay fair on a shared machine;
  :func:`repeat_ms` times one function.
* :func:`spread` turns samples into ``{"median", "p5", "p95", "min", "max", "n"}``.
* :func:`host_info` (CPU model, usable cores, SIMD flags, load), :func:`git_commit` and
  :func:`library_versions` describe the run; :class:`Run` collects rows of figures and writes
  them as JSON to ``bench/results/<bench>-<host>-<YYYYmmdd-HHMMSS>.json``, the files
  ``bench/make_docs.py`` turns into ``docs/benchmarks.md``.

A run counts as *under load* when the 1-minute load average at its start or end exceeds half the
usable cores: other processes then shared the CPU, so compare its ratios, not its milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
SCHEMA = 1
SIMD_FLAGS = ("amx_bf16", "avx512_vnni", "avx512f", "avx2", "neon", "asimd")  # best first
LIBRARIES = ("torch", "numpy", "onnxruntime", "open3d", "opencv-python", "segment-anything", "mobilesam-mirror")


# --- timing --------------------------------------------------------------------------------------
def interleaved_ms(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                   settle_s: float = 0.0) -> dict[str, list[float]]:
    """ms of every timed run of each function: ``warmup`` untimed runs each, then the functions
    take turns ``repeats`` times. ``settle_s``: pause after each run (parks one runtime's
    spin-waiting worker threads before the next runtime runs)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[label].append((time.perf_counter() - t0) * 1e3)
            if settle_s:
                time.sleep(settle_s)
    return times


def repeat_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """ms of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones."""
    return interleaved_ms({"fn": fn}, repeats, warmup)["fn"]


def spread(samples: Iterable[float], digits: int = 3) -> dict[str, float | int]:
    """``{"median", "p5", "p95", "min", "max", "n"}`` of ``samples`` (NaNs dropped); n = 0 gives NaNs."""
    arr = np.asarray([s for s in samples if s == s], np.float64)
    if arr.size == 0:
        return {"median": float("nan"), "p5": float("nan"), "p95": float("nan"), "min": float("nan"),
                "max": float("nan"), "n": 0}
    p5, med, p95 = np.percentile(arr, (5, 50, 95))
    return {"median": round(float(med), digits), "p5": round(float(p5), digits), "p95": round(float(p95), digits),
            "min": round(float(arr.min()), digits), "max": round(float(arr.max()), digits), "n": int(arr.size)}


def ratio(num: Mapping[str, Any], den: Mapping[str, Any]) -> float:
    """Ratio of two spreads' medians (same run), rounded to 3 digits."""
    return round(float(num["median"]) / float(den["median"]), 3)


# --- the run's context ---------------------------------------------------------------------------
def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
            if model != "unknown CPU" and flags:
                break
    return model, flags


def load_avg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cpu_busy_s() -> float | None:
    """CPU seconds every process on the machine has spent busy since boot (``/proc/stat``);
    None where there is no ``/proc/stat``."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its children (waited for, and still running: psutil)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                ct = child.cpu_times()
                total += ct.user + ct.system
            except psutil.Error:
                continue
    except ImportError:
        pass
    return total


def host_info() -> dict[str, Any]:
    """CPU model, usable cores, SIMD flags (best first), load average, and a short ``id`` for file names."""
    model, flags = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    simd = [f for f in SIMD_FLAGS if f in flags]
    vendor = "amd" if "AMD" in model else "intel" if "Intel" in model else re.sub(r"\W+", "", model.lower())[:10]
    host_id = f"{vendor}-{simd[0] if simd else 'nosimd'}-{cores}c".replace("_", "")
    return {"id": host_id, "cpu": model, "cores": cores, "simd": simd, "machine": platform.machine(),
            "python": platform.python_version(), "load_avg_1min": load_avg()}


def describe_host(host: Mapping[str, Any] | None = None) -> str:
    """One line: ``"<CPU>, <N> cores usable, <best SIMD>, load avg <x>"``."""
    h = host or host_info()
    return f"{h['cpu']}, {h['cores']} cores usable, {(h['simd'] or ['no AVX2'])[0]}, load avg {h['load_avg_1min']}"


def git_commit() -> dict[str, Any]:
    """``{"commit": short hash or "unknown", "dirty": bool}`` of the checkout the bench ran from."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"commit": head, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def library_versions(names: Iterable[str] = LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names); absent ones are left out."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class Run:
    """One bench run: ``add(labels, figures)`` rows, then ``write()`` the JSON result.

    ``labels``: what a row is (``{"model": "lite_medsam", "backend": "onnxruntime"}``);
    ``figures``: name -> a :func:`spread` dict (timings, with their spread) or a plain number
    (ratios, quality). ``config``: the bench's settings, including ``mode`` ("short"/"full").
    """

    def __init__(self, bench: str, config: Mapping[str, Any], notes: Iterable[str] = ()) -> None:
        self.bench, self.config, self.notes = bench, dict(config), list(notes)
        self.host = host_info()
        self.started = dt.datetime.now(dt.timezone.utc)
        self.source = git_commit()  # the code that runs: taken at the start, before anything can change it
        self._cpu0 = (cpu_busy_s(), own_cpu_s(), time.monotonic())
        self.rows: list[dict[str, Any]] = []

    def add(self, labels: Mapping[str, Any], figures: Mapping[str, Any]) -> None:
        self.rows.append({"labels": dict(labels), "figures": dict(figures)})

    def result(self) -> dict[str, Any]:
        end_load, start_load = load_avg(), self.host["load_avg_1min"]
        return {
            "schema": SCHEMA, "bench": self.bench, "date": self.started.isoformat(timespec="seconds"),
            **self.source, "host": self.host, "libraries": library_versions(), "config": self.config,
            "load": {"start": start_load, "end": end_load, **self._other_work()},
            "notes": self.notes, "rows": self.rows,
        }

    def _other_work(self) -> dict[str, Any]:
        """How many cores other processes kept busy during the run (machine busy time minus this
        process tree's), and ``under_load``: more than a quarter of the cores. The load average
        is no measure of that: it counts the bench's own threads."""
        busy0, own0, t0 = self._cpu0
        busy1, own1, elapsed = cpu_busy_s(), own_cpu_s(), time.monotonic() - t0
        if busy0 is None or busy1 is None or elapsed <= 0:
            start = self.host["load_avg_1min"]
            return {"other_cores": None, "under_load": start is not None and start > 0.5 * self.host["cores"]}
        other = max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed
        return {"other_cores": round(other, 2), "under_load": other > 0.25 * self.host["cores"]}

    def write(self, out: Path | None = None) -> Path:
        """Write the result (default ``bench/results/<bench>-<host id>-<date>.json``), print and return the path."""
        if out is None:
            stamp = self.started.strftime("%Y%m%d-%H%M%S")
            out = RESULTS_DIR / f"{self.bench}-{self.host['id']}-{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        result = self.result()
        out.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
        flag = " (under load: compare ratios, not ms)" if result["load"]["under_load"] else ""
        print(f"wrote {out}{flag}", flush=True)
        return out


def add_mode_args(parser: Any, short_help: str) -> None:
    """``--short`` (quick, fewer repeats: a smoke run) and ``--out FILE`` (result JSON path)."""
    parser.add_argument("--short", action="store_true", help=f"short mode: {short_help}")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default bench/results/<bench>-<host>-<date>.json)")
