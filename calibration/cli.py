"""``arsel calibrate``: camera intrinsics from board images; gaze mapping from target pairs.

    arsel calibrate intrinsics IMAGES... --pattern chessboard|charuco --size 9x6 --square-m S
        [--marker-m M] [--dictionary NAME] --out cam.json [--format arsel|open3d] [--json REPORT.json]
    arsel calibrate gaze SAMPLES.csv --out gaze.json [--mapping homography|poly2] [--intrinsics I.json]

``IMAGES`` are files, folders (every image inside) or quoted globs (``'calib/left*.jpg'``).
``--size`` counts inner corners for a chessboard (9x6 for a 10x7-square board) and squares for a
ChArUco board. Unusable images are listed with the reason and skipped; fewer than
``--min-images`` usable views is an error (exit 2).
"""

from __future__ import annotations

import argparse
import glob
import sys
import warnings
from pathlib import Path
from typing import Any

from engine.cli_common import UsageError, add_deprecated_flag

GAZE_MAPPINGS = ("homography", "poly2")  # calibration.gaze.MODELS, not imported: keeps --help fast
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")


def add_calibrate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``calibrate`` verb (``intrinsics``, ``gaze``) to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("calibrate", help="calibrate camera intrinsics or a gaze-to-scene mapping")
    csub = p.add_subparsers(dest="calibrate_command", required=True)

    i = csub.add_parser("intrinsics", help="pinhole + distortion from chessboard / ChArUco images")
    i.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or quoted globs")
    i.add_argument("--pattern", default="chessboard", choices=("chessboard", "charuco"))
    i.add_argument("--size", required=True, metavar="COLSxROWS",
                   help="chessboard: inner corners (9x6 for 10x7 squares); charuco: squares")
    i.add_argument("--square-m", type=float, required=True, metavar="S", help="square side in metres")
    i.add_argument("--marker-m", type=float, metavar="M", help="ChArUco marker side (default 0.75 * square)")
    i.add_argument("--dictionary", default="DICT_4X4_50", help="ChArUco ArUco dictionary (default DICT_4X4_50)")
    i.add_argument("--max-image-error-px", type=float, metavar="PX",
                   help="reject views above this RMS reprojection error and calibrate again")
    i.add_argument("--min-images", type=int, default=3, help="fewest usable views (default 3)")
    i.add_argument("--out", required=True, metavar="cam.json", help="intrinsics JSON")
    i.add_argument("--format", default="arsel", choices=("arsel", "open3d"),
                   help="arsel (with distortion, depth scale) or open3d PinholeCameraIntrinsic (default arsel)")
    i.add_argument("--json", metavar="REPORT.json", help="RMS, per-image errors and rejected images")
    i.set_defaults(func=cmd_calibrate_intrinsics)

    g = csub.add_parser("gaze", help="eye-tracker -> scene-camera mapping from a CSV of target pairs")
    g.add_argument("samples", metavar="SAMPLES.csv", help="header tracker_x,tracker_y,scene_x,scene_y, then pairs")
    g.add_argument("--out", required=True, metavar="gaze.json", help="mapping JSON (GazeMapping.load reads it)")
    g.add_argument("--mapping", default="homography", choices=GAZE_MAPPINGS,
                   help="eye-tracker -> scene-camera fit (default homography)")
    add_deprecated_flag(g, "--model", use="--mapping", dest="mapping", choices=GAZE_MAPPINGS)
    g.add_argument("--intrinsics", metavar="I.json", help="scene camera intrinsics: residuals also in degrees")
    g.add_argument("--ransac-px", type=float, default=5.0, help="RANSAC inlier threshold, scene px (default 5)")
    g.add_argument("--seed", type=int, default=0, help="RANSAC seed (default 0)")
    g.set_defaults(func=cmd_calibrate_gaze)
    return p


def _usage(msg: str) -> Exception:
    return UsageError(msg)


