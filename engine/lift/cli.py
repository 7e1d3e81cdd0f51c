"""``arsel lift`` and ``arsel fuse``: lift a selected object from one RGB-D frame; fuse many frames.

    arsel lift --color C.png --depth D.png --intrinsics I.json [--depth-scale-m 0.001]
        (--mask M.png | --box X0,Y0,X1,Y1 | --point X,Y ...) [--model NAME] [--backend B]
        [--edge-gap-m 0.01] [--erode-px 0]
        [--checkpoint P] --out OBJECT.ply [--json OUT.json] [--mesh MESH.ply|.obj|.glb]
    arsel fuse FRAMES_DIR --poses TRAJ.log --intrinsics I.json [--depth-scale-m 0.001] [--masks DIR]
        [--voxel-m 0.01] [--every N] --out MESH.ply [--cloud CLOUD.ply] [--json OUT.json]

Depth is raw units (16-bit PNG/PGM, or a float image) registered (aligned) to the colour image,
so both are on one pixel grid; the intrinsics (ours or Open3D's JSON) are that grid's: the colour
camera's once depth is aligned to colour (what ``RealSenseSource.save_intrinsics`` writes).
``--depth-scale-m`` is metres per raw unit (0.001 = millimetres and RealSense, 0.0002 = TUM), as the
intrinsics file's ``depth_scale_m`` it overrides; the deprecated ``--depth-scale`` gave its inverse
(raw units per metre) and is converted. ``arsel fuse`` reads and
integrates one frame at a time, so memory does not grow with the number of frames.

Exit status: 0 written; 2 bad input (one line naming the problem); 3 nothing to lift or fuse (an
empty selection, no valid depth under it, everything filtered as outliers, or an empty fused
mesh): the JSON is still written with ``status`` saying which, ``--out`` is not written, and a
warning goes to stderr. ``status`` values: ``ok``, ``empty_mask``, ``no_depth``, ``no_cluster``
(lift), ``empty_mesh`` (fuse).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engine.cli_common import add_deprecated_flag, add_model_args, build_predictor, parse_box, parse_points
from engine.lift.cli_io import (
    FrameReads,
    _usage,
    frame_pairs,
    iter_fusion_frames,
    mask_paths,
    read_color,
    read_depth,
    read_mask,
)
from engine.lift.single import EDGE_GAP_M, EDGE_PX
from engine.atomic import AtomicOutputs
from engine.types import CameraIntrinsics
from engine.validate import number, optional_number

EXIT_NOTHING = 3
MAX_ERODE_PX = 256
MAX_DEPTH_M = 1000.0
MIN_VOXEL_M = 1e-4  # 0.1 mm: finer grids would not fit in memory for any real scene
MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf")


# ---------------------------------------------------------------------------- parsers
def _add_camera_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--intrinsics", required=True, metavar="I.json",
                   help="intrinsics of the pixel grid the depth image is on: with depth aligned to colour, "
                        "the colour camera's (as RealSenseSource.save_intrinsics writes); arsel JSON or "
                        "Open3D PinholeCameraIntrinsic JSON")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--depth-scale-m", type=float, metavar="M_PER_UNIT",
                       help="metres per raw depth unit, <= 1 (0.001 = mm and RealSense; 0.0002 = TUM); default: "
                            "the intrinsics file's depth_scale_m (Open3D JSON: 0.001)")
    add_deprecated_flag(scale, "--depth-scale", use="--depth-scale-m", dest="depth_scale", type=float,
                        metavar="UNITS_PER_M", note=" (metres per unit: --depth-scale-m 1/UNITS_PER_M)")


def add_lift_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``lift`` verb to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("lift", help="lift one selected object of an RGB-D frame to a 3D point cloud")
    p.add_argument("--color", required=True, metavar="C.png",
                   help="colour image; the depth must be aligned (registered) to it, same size")
    p.add_argument("--depth", required=True, metavar="D.png", help="depth image (16-bit raw units, or float)")
    _add_camera_args(p)
    sel = p.add_argument_group("selection (--mask or --box; --point alone, with --box, or to pick the cluster)")
    sel.add_argument("--mask", metavar="M.png", help="single-channel mask image, nonzero = object")
    sel.add_argument("--box", metavar="X0,Y0,X1,Y1", help="segment the colour image with this box first")
    sel.add_argument("--point", action="append", metavar="X,Y[,LABEL]",
                     help="segment from this point (box-only models get box proposals around it); the first "
                          "foreground point also picks the 3D cluster to keep")
    add_model_args(p)
    p.add_argument("--max-depth-m", type=float, default=10.0, help="ignore depth beyond this (default 10)")
    p.add_argument("--edge-gap-m", type=float, default=EDGE_GAP_M, metavar="M",
                   help=f"drop mask pixels more than M metres (x (z/1 m)^2 beyond 1 m) behind the nearest depth z "
                        f"within {EDGE_PX} px: flying pixels (default {EDGE_GAP_M:g}, as arsel demo; 0 = off)")
    p.add_argument("--erode-px", type=int, default=0,
                   help="erode the mask first (default 0: erosion also trims a curved object's rim)")
    p.add_argument("--out", required=True, metavar="OBJECT.ply", help="object point cloud (binary PLY, colours)")
    p.add_argument("--json", metavar="OUT.json", help="centroid, extent, oriented box, volume, status, timings")
    p.add_argument("--mesh", metavar="MESH.ply|.obj|.glb", help="also mesh the object and write it")
    p.add_argument("--mesh-method", default="alpha", choices=("alpha", "poisson"), help="(default alpha)")
    p.set_defaults(func=cmd_lift)
    return p


def add_fuse_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``fuse`` verb to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("fuse", help="fuse posed RGB-D frames (optionally masked) into one mesh (TSDF)")
    p.add_argument("frames", metavar="FRAMES_DIR",
                   help="folder with color/ (or rgb/) and depth/ images paired by file name or by an "
                        "rgbd.match file (Redwood / Open3D layout)")
    p.add_argument("--poses", required=True, metavar="TRAJ.log",
                   help="Redwood .log trajectory: one camera-to-world pose per frame, in frame order")
    _add_camera_args(p)
    p.add_argument("--masks", metavar="DIR", help="per-frame masks, one naming for all frames: NAME.png like each "
                   "colour image when every frame has one, else NNNNN.png by frame index from 0 (as `arsel track` "
                   "writes them); only masked depth is fused")
    p.add_argument("--voxel-m", type=float, default=0.01, help="TSDF voxel size in metres (default 0.01)")
    p.add_argument("--trunc-m", type=float, help="SDF truncation in metres (default 3 voxels)")
    p.add_argument("--max-depth-m", type=float, default=4.0, help="ignore depth beyond this (default 4)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="use every N-th frame (default 1)")
    p.add_argument("--o3d-device", default="CPU:0", help="Open3D device, e.g. CPU:0 or CUDA:0")
    add_deprecated_flag(p, "--device", use="--o3d-device", dest="o3d_device", metavar="CPU:0|CUDA:0")
    p.add_argument("--out", required=True, metavar="MESH.ply", help="fused mesh (.ply, .obj, .glb)")
    p.add_argument("--cloud", metavar="CLOUD.ply", help="also write the mesh vertices as a coloured point cloud")
    p.add_argument("--json", metavar="OUT.json", help="vertex/triangle counts, bounds, timings")
    p.set_defaults(func=cmd_fuse)
    return p


# ---------------------------------------------------------------------------- shared input
def _check_suffix(path: str | None, allowed: tuple[str, ...], flag: str) -> None:
    from engine.validate import output_file

    output_file(flag, path, allowed)


def _intrinsics(args: argparse.Namespace) -> CameraIntrinsics:
    from calibration.intrinsics import load_intrinsics

    units = getattr(args, "depth_scale", None)  # the deprecated --depth-scale: raw units per metre
    if units is not None:
        units = optional_number("--depth-scale", units, lo=0, lo_open=True, hi=1e9,
                                hint=" raw units per metre (1000 for mm)")
        if units < 1:
            raise _usage(f"--depth-scale is raw units per metre, got {units:g}, which looks like metres per unit; "
                         f"pass --depth-scale-m {units:g}")
    scale_m = optional_number("--depth-scale-m", args.depth_scale_m, lo=0, lo_open=True, hi=1e9,
                              hint=" metres per raw unit (0.001 for mm)")
    if scale_m is not None and scale_m > 1:
        raise _usage(f"--depth-scale-m is metres per raw unit, got {scale_m:g}, which looks like raw units per "
                     f"metre; pass --depth-scale-m {1 / scale_m:g}")
    return load_intrinsics(args.intrinsics, scale_m if units is None else 1.0 / units)


def _write_json(path: str | Path | None, report: dict[str, Any]) -> None:
    from engine.validate import json_text

    if path:
        Path(path).write_text(json_text(report))


def _vec(a: Any) -> list[float] | None:
    return None if a is None else [round(float(v), 6) for v in np.asarray(a).reshape(-1)]


# ---------------------------------------------------------------------------- lift
def _segment(args: argparse.Namespace, rgb: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Mask (HxW bool) from --box / --point with the model, and its report fields."""
    points, labels = parse_points(args.point)
    box = parse_box(args.box)
    predictor = build_predictor(args)
    predictor.set_image(rgb)
    info: dict[str, Any] = {"model": args.model, "timings_ms": {"encode": predictor.encode_ms}}
    if box is None and predictor.spec.box_only:
        from engine.stream.proposals import decode_point_proposals

        prop = decode_point_proposals(predictor, points, labels, image_rgb=rgb)
        mask = np.zeros(rgb.shape[:2], bool) if prop.logits is None else prop.logits > 0
        info.update(score=round(prop.score, 4), segmentation="point_box_proposals")
        info["timings_ms"]["decode"] = 0.0 if prop.decoded is None else prop.decoded.decode_ms
        return mask, info
    if predictor.spec.box_only and points is not None:
        print(f"arsel lift: warning: {args.model} answers boxes only; --point only picks the 3D cluster",
              file=sys.stderr)
        points = labels = None
    pred = predictor.predict(points, labels, box)
    info.update(score=round(float(pred.scores[0, 0]), 4), segmentation="prompt")
    info["timings_ms"]["decode"] = pred.timings_ms["decode_ms"]
    return pred.masks[0, 0], info


