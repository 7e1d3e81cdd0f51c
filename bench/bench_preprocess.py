"""Per-keyframe preprocessing cost of each resize recipe (``engine.transforms.preprocess``).

Usage: python bench/bench_preprocess.py [--repeats 30] [--out runs/bench_preprocess.json]

Cases: the shared SAM photos (truck 1800x1200, dog 800x534) and a 640x480 stream frame (a crop of
truck), each through ``preprocess`` (resize + normalise + pad to the model input) with every
recipe (whole ``preprocess``, and the resize alone): "pil" (segment-anything's official ``ResizeLongestSide``, SAM / MobileSAM's default),
"area" (LiteMedSAM's), "fast" (OpenCV area/linear, opt-in). The reference row is the official
``ResizeLongestSide.apply_image`` + ``Sam.preprocess`` (torch) when segment-anything is installed.
Figures: median and spread (min, max, interquartile range) in ms over ``--repeats`` runs after two
warm-ups; ratios against the official recipe ("pil") in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import describe_host  # noqa: E402
from engine.imageio import load_rgb  # noqa: E402
from engine.transforms import RESIZE_METHODS, preprocess, resize_longest_side  # noqa: E402

DATA = Path(os.environ.get("ARSEL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def timings_ms(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median, min, max and interquartile range (ms) of ``repeats`` calls after two warm-ups."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "iqr_ms": q3 - q1, "runs": repeats}


def official_sam(long_side: int) -> Callable[[np.ndarray], object] | None:
    """segment-anything's ``apply_image`` + ``Sam.preprocess`` (normalise, pad), or None if absent."""
    try:
        import torch
        import torch.nn.functional as F
        from segment_anything.utils.transforms import ResizeLongestSide
    except ImportError:
        return None
    mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    tf = ResizeLongestSide(long_side)

    def run(rgb: np.ndarray) -> object:
        x = torch.as_tensor(tf.apply_image(rgb)).permute(2, 0, 1).contiguous()[None].float()
        x = (x - mean) / std
        return F.pad(x, (0, long_side - x.shape[-1], 0, long_side - x.shape[-2]))

    return run


def cases() -> dict[str, np.ndarray]:
    truck = load_rgb(DATA / "sam_images" / "truck.jpg")
    return {"truck_1800x1200": truck, "dog_800x534": load_rgb(DATA / "sam_images" / "dog.jpg"),
            "frame_640x480": np.ascontiguousarray(truck[300:780, 400:1040])}


def run(repeats: int) -> dict:
    results: list[dict] = []
    ref = official_sam(1024)
    for name, rgb in cases().items():
        rows: dict[str, dict[str, float]] = {}
        for method in RESIZE_METHODS:
            rows[method] = timings_ms(lambda m=method: preprocess(rgb, 1024, "imagenet", m), repeats)  # type: ignore[misc]
            rows[f"{method}_resize_only"] = timings_ms(lambda m=method: resize_longest_side(rgb, 1024, m), repeats)  # type: ignore[misc]
        rows["area_256"] = timings_ms(lambda: preprocess(rgb, 256, "minmax", "area"), repeats)
        if ref is not None:
            rows["official_sam"] = timings_ms(lambda: ref(rgb), repeats)
        base = rows["pil"]["median_ms"]
        for row in rows.values():
            row["ratio_to_pil"] = row["median_ms"] / base
        results.append({"case": name, "hw": list(rgb.shape[:2]), "recipes": rows})
    return {"bench": "preprocess", "host": describe_host(), "python": platform.python_version(),
            "commit": _commit(), "versions": _versions(), "repeats": repeats, "results": results}


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import cv2
    import PIL

    return {"numpy": np.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_preprocess.json"))
    args = ap.parse_args()
    report = run(args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(report["host"])
    for res in report["results"]:
        for method, row in res["recipes"].items():
            print(f"{res['case']:>16} {method:>16}: {row['median_ms']:7.2f} ms "
                  f"(iqr {row['iqr_ms']:.2f}, min {row['min_ms']:.2f}) x{row['ratio_to_pil']:.2f} of pil")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
