"""engine.lift.remote_view: view specs, the quaternion helper, and real Rerun / viser output.

Rerun: a recording saved to an .rrd in tmp_path is read back with ``rerun.chunk.RrdReader``
(rerun-sdk >= 0.30-ish; older ones: ``rerun.dataframe.load_recording``) and its entity paths, point
counts, box values and timelines are checked. viser: a real server on 127.0.0.1 (free port) serves
its page, and the scene handles hold the logged points and box. Each skips with the reason where
its package is absent (``pip install 'arsel[viz]'``).
"""

from __future__ import annotations

import importlib.util
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.lift import LiftResult, oriented_box
from engine.lift.remote_view import RerunView, ViewSpec, ViserView, open_view, quat_xyzw
from engine.types import CameraIntrinsics, Frame

REPO = Path(__file__).resolve().parents[1]
HAS_RERUN = importlib.util.find_spec("rerun") is not None
HAS_VISER = importlib.util.find_spec("viser") is not None
NO_RERUN = "rerun-sdk is not installed (pip install 'arsel[viz]')"
NO_VISER = "viser is not installed (pip install 'arsel[viz]' or 'arsel[test]')"
HW = (48, 64)
K = CameraIntrinsics(width=64, height=48, fx=60.0, fy=60.0, cx=32.0, cy=24.0, depth_scale_m=0.001)


def fake_lift(n: int, seed: int = 0, colors: bool = True) -> LiftResult:
    """An 'ok' lift of ``n`` points in a tilted 0.2 x 0.1 x 0.05 m slab 0.8 m in front of the camera."""
    rng = np.random.default_rng(seed)
    c, s = np.cos(0.5), np.sin(0.5)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    pts = rng.uniform(-0.5, 0.5, (n, 3)) * (0.2, 0.1, 0.05) @ rot.T + (0.0, 0.0, 0.8)
    center, box_rot, extent = oriented_box(pts)
    return LiftResult(
        "ok", pts, colors=rng.uniform(0, 1, (n, 3)) if colors else None, centroid_m=pts.mean(0),
        obb_center_m=center, obb_rotation=box_rot, obb_extent_m=extent, extent_m=np.sort(extent)[::-1],
    )  # fmt: skip


def frame(i: int) -> Frame:
    rgb = np.full((*HW, 3), 40 * i % 255, np.uint8)
    return Frame(i, 1_000_000_000 + i * 33_333_333, rgb, None, K)


def masks() -> dict[int, np.ndarray]:
    m1, m2 = np.zeros(HW, bool), np.zeros(HW, bool)
    m1[10:20, 10:30], m2[30:40, 40:60] = True, True
    return {1: m1, 2: m2}


# ---------------------------------------------------------------------------- specs, helpers
@pytest.mark.parametrize(
    "text, expected, exception",
    [
        ("open3d", ViewSpec("open3d"), None),
        ("none", ViewSpec("none"), None),
        ("rerun:run/lift.rrd", ViewSpec("rerun", "run/lift.rrd"), None),
        ("rerun:serve", ViewSpec("rerun", "serve"), None),
        ("rerun:connect", ViewSpec("rerun", "connect"), None),
        ("rerun:connect=", ViewSpec("rerun", "connect"), None),
        ("rerun:connect=rerun+http://10.0.0.2:9876/proxy", ViewSpec("rerun", "rerun+http://10.0.0.2:9876/proxy"), None),
        ("viser", ViewSpec("viser", "127.0.0.1", 8080), None),
        ("viser:9000", ViewSpec("viser", "127.0.0.1", 9000), None),
        ("viser:0.0.0.0:8081", ViewSpec("viser", "0.0.0.0", 8081), None),
        ("rerun", None, ValueError),
        ("rerun:lift.txt", None, ValueError),
        ("viser:port", None, ValueError),
        ("viser:70000", None, ValueError),
        ("open3d:1", None, ValueError),
        ("matplotlib", None, ValueError),
    ],
)
def test_view_spec_parse(text: str, expected: ViewSpec | None, exception: type | None) -> None:
    if exception is not None:
        with pytest.raises(exception, match="unknown view .* use open3d"):
            ViewSpec.parse(text)
    else:
        assert ViewSpec.parse(text) == expected
    assert open_view("none") is None