def _selection(args: argparse.Namespace, rgb: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None, dict]:
    """(mask, cluster prompt pixel or None, report fields) from --mask / --box / --point."""
    if args.mask and args.box:
        raise _usage("give --mask or --box, not both (--point may go with either)")
    if not (args.mask or args.box or args.point):
        raise _usage("give a selection: --mask M.png, --box X0,Y0,X1,Y1 or --point X,Y")
    from engine.validate import box_xyxy, points_xy

    points, labels = parse_points(args.point)
    if args.box is not None:
        box_xyxy("--box", parse_box(args.box), rgb.shape[:2])
    prompt = None
    if points is not None:
        points = points_xy("--point", points, rgb.shape[:2])
        fg = points[labels == 1]
        prompt = (float(fg[0, 0]), float(fg[0, 1])) if len(fg) else None
    if args.mask:
        return read_mask(args.mask, rgb.shape[:2]), prompt, {"selection": "mask", "mask": str(args.mask)}
    mask, info = _segment(args, rgb)
    return mask, prompt, {"selection": "box" if args.box else "point", **info}


def _lift_report(args: argparse.Namespace, res: Any, intr: CameraIntrinsics, extra: dict) -> dict[str, Any]:
    ok = res.status == "ok"
    obb = {"center": _vec(res.obb_center_m), "rotation": np.round(res.obb_rotation, 6).tolist(),
           "extent": _vec(res.obb_extent_m)} if ok else None
    return {
        "color": str(args.color), "depth": str(args.depth), "intrinsics": str(args.intrinsics),
        "depth_scale_m": intr.depth_scale_m, **extra, "status": res.status, "frame": res.frame,
        "num_points": res.num_points, "centroid_m": _vec(res.centroid_m), "extent_m": _vec(res.extent_m),
        "obb": obb, "volume_m3": None if res.volume_m3 is None else round(res.volume_m3, 9),
        "out": str(args.out) if ok else None, "mesh": str(args.mesh) if ok and args.mesh else None,
    }  # fmt: skip