def parse_size(text: str) -> tuple[int, int]:
    """``"9x6"`` -> ``(9, 6)``; both at least 2."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        cols, rows = (int(v) for v in parts)
    except ValueError:
        raise _usage(f"--size {text!r} must be COLSxROWS, e.g. 9x6 (chessboard inner corners)") from None
    if min(cols, rows) < 2:
        raise _usage(f"--size {text!r}: need at least 2 columns and 2 rows")
    return cols, rows


def expand_images(items: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and globs -> image paths, in the given order, no repeats."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise _usage(f"folder {item} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif glob.has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item) if Path(f).is_file())
            if not found:
                raise _usage(f"{item!r} matches no files")
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"calibration image not found: {item}")
        paths += [f for f in found if f not in paths]
    return paths


def cmd_calibrate_intrinsics(args: argparse.Namespace) -> int:
    from calibration.intrinsics import calibrate, save_intrinsics

    from engine.atomic import AtomicOutputs
    from engine.validate import json_text, number, optional_number, output_file

    size = parse_size(args.size)
    number("--square-m", args.square_m, lo=0, lo_open=True, hi=10.0, hint=" (square side in metres)")
    optional_number("--marker-m", args.marker_m, lo=0, lo_open=True, hi=10.0)
    number("--min-images", args.min_images, lo=1, integer=True)
    optional_number("--max-image-error-px", args.max_image_error_px, lo=0, lo_open=True)
    output_file("--out", args.out, (".json",))
    output_file("--json", args.json, (".json",))
    images = expand_images(args.images)
    res = calibrate(images, args.pattern, size, args.square_m, marker_m=args.marker_m, dictionary=args.dictionary,
                    min_images=args.min_images, max_image_error_px=args.max_image_error_px)
    i = res.intrinsics
    print(f"calibrated from {len(res.per_image_error_px)} of {len(images)} images ({i.width}x{i.height}): "
          f"RMS {res.rms_px:.3f} px")
    print(f"  fx {i.fx:.2f}  fy {i.fy:.2f}  cx {i.cx:.2f}  cy {i.cy:.2f}")
    print(f"  dist {' '.join(f'{d:.4f}' for d in i.dist)}")
    print("per-image reprojection error (px):")
    for name, err in res.per_image_error_px.items():
        print(f"  {err:7.3f}  {name}")
    if res.rejected:
        print("rejected:")
        for name, reason in res.rejected.items():
            print(f"  {name}: {reason}")
    if args.format == "open3d" and any(i.dist):
        print("arsel calibrate: warning: Open3D intrinsics JSON has no distortion field; undistort images "
              "before using it, or keep --format arsel", file=sys.stderr)
    with AtomicOutputs() as outs, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the same warning, printed above as one line
        save_intrinsics(outs.file(args.out), i, args.format)
        if args.json:
            report = {"out": str(args.out), "format": args.format, "rms_px": res.rms_px,
                      "image_hw": list(res.image_hw), "fx": i.fx, "fy": i.fy, "cx": i.cx, "cy": i.cy,
                      "dist": list(i.dist), "per_image_error_px": res.per_image_error_px, "rejected": res.rejected}
            outs.file(args.json).write_text(json_text(report))
    print(f"wrote {args.out} ({args.format})")
    return 0


def cmd_calibrate_gaze(args: argparse.Namespace) -> int:
    from calibration.gaze import calibrate_gaze_csv
    from calibration.intrinsics import load_intrinsics

    from engine.atomic import AtomicOutputs
    from engine.validate import number, output_file

    samples = Path(args.samples)
    if not samples.is_file():
        raise FileNotFoundError(f"gaze samples CSV not found: {samples}")
    number("--ransac-px", args.ransac_px, lo=0, lo_open=True, hint=" (scene pixels)")
    output_file("--out", args.out, (".json",))
    cam: dict[str, float] = {}
    if args.intrinsics:
        intr = load_intrinsics(args.intrinsics)
        cam = {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy}
    with AtomicOutputs() as outs:
        m = calibrate_gaze_csv(samples, outs.file(args.out), args.mapping, ransac_px=args.ransac_px, seed=args.seed,
                               **cam)
    print(f"{args.out}: {m.model} from {m.num_inliers} of {m.num_pairs} pairs (RANSAC inliers within "
          f"{args.ransac_px:g} px)")
    print(f"  residuals: rms {m.rms_px:.3f} px, median {m.median_px:.3f} px, max {m.max_px:.3f} px")
    if m.rms_deg is not None:
        print(f"  residuals: rms {m.rms_deg:.3f} deg, median {m.median_deg:.3f} deg, max {m.max_deg:.3f} deg")
    if m.num_inliers < m.num_pairs:
        print(f"  {m.num_pairs - m.num_inliers} pairs are outliers (the wearer looked away?)", file=sys.stderr)
    return 0