@pytest.mark.parametrize("seed", range(6))
def test_quat_xyzw_round_trips(seed: int) -> None:
    rng = np.random.default_rng(seed)
    if seed < 3:  # 180-degree turns about each axis: trace -1, the hard branch
        rot = np.diag([1.0, -1.0, -1.0])[np.ix_(np.roll(range(3), seed), np.roll(range(3), seed))]
    else:
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        rot = q * np.sign(np.linalg.det(q))
    x, y, z, w = quat_xyzw(rot)
    back = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip
    np.testing.assert_allclose(back, rot, atol=1e-12)


@pytest.mark.parametrize("module, cls, kwargs", [("rerun", RerunView, {"path": "x.rrd"}), ("viser", ViserView, {})])
def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, module: str, cls: type, kwargs: dict) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"pip install 'arsel\[viz\]'"):
        cls(**kwargs)


def test_views_refuse_failed_lifts(tmp_path: Path) -> None:
    if not HAS_RERUN:
        pytest.skip(NO_RERUN)
    view = RerunView(path=tmp_path / "x.rrd")
    try:
        with pytest.raises(ValueError, match="'ok' lifts only"):
            view.update(1, LiftResult("no_depth", np.zeros((0, 3))))
    finally:
        view.close()


# ---------------------------------------------------------------------------- rerun, read back
def read_rrd(path: Path) -> dict[str, list[Any]]:
    """``{entity_path: [record batch of each chunk]}`` of the first recording in an .rrd."""
    try:
        from rerun.chunk import RrdReader
    except ImportError:
        pytest.skip("this rerun-sdk has no rerun.chunk.RrdReader to read an .rrd back (needs a recent rerun-sdk)")
    out: dict[str, list[Any]] = defaultdict(list)
    for chunk in RrdReader(path).stream():
        out[chunk.entity_path].append(chunk.to_record_batch())
    return out


def column(batches: list[Any], name: str) -> list[Any]:
    """One column's rows over the chunks of an entity, in time order of the ``frame`` timeline."""
    rows = []
    for rb in batches:
        if name in rb.schema.names:
            frames = rb.column("frame").to_pylist() if "frame" in rb.schema.names else [None] * rb.num_rows
            rows += zip(frames, rb.column(name).to_pylist())
    return [v for _, v in sorted(rows, key=lambda fv: -1 if fv[0] is None else fv[0])]


@pytest.mark.skipif(not HAS_RERUN, reason=NO_RERUN)
def test_rerun_recording_holds_image_masks_gaze_clouds_and_boxes(tmp_path: Path) -> None:
    path = tmp_path / "lift.rrd"
    view = open_view(f"rerun:{path}")
    assert isinstance(view, RerunView) and view.address == str(path)
    a, b = fake_lift(300, seed=1), fake_lift(120, seed=2, colors=False)
    for i in range(3):
        view.log_frame(frame(i), masks() if i else {}, gaze_xy=(12.5, 15.0) if i != 1 else None)
        view.update(1, a if i < 2 else fake_lift(250, seed=3))
        if i == 2:
            view.update(2, b)
    view.remove_all()
    assert view.poll()
    view.close()

    ents = read_rrd(path)
    for e in ("/world", "/world/camera", "/world/camera/image", "/world/camera/image/mask",
              "/world/camera/image/gaze", "/world/objects/1/points", "/world/objects/1/box",
              "/world/objects/2/points", "/world/objects/2/box", "/world/objects"):  # fmt: skip
        assert e in ents, f"{e} missing from {sorted(ents)}"
    positions = column(ents["/world/objects/1/points"], "Points3D:positions")
    assert [len(p) for p in positions] == [300, 300, 250]
    np.testing.assert_allclose(np.array(positions[0]), a.points_m, atol=1e-6)  # float32 on disk
    colors = column(ents["/world/objects/2/points"], "Points3D:colors")
    assert len(colors[0]) == 120 and len(set(colors[0])) == 1  # no rgb: one object colour
    half = column(ents["/world/objects/2/box"], "Boxes3D:half_sizes")
    np.testing.assert_allclose(half[0][0], b.obb_extent_m / 2, rtol=1e-5)
    centers = column(ents["/world/objects/2/box"], "Boxes3D:centers")
    np.testing.assert_allclose(centers[0][0], b.obb_center_m, rtol=1e-5)
    assert len(column(ents["/world/camera/image"], "Image:buffer")) == 3
    mask_rows = column(ents["/world/camera/image/mask"], "SegmentationImage:buffer")
    assert len(mask_rows) == 2  # frames 1, 2 (frame 0 had no masks: a Clear)
    ids = np.frombuffer(bytes(mask_rows[0][0]), np.uint16).reshape(HW)
    assert set(np.unique(ids)) == {0, 1, 2} and (ids == 1).sum() == 200 and (ids == 2).sum() == 200
    assert column(ents["/world/camera/image/gaze"], "Points2D:positions") == [[[12.5, 15.0]], [[12.5, 15.0]]]
    names = ents["/world/objects/1/points"][0].schema.names
    assert "frame" in names and "time" in names
    image_chunks = [rb for rb in ents["/world/camera/image"] if "time" in rb.schema.names]
    times = sorted(t for rb in image_chunks for t in rb.column("time").cast("int64").to_pylist())
    assert times == [frame(i).timestamp_ns for i in range(3)]