def cmd_lift(args: argparse.Namespace) -> int:
    from engine.lift import lift, reconstruct_mesh, save_mesh, save_ply

    t0 = time.perf_counter()
    _check_suffix(args.out, (".ply",), "--out")
    _check_suffix(args.mesh, MESH_SUFFIXES, "--mesh")
    _check_suffix(args.json, (".json",), "--json")
    number("--erode-px", args.erode_px, lo=0, hi=MAX_ERODE_PX, integer=True, hint=" (pixels of mask erosion)")
    number("--max-depth-m", args.max_depth_m, lo=0, lo_open=True, hi=MAX_DEPTH_M)
    number("--edge-gap-m", args.edge_gap_m, lo=0, hi=MAX_DEPTH_M, hint=" (metres; 0 turns the depth-edge test off)")
    intr = _intrinsics(args)
    depth = read_depth(args.depth, intr)
    rgb = read_color(args.color, depth.shape)
    t1 = time.perf_counter()
    mask, prompt, extra = _selection(args, rgb)
    t2 = time.perf_counter()
    res = lift(mask, depth, intr, rgb=rgb, prompt_xy=prompt, erode_px=args.erode_px, max_depth_m=args.max_depth_m,
               edge_gap_m=args.edge_gap_m or None)
    t3 = time.perf_counter()
    extra["mask_area_px"] = int(mask.sum())
    with AtomicOutputs() as outs:  # the cloud, the mesh and the JSON appear together, or none of them
        if res.status == "ok":
            save_ply(outs.file(args.out), res)
            if args.mesh:
                save_mesh(outs.file(args.mesh), reconstruct_mesh(res, method=args.mesh_method))
        _write_lift_report(args, res, intr, extra, outs, t0, (t1, t2, t3))
    if res.status != "ok":
        why = {"empty_mask": "the selection is empty", "no_depth": "no valid depth under the selection",
               "no_cluster": "every point was filtered as an outlier"}[res.status]
        print(f"arsel lift: warning: nothing lifted ({res.status}: {why}); {args.out} not written", file=sys.stderr)
        return EXIT_NOTHING
    c, e = res.centroid_m, res.extent_m
    vol = "n/a" if res.volume_m3 is None else f"{res.volume_m3 * 1e3:.2f} L"
    print(f"{args.out}: {res.num_points} points, centroid ({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}) m, "
          f"extent {e[0]:.3f} x {e[1]:.3f} x {e[2]:.3f} m, volume {vol}, lift {(t3 - t2) * 1e3:.0f} ms")
    return 0


