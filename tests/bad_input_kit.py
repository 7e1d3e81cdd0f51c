"""Files of the bad-input table (``tests/test_bad_inputs.py``): good and broken images, depth,
intrinsics, gaze CSVs, checkpoints, frame folders. Small (64x48 frames), built once per session."""

from __future__ import annotations

import argparse
import io
import json
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

W, H = 64, 48  # frame size of every good image in the kit


@dataclass(frozen=True)
class Outcome:
    """What one CLI run did: exit code (None: it raised), stdout+stderr text, and leftovers."""

    code: int | None
    text: str
    seconds: float


def run_cli(argv: list[str]) -> Outcome:
    """``engine.cli.main(argv)`` in-process with stdout/stderr captured; an escaping exception is
    recorded with its traceback (code None), ``SystemExit`` (argparse) gives its code."""
    import time

    from engine.cli import main

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    code: int | None
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - an escaping exception is what the table looks for
            code = None
            err.write(traceback.format_exc())
    return Outcome(code, out.getvalue() + err.getvalue(), time.perf_counter() - t0)


def leftovers(folder: Path) -> list[str]:
    """Every file or folder under ``folder`` (relative), sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path
    return path


def _intrinsics(path: Path, **over: object) -> Path:
    data: dict[str, object] = {"width": W, "height": H, "fx": 60.0, "fy": 60.0, "cx": 32.0, "cy": 24.0}
    data.update(over)
    path.write_text(json.dumps(data))
    return path


def _gaze(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _checkpoints(kit: Path) -> None:
    import torch

    from engine.weights import resolve

    state = torch.load(resolve("lite_medsam", None), map_location="cpu", weights_only=True)
    state = dict(state.get("model", state)) if isinstance(state, dict) else state
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone()
    state[key][0] = float("nan")
    torch.save(state, kit / "nan.pth")
    torch.save({"model": {"w": argparse.Namespace(a=1)}}, kit / "pickle.pth")  # needs weights_only=False
    (kit / "junk.pth").write_bytes(np.random.default_rng(1).bytes(5000))


def build_kit(kit: Path) -> dict[str, str]:
    """Write the kit's files under ``kit``; returns placeholder name -> path for the table."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (H, W, 3), np.uint8)
    img[12:36, 16:48] = (200, 40, 40)
    _png(kit / "img.png", img)
    big = cv2.resize(img, (640, 480), interpolation=cv2.INTER_NEAREST)
    _png(kit / "big.png", big)
    data = (kit / "big.png").read_bytes()
    (kit / "trunc.png").write_bytes(data[: len(data) // 2])
    _, jpg = cv2.imencode(".jpg", big)
    (kit / "trunc.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    _png(kit / "wide.png", np.full((1, 3000, 3), 128, np.uint8))
    (kit / "junk.png").write_bytes(rng.bytes(3000))
    (kit / "empty.png").write_bytes(b"")
    depth = np.full((H, W), 1000, np.uint16)
    _png(kit / "depth.png", depth)
    cv2.imwrite(str(kit / "depth_m.tiff"), np.full((H, W), 1.0, np.float32))  # float metres
    _png(kit / "depth8.png", np.full((H, W), 100, np.uint8))
    _png(kit / "depth_small.png", np.full((H // 2, W // 2), 1000, np.uint16))
    _png(kit / "depth_far.png", np.full((H, W), 5000, np.uint16))  # 5 km at --depth-scale-m 1
    _png(kit / "depth_rgb16.png", np.full((H, W, 3), 1000, np.uint16))
    mask = np.zeros((H, W), np.uint8)
    mask[12:36, 16:48] = 255
    _png(kit / "mask.png", mask)
    _intrinsics(kit / "cam.json")
    _intrinsics(kit / "cam_cx.json", cx=-5000.0, cy=1e12)
    _intrinsics(kit / "cam_f.json", fx=1e9, fy=1e9)
    _intrinsics(kit / "cam_fneg.json", fx=-60.0)
    (kit / "cam_nan.json").write_text('{"width": 64, "height": 48, "fx": NaN, "fy": 60, "cx": 32, "cy": 24}')
    (kit / "cam_junk.json").write_bytes(rng.bytes(200))
    (kit / "cam_list.json").write_text("[1, 2, 3]")
    (kit / "cam_keys.json").write_text('{"width": 64}')
    for i in range(3):  # a frame folder for `track`
        _png(kit / "frames" / f"{i:05d}.png", img)
    head = "timestamp_ns,x,y,confidence"
    _gaze(kit / "gaze_off.csv", ["# units: pixels", head] + [f"{i * 10**7},5000,5000,1" for i in range(50)])
    _gaze(kit / "gaze_norm_px.csv", ["# units: normalized", head] + [f"{i * 10**7},30,20,1" for i in range(50)])
    _gaze(kit / "gaze_header.csv", ["t,x,y", "1,2,3"])
    _gaze(kit / "gaze_order.csv", [head, "100,1,1,1", "50,1,1,1"])
    (kit / "gaze_junk.csv").write_bytes(b"\xff\xfe\x00" + rng.bytes(500))
    (kit / "pairs_junk.csv").write_bytes(b"\xff\xfe\x00" + rng.bytes(500))
    _gaze(kit / "pairs_nan.csv", ["tracker_x,tracker_y,scene_x,scene_y"] + ["nan,1,2,3"] * 6)
    _fuse_folder(kit / "rgbd", img, depth)
    (kit / "afile.txt").write_text("not a folder\n")
    (kit / "adir.png").mkdir(exist_ok=True)
    (kit / "adir.ply").mkdir(exist_ok=True)
    (kit / "adir.json").mkdir(exist_ok=True)
    _checkpoints(kit)
    names = {p.name.replace(".", "_"): str(p) for p in kit.iterdir()}
    names["kit"] = str(kit)
    return names


def _pose_log(path: Path, poses: list[np.ndarray]) -> None:
    rows = []
    for i, pose in enumerate(poses):
        rows.append(f"{i} {i} {i + 1}")
        rows += [" ".join(f"{v:.6f}" if np.isfinite(v) else "nan" for v in r) for r in pose]
    path.write_text("\n".join(rows) + "\n")


def _fuse_folder(root: Path, img: np.ndarray, depth: np.ndarray) -> None:
    for i in range(2):
        _png(root / "color" / f"{i}.png", img)
        _png(root / "depth" / f"{i}.png", depth)
    _pose_log(root / "traj.log", [np.eye(4), np.eye(4)])
    bad = np.eye(4)
    bad[0, 3] = np.nan
    _pose_log(root / "traj_nan.log", [np.eye(4), bad])
    _pose_log(root / "traj_short.log", [np.eye(4)])
    _pose_log(root / "traj_scaled.log", [np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0])])  # not rigid