# ---------------------------------------------------------------------------- viser, live server
@pytest.mark.skipif(not HAS_VISER, reason=NO_VISER)
def test_viser_server_serves_clouds_and_boxes() -> None:
    view = open_view("viser:127.0.0.1:0")
    assert isinstance(view, ViserView)
    try:
        port = view.server.get_port()
        assert port > 0 and view.address == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(view.address, timeout=10) as resp:
            assert resp.status == 200 and b"<html" in resp.read().lower()
        a = fake_lift(500, seed=4)
        view.log_frame(frame(1), masks(), gaze_xy=(20.0, 20.0))
        view.update(1, a)
        cloud, box = view.clouds[1], view.boxes[1]
        assert cloud.name == "/camera/objects/1/points" and box.name == "/camera/objects/1/box"
        np.testing.assert_allclose(cloud.points, a.points_m.astype(np.float32))
        assert cloud.colors.shape == (500, 3) and cloud.colors.dtype == np.uint8
        np.testing.assert_allclose(box.dimensions, a.obb_extent_m, rtol=1e-6)
        np.testing.assert_allclose(box.position, a.obb_center_m, rtol=1e-6)
        view.log_frame(frame(2), {})
        view.update(1, fake_lift(50, seed=5))
        assert view.clouds[1].points.shape == (50, 3)
        view.remove_all()
        assert view.clouds == {} and view.poll()
    finally:
        view.close()


# ---------------------------------------------------------------------------- the demo, headless
@pytest.mark.skipif(not HAS_RERUN, reason=NO_RERUN)
def test_demo_headless_writes_a_rerun_recording(tmp_path: Path) -> None:
    from engine.stream.engine import StreamEngine
    from engine.stream.scheduler import KeyframePolicy
    from tests.stream_fakes import FakeSegmenter, fake_spec

    spec = importlib.util.spec_from_file_location("realsense_lift_view_demo", REPO / "demos" / "realsense_lift.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo  # dataclasses resolve their module
    spec.loader.exec_module(demo)
    with pytest.raises(SystemExit):
        demo.parse_args(["--headless", "--out", str(tmp_path), "--view", "open3d"])
    assert demo.parse_args(["--headless", "--out", str(tmp_path)]).view == ViewSpec("none")

    rrd = tmp_path / "lift.rrd"
    engine = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy(interval=3))
    argv = ["--synthetic", "4", "--headless", "--out", str(tmp_path / "run"), "--view", f"rerun:{rrd}"]
    assert demo.main(argv, engine) == 0
    ents = read_rrd(rrd)
    n_pts = [len(p) for p in column(ents["/world/objects/1/points"], "Points3D:positions")]
    assert len(n_pts) == 3 and min(n_pts) > 500  # 4 pushes -> 3 frames, each lifted
    assert len(column(ents["/world/camera/image/mask"], "SegmentationImage:buffer")) == 3
    assert "/world/camera" in ents and "/world/objects/1/box" in ents