def _write_lift_report(args: argparse.Namespace, res: Any, intr: CameraIntrinsics, extra: dict[str, Any],
                       outs: AtomicOutputs, t0: float, marks: tuple[float, float, float]) -> None:
    t1, t2, t3 = marks
    timings = {"load": (t1 - t0) * 1e3, "select": (t2 - t1) * 1e3, **extra.pop("timings_ms", {}),
               "lift": (t3 - t2) * 1e3,
               **{f"lift_{k}": v for k, v in res.timings_ms.items()},
               "write": (time.perf_counter() - t3) * 1e3, "total": (time.perf_counter() - t0) * 1e3}
    report = _lift_report(args, res, intr, extra)
    report["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
    _write_json(outs.file(args.json) if args.json else None, report)


# ---------------------------------------------------------------------------- fuse
def _fusion_input(args: argparse.Namespace, intr: CameraIntrinsics) -> tuple[Any, int, FrameReads]:
    """(iterator of fusion frames read one at a time, total pairs, read counters); the frame
    folder, trajectory and mask names are checked here, before any frame is fused."""
    from engine.lift import read_redwood_log

    pairs = frame_pairs(args.frames)
    poses = read_redwood_log(args.poses)
    if len(poses) != len(pairs):
        raise ValueError(f"{args.poses} has {len(poses)} poses but {args.frames} has {len(pairs)} colour/depth "
                         "pairs; give the trajectory of exactly these frames (camera-to-world, frame order)")
    picked = range(0, len(pairs), args.every)
    masks = None
    if args.masks:
        folder = Path(args.masks)
        if not folder.is_dir():
            raise FileNotFoundError(f"masks folder not found: {folder}")
        if (folder / "masks").is_dir() and not any(folder.glob("*.png")):
            folder = folder / "masks"  # an `arsel track --out DIR` folder
        masks = mask_paths(folder, [(i, pairs[i][0]) for i in picked])
    reads = FrameReads()
    return iter_fusion_frames(pairs, poses, masks, picked, intr, reads), len(pairs), reads


def _fuse_report(args: argparse.Namespace, mesh: Any, used: int, total: int) -> dict[str, Any]:
    verts = np.asarray(mesh.vertices)
    lo, hi = (verts.min(axis=0), verts.max(axis=0)) if len(verts) else (None, None)
    return {
        "frames": str(args.frames), "poses": str(args.poses), "masks": args.masks, "frames_total": total,
        "frames_used": used, "voxel_m": args.voxel_m, "trunc_m": args.trunc_m or 3 * args.voxel_m,
        "status": "ok" if len(mesh.triangles) else "empty_mesh", "vertices": len(verts),
        "triangles": len(mesh.triangles), "bounds_min_m": _vec(lo), "bounds_max_m": _vec(hi),
        "extent_m": None if lo is None else _vec(hi - lo),
        "out": str(args.out) if len(mesh.triangles) else None,
        "cloud": str(args.cloud) if args.cloud and len(mesh.triangles) else None,
    }  # fmt: skip


def _counted(frames: Any, bar: Any) -> Any:
    for frame in frames:
        yield frame
        bar.update(1)


def cmd_fuse(args: argparse.Namespace) -> int:
    import open3d as o3d
    from tqdm import tqdm

    from engine.lift import fuse_tsdf, save_mesh, save_ply

    t0 = time.perf_counter()
    _check_suffix(args.out, MESH_SUFFIXES, "--out")
    _check_suffix(args.cloud, (".ply",), "--cloud")
    _check_suffix(args.json, (".json",), "--json")
    number("--every", args.every, lo=1, integer=True)
    number("--voxel-m", args.voxel_m, lo=MIN_VOXEL_M, hi=10.0, hint=" (TSDF voxel side in metres, e.g. 0.01)")
    optional_number("--trunc-m", args.trunc_m, lo=0, lo_open=True, hi=100.0)
    number("--max-depth-m", args.max_depth_m, lo=0, lo_open=True, hi=MAX_DEPTH_M)
    intr = _intrinsics(args)
    frames, total, reads = _fusion_input(args, intr)
    t1 = time.perf_counter()
    with warnings.catch_warnings(), tqdm(total=len(range(0, total, args.every)), unit="frame", desc="fuse",
                                         file=sys.stderr, disable=None) as bar:
        warnings.filterwarnings("ignore", "TSDF fusion produced an empty mesh")  # reported as a status
        mesh = fuse_tsdf(_counted(frames, bar), intr, args.voxel_m, args.trunc_m, args.max_depth_m,
                         device=args.o3d_device)
    t2 = time.perf_counter()
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.clip(np.asarray(mesh.vertex_colors), 0.0, 1.0))
    report = _fuse_report(args, mesh, reads.used, total)
    with AtomicOutputs() as outs:  # mesh, cloud and JSON appear together, or none of them
        if report["status"] == "ok":
            save_mesh(outs.file(args.out), mesh)
            if args.cloud:
                cloud = o3d.geometry.PointCloud(mesh.vertices)
                cloud.colors, cloud.normals = mesh.vertex_colors, mesh.vertex_normals
                save_ply(outs.file(args.cloud), cloud)
        t3 = time.perf_counter()
        load_s, fuse_s = (t1 - t0) + reads.read_s, (t2 - t1) - reads.read_s  # reading interleaves with fusing
        report["timings_ms"] = {k: round(v * 1e3, 2) for k, v in
                                (("load", load_s), ("fuse", fuse_s), ("write", t3 - t2), ("total", t3 - t0))}
        _write_json(outs.file(args.json) if args.json else None, report)
    if report["status"] != "ok":
        print(f"arsel fuse: warning: the fused mesh is empty (no valid masked depth within --max-depth-m "
              f"{args.max_depth_m}?); {args.out} not written", file=sys.stderr)
        return EXIT_NOTHING
    e = report["extent_m"]
    print(f"{args.out}: {report['vertices']} vertices, {report['triangles']} triangles from {reads.used} frames, "
          f"extent {e[0]:.2f} x {e[1]:.2f} x {e[2]:.2f} m, fuse {report['timings_ms']['fuse']:.0f} ms")
    return 0
