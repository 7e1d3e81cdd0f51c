"""Latency of lifting one 640x480 selection: cloud + outlier removal + DBSCAN + oriented box.

Usage: python bench/bench_lift.py [--short] [--repeats 20] [--threads 2] [--out FILE.json]

Modes: full (default: 20 runs, full-res 4); ``--short`` (5 runs, full-res 3). Writes
``bench/results/bench_lift-*.json`` (``bench/make_docs.py`` renders it) and prints where.

Cases: a raycast box filling a large part of a 640x480 RealSense-like frame (noisy depth with
flying pixels and holes), and a real slambook2 Kinect frame with a 200x150 rectangle selection.
Each number is the median of ``--repeats`` runs after two warm-ups. ``full-res`` runs the same
pipeline without organised downsampling (``max_points`` = every pixel): Open3D's statistical
outlier removal and DBSCAN on all points, the straightforward implementation.
Target: <= 10 ms per lift on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Run, add_mode_args, describe_host, ratio, repeat_ms, spread  # noqa: E402
from engine.lift import lift  # noqa: E402
from engine.lift.geometry import camera_rays  # noqa: E402
from engine.types import CameraIntrinsics  # noqa: E402

INTR = CameraIntrinsics(640, 480, 600.0, 600.0, 319.5, 239.5, 0.001)
DATA = Path(os.environ.get("ARSEL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def raycast_box_frame(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mask HxW bool, depth_raw HxW uint16 mm): a 20x12x8 cm box about 0.45 m away, on a floor."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    size = np.array([0.20, 0.12, 0.08])
    box = o3d.geometry.TriangleMesh.create_box(*size).translate((-0.10, -0.06, 0.0))
    floor = o3d.geometry.TriangleMesh.create_box(3, 3, 0.01).translate((-1.5, -1.5, -0.01))
    box_id = scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(box))
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(floor))
    eye, target = np.array([0.30, -0.25, 0.28]), np.array([0.0, 0.0, 0.04])
    fwd = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    rot = np.stack([right, np.cross(fwd, right), fwd], axis=1)
    rays_cam = camera_rays(INTR)
    rays = np.concatenate([np.broadcast_to(eye, rays_cam.shape), rays_cam @ rot.T], axis=-1)
    ans = scene.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))
    z = np.nan_to_num(ans["t_hit"].numpy().astype(np.float64), posinf=0.0)
    rng = np.random.default_rng(seed)
    z_noisy = z + rng.normal(size=z.shape) * 0.001 * z**2
    z_noisy[rng.random(z.shape) < 0.03] = 0
    return ans["geometry_ids"].numpy() == box_id, np.round(z_noisy * 1000).astype(np.uint16)


def real_frame() -> tuple[np.ndarray, np.ndarray, CameraIntrinsics] | None:
    import cv2

    path = DATA / "slambook2_rgbd" / "depth" / "1.pgm"
    if not path.is_file():
        return None
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    mask = np.zeros(depth.shape, bool)
    mask[300:450, 400:600] = True  # table edge and chair in front of the floor
    return mask, depth, CameraIntrinsics(640, 480, 518.0, 519.0, 325.5, 253.5, 0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed lifts per case after 2 warm-ups (20; short 5)")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads for Open3D")
    add_mode_args(parser, "5 runs per case")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.short else 20)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    cases = [("raycast box", *raycast_box_frame(), INTR)]
    real = real_frame()
    if real is not None:
        cases.append(("slambook2 200x150", *real))
    run = Run("bench_lift", {"mode": "short" if args.short else "full", "repeats": repeats,
                             "omp_threads": os.environ["OMP_NUM_THREADS"], "frame_wh": [640, 480]},
              notes=["full-res = the same pipeline on every pixel (no organised downsampling)"])
    print(describe_host(run.host))
    print(f"lift, 640x480 frame, median of {repeats} runs, {os.environ['OMP_NUM_THREADS']} threads")
    for name, mask, depth, intr in cases:
        stage_runs: list[dict[str, float]] = []
        res = lift(mask, depth, intr)
        fast = spread(repeat_ms(lambda: stage_runs.append(lift(mask, depth, intr).timings_ms), repeats, warmup=2))
        full = spread(repeat_ms(lambda: lift(mask, depth, intr, max_points=10**7), max(3, repeats // 5), warmup=1))
        stages = {f"{k}_ms": spread([r[k] for r in stage_runs[2:]]) for k in res.timings_ms}
        run.add({"case": name}, {"mask_px": int(mask.sum()), "points": res.num_points, "lift_ms": fast,
                                 "full_res_ms": full, "full_res_x_lift": ratio(full, fast), **stages})
        print(f"  {name:18s} mask {int(mask.sum()):6d} px -> {res.num_points:6d} pts  lift {fast['median']:6.2f} ms "
              f"(p5-p95 {fast['p5']:.2f}-{fast['p95']:.2f})   full-res {full['median']:7.1f} ms "
              f"({ratio(full, fast):4.1f}x)   [median ms: "
              + ", ".join(f"{k} {statistics.median(r[k] for r in stage_runs):.2f}" for k in res.timings_ms) + "]")
    run.write(args.out)


if __name__ == "__main__":
    main()
