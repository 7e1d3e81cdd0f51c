"""RealSense source on the SDK's real code paths, with ``rs.software_device`` instead of a camera.

Frames go through a software device, an ``rs.syncer``, the SDK's own filters and ``rs.align``;
recordings are written by ``rs.recorder`` and played back by ``rs.pipeline``. Only the live smoke
test needs a camera (marker ``realsense``; skipped with the reason when none is attached).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

rs = pytest.importorskip("pyrealsense2")

from calibration.intrinsics import load_intrinsics  # noqa: E402
from engine.realsense import (  # noqa: E402
    DepthFilterConfig,
    FrameProcessor,
    RealSenseConfig,
    RealSenseSource,
    SoftwareCamera,
    SyntheticRealSense,
    intrinsics_from_rs,
    rs_intrinsics_from,
    save_rs_intrinsics,
)
from engine.stream.sources import FrameSource, SourceError  # noqa: E402
from engine.types import CameraIntrinsics  # noqa: E402
from tests.script_helpers import load_script  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
INTR = CameraIntrinsics(64, 48, 50.0, 50.0, 31.5, 23.5, 0.001)
OFF = DepthFilterConfig.off()


def _rgb(intr: CameraIntrinsics) -> np.ndarray:
    return np.full((intr.height, intr.width, 3), 90, np.uint8)


def _process(cam: SoftwareCamera, depth_raw: np.ndarray, proc: FrameProcessor | None = None) -> Any:
    """Push until the syncer hands out a depth+colour frameset (the first push only primes it)."""
    proc = proc or FrameProcessor(OFF)
    for _ in range(3):
        fs = cam.push(depth_raw, _rgb(cam.color_intrinsics))
        if fs is not None:
            return proc.process(fs)
    raise AssertionError("the software device produced no depth+colour frameset")


def _hole_columns(depth_raw: np.ndarray) -> set[int]:
    """Columns that are zero in more than 90 % of the rows."""
    return set(np.flatnonzero((depth_raw == 0).mean(axis=0) > 0.9).tolist())


def _align_artefacts(cam: SoftwareCamera) -> set[int]:
    """Empty columns ``rs.align`` leaves in a hole-free plane (its pixel-footprint rounding drops
    whole columns where depth and colour pixels map onto half-pixel ties: measured 2-4 of 64)."""
    cols = _hole_columns(_process(cam, np.full((48, 64), 1000, np.uint16)).depth_raw)
    assert len(cols) <= 6
    return cols


# --- the processing core -------------------------------------------------------------------------
@pytest.mark.parametrize("depth_scale_m", [0.001, 0.0001])
def test_depth_plane_comes_out_in_metres(depth_scale_m: float) -> None:
    intr = CameraIntrinsics(64, 48, 50.0, 50.0, 31.5, 23.5, depth_scale_m)
    raw = np.full((48, 64), round(1.2345 / depth_scale_m), np.uint16)
    with SoftwareCamera(intr) as cam:
        out = _process(cam, raw)
    assert out.intrinsics.depth_scale_m == depth_scale_m  # read from the sensor's depth_units
    assert out.depth_raw.dtype == np.uint16 and out.depth_raw.shape == (48, 64)
    valid = out.depth_raw > 0
    assert valid.mean() > 0.8  # align's rounding holes, see _align_artefacts
    np.testing.assert_allclose(out.depth_raw[valid] * out.intrinsics.depth_scale_m, 1.2345, atol=depth_scale_m)
    assert out.rgb.shape == (48, 64, 3) and out.rgb.dtype == np.uint8 and (out.rgb == 90).all()


def test_align_identity_keeps_depth_and_hole() -> None:
    raw = np.full((48, 64), 1000, np.uint16)
    raw[:, 32:] = 2000  # two planes: a depth step must stay where it is
    raw[:, 20:30] = 0
    with SoftwareCamera(INTR) as cam:
        artefacts = _align_artefacts(cam)
        out = _process(cam, raw)
    valid = out.depth_raw > 0
    np.testing.assert_array_equal(out.depth_raw[valid], raw[valid])  # no pixel moved or changed
    assert _hole_columns(out.depth_raw) == set(range(20, 30)) | artefacts


@pytest.mark.parametrize(("tx_m", "shift_px"), [(0.04, 2), (-0.06, -3)])
def test_align_extrinsic_translation_shifts_pixels(tx_m: float, shift_px: int) -> None:
    # depth -> colour translation tx at Z = 1 m: u_colour = u_depth + fx * tx / Z = u + 50 * tx
    raw = np.full((48, 64), 1000, np.uint16)
    raw[:, 20:30] = 0
    pose = np.eye(4)
    pose[0, 3] = tx_m
    with SoftwareCamera(INTR, depth_to_color=pose) as cam:
        artefacts = _align_artefacts(cam)
        out = _process(cam, raw)
    assert _hole_columns(out.depth_raw) == set(range(20 + shift_px, 30 + shift_px)) | artefacts
    assert set(np.unique(out.depth_raw)) <= {0, 1000}


def test_align_to_larger_colour_stream() -> None:
    color = CameraIntrinsics(128, 96, 100.0, 100.0, 63.5, 47.5)
    with SoftwareCamera(INTR, color) as cam:
        out = _process(cam, np.full((48, 64), 1500, np.uint16))
    assert out.depth_raw.shape == (96, 128) and out.rgb.shape == (96, 128, 3)
    assert (out.depth_raw[1:-1, 1:-1] == 1500).all()
    assert (out.intrinsics.width, out.intrinsics.fx, out.intrinsics.cx) == (128, 100.0, 63.5)


def test_align_to_depth_resamples_colour() -> None:
    color = CameraIntrinsics(128, 96, 100.0, 100.0, 63.5, 47.5)
    with SoftwareCamera(INTR, color) as cam:
        out = _process(cam, np.full((48, 64), 1500, np.uint16), FrameProcessor(OFF, align_to_color=False))
    assert out.depth_raw.shape == (48, 64) and out.rgb.shape == (48, 64, 3)
    assert out.intrinsics == INTR


@pytest.mark.parametrize(("hole_filling", "zeros_left"), [(True, 0), (False, 16)])
def test_hole_filling_fills_a_zero_hole(hole_filling: bool, zeros_left: int) -> None:
    raw = np.full((48, 64), 1200, np.uint16)
    raw[20:24, 30:34] = 0
    with SoftwareCamera(INTR) as cam:
        out = _process(cam, raw, FrameProcessor(DepthFilterConfig(spatial=False, temporal=False,
                                                                  hole_filling=hole_filling), align_to_color=False))
    assert int((out.depth_raw[20:24, 30:34] == 0).sum()) == zeros_left
    assert (out.depth_raw[20:24, 30:34][out.depth_raw[20:24, 30:34] > 0] == 1200).all()


def test_spatial_temporal_keep_a_constant_plane_and_smooth_noise() -> None:
    proc = FrameProcessor(DepthFilterConfig(), align_to_color=False)  # default chain, in disparity
    with SoftwareCamera(INTR) as cam:
        for _ in range(4):
            out = _process(cam, np.full((48, 64), 1500, np.uint16), proc)
            assert (out.depth_raw == 1500).all()
    rng = np.random.default_rng(0)
    noisy = (1500 + rng.normal(0, 4, (48, 64))).astype(np.uint16)  # within the filters' delta
    with SoftwareCamera(INTR) as cam:
        raw_std = float(_process(cam, noisy, FrameProcessor(OFF, align_to_color=False)).depth_raw.std())
        smooth_std = float(_process(cam, noisy, FrameProcessor(DepthFilterConfig(), align_to_color=False)).depth_raw.std())
    assert smooth_std < 0.7 * raw_std


def test_intrinsics_read_back_equal_those_given() -> None:
    color = CameraIntrinsics(96, 72, 81.25, 80.5, 47.25, 35.75)
    with SoftwareCamera(INTR, color) as cam:
        out = _process(cam, np.full((48, 64), 900, np.uint16))
    assert out.intrinsics == CameraIntrinsics(96, 72, 81.25, 80.5, 47.25, 35.75, 0.001)


@pytest.mark.parametrize(
    ("model", "coeffs", "dist", "warns"),
    [
        ("none", [0, 0, 0, 0, 0], (), False),
        ("brown_conrady", [0.1, -0.05, 0.001, 0.002, 0.01], (0.1, -0.05, 0.001, 0.002, 0.01), False),
        ("inverse_brown_conrady", [0, 0, 0, 0, 0], (), False),
        ("inverse_brown_conrady", [0.1, 0, 0, 0, 0], (), True),
    ],
)
def test_intrinsics_from_rs_distortion(model: str, coeffs: list[float], dist: tuple, warns: bool, tmp_path: Path) -> None:
    r = rs.intrinsics()
    r.width, r.height, r.fx, r.fy, r.ppx, r.ppy = 640, 480, 615.5, 615.25, 321.5, 238.75
    r.model, r.coeffs = getattr(rs.distortion, model), coeffs
    if warns:
        with pytest.warns(UserWarning, match="no OpenCV equivalent"):
            got = intrinsics_from_rs(r, 0.00025)
    else:
        got = intrinsics_from_rs(r, 0.00025)
    assert got == CameraIntrinsics(640, 480, 615.5, 615.25, 321.5, 238.75, 0.00025, dist)
    if not warns:  # the shared JSON format: save here, load with calibration, round trip back to rs
        path = save_rs_intrinsics(tmp_path / "rs.json", r, 0.00025)
        assert load_intrinsics(path) == got
        back = rs_intrinsics_from(got)
        assert (back.width, back.fx, back.ppy) == (640, 615.5, 238.75)
        np.testing.assert_allclose(back.coeffs, list(dist) or [0] * 5, rtol=1e-6)


def test_processor_rejects_a_single_frame() -> None:
    with SoftwareCamera(INTR) as cam:
        cam.push(np.full((48, 64), 900, np.uint16), _rgb(INTR))
        fs = cam.push(np.full((48, 64), 900, np.uint16), _rgb(INTR))
        with pytest.raises(TypeError, match="rs.frameset"):
            FrameProcessor(OFF).process(fs.get_depth_frame())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DepthFilterConfig(decimation=9), "decimation must be in"),
        (lambda: DepthFilterConfig(spatial_alpha=0.1), "spatial_alpha"),
        (lambda: DepthFilterConfig(hole_filling_mode=3), "hole_filling_mode"),
        (lambda: RealSenseConfig(record_to=Path("x.mp4")), "record_to must end in"),
        (lambda: RealSenseConfig(max_missed_frames=0), "max_missed_frames"),
        (lambda: RealSenseConfig(color_wh=(0, 480)), "color_wh"),
    ],
)
def test_config_errors(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# --- recording and playback ----------------------------------------------------------------------
def _record(path: Path, count: int, intr: CameraIntrinsics = INTR) -> None:
    with SoftwareCamera(intr, record_to=path) as cam:
        for i in range(count):
            cam.push(np.full((intr.height, intr.width), 1000 + i, np.uint16), _rgb(intr))


def test_recorded_software_device_plays_back_through_the_source(tmp_path: Path) -> None:
    path = tmp_path / "session.db3"
    _record(path, 6)
    src = RealSenseSource(RealSenseConfig(filters=OFF, timeout_ms=200), bag=path)
    assert isinstance(src, FrameSource) and src.device_name == "arsel software camera"
    assert src.intrinsics == INTR and src.depth_scale_m == 0.001
    frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4, 5]  # every recorded frame, in order
    for f in frames:
        n = round(f.timestamp_ns / 1e9 * 30)  # recorded frame number (stamped n / 30 s)
        assert f.depth_raw.shape == (48, 64) and np.median(f.depth_raw) == 1000 + n
        assert f.intrinsics == INTR
    assert src.stats.to_dict() == {"delivered": 6, "dropped": 0, "late": 0, "bad": 0, "failed_reads": 0,
                                   "no_depth": 0}


def test_open_source_plays_a_recording(tmp_path: Path) -> None:
    """`arsel track FILE.db3` / `open_source` route RealSense recordings to RealSenseSource."""
    from engine.stream.sources import open_source

    path = tmp_path / "clip.db3"
    _record(path, 3)
    src = open_source(str(path))
    assert isinstance(src, RealSenseSource)
    depths = [int(np.median(f.depth_raw)) for f in src]
    assert len(depths) == 3 and depths == sorted(depths) and depths[0] >= 1000


def test_recording_to_bag_suffix(tmp_path: Path) -> None:
    """librealsense 2.59 records ROS2 .db3 only; older versions wrote ROS1 .bag."""
    path = tmp_path / "session.bag"
    try:
        _record(path, 3)
    except ValueError as exc:
        assert "db3" in str(exc) and not path.exists()
    else:  # an SDK that still writes .bag: it must play back too
        assert len(list(RealSenseSource(RealSenseConfig(filters=OFF, timeout_ms=200), bag=path))) == 3


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("missing.db3", None, FileNotFoundError, "recording not found"),
        ("clip.mp4", b"x", SourceError, "not a RealSense recording"),
        ("broken.db3", b"not a database", SourceError, "cannot play"),
    ],
)
def test_bad_recording_errors(tmp_path: Path, name: str, content: bytes | None, error: type, match: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match):
        RealSenseSource(bag=path)


def test_record_to_with_playback_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="record_to is for live cameras"):
        RealSenseSource(RealSenseConfig(record_to=tmp_path / "x.db3"), bag=tmp_path / "in.db3")


# --- disconnects, missing depth, dropped frames (a pipeline double serving real framesets) -------
class FakePipeline:
    """``rs.pipeline`` double: serves the given framesets, ``None`` items raise like a timeout."""

    def __init__(self, cam: SoftwareCamera, items: list[Any]) -> None:
        self.cam, self.items, self.stopped = cam, list(items), False

    def start(self, _config: Any) -> Any:
        device = type("Dev", (), {"supports": lambda self, k: False, "query_sensors": lambda self: []})()
        streams = list(self.cam.profiles)
        return type("Profile", (), {"get_device": lambda self: device, "get_streams": lambda self: streams})()

    def wait_for_frames(self, timeout_ms: int) -> Any:
        item = self.items.pop(0) if self.items else None
        if item is None:
            raise RuntimeError(f"Frame didn't arrive within {timeout_ms}")
        return item

    def stop(self) -> None:
        self.stopped = True


def _framesets(cam: SoftwareCamera, count: int) -> list[Any]:
    out = []
    while len(out) < count:
        fs = cam.push(np.full((48, 64), 1000, np.uint16), _rgb(INTR))
        if fs is not None:
            out.append(fs)
    return out


def test_disconnect_raises_after_max_missed_frames() -> None:
    with SoftwareCamera(INTR) as cam:
        fs = _framesets(cam, 3)
        # 2 misses then a frame (the count restarts), then the camera is gone for good
        pipe = FakePipeline(cam, [fs[0], None, None, fs[1], fs[2]])
        src = RealSenseSource(RealSenseConfig(filters=OFF, max_missed_frames=3, timeout_ms=5), pipeline=pipe)
        got = []
        with pytest.raises(SourceError, match=r"RealSense camera disconnected: no frames for 3 .*USB"):
            for frame in src:
                got.append(frame)
    assert len(got) == 3 and src.stats.failed_reads == 5 and src.stats.delivered == 3
    assert pipe.stopped  # released in the generator's finally


def test_missing_depth_is_yielded_and_counted_and_gaps_are_dropped() -> None:
    with SoftwareCamera(INTR) as cam:
        fs = _framesets(cam, 4)  # frame numbers 1..4
        cam.push(None, _rgb(INTR))  # frame 5 lost its depth: the syncer holds its colour ...
        cam.push(np.full((48, 64), 1000, np.uint16), _rgb(INTR))  # ... until frame 6 shows it
        colour_only = cam.framesets[0]
        assert colour_only.get_color_frame().get_frame_number() == 5 and not colour_only.get_depth_frame()
        pipe = FakePipeline(cam, [fs[0], fs[1], fs[3], colour_only])  # frame 3 never arrives
        src = RealSenseSource(RealSenseConfig(filters=OFF, max_missed_frames=1, timeout_ms=5), pipeline=pipe)
        frames = []
        with pytest.raises(SourceError):
            for frame in src:
                frames.append(frame)
    assert [f.index for f in frames] == [0, 1, 3, 4]
    assert frames[-1].depth_raw is None and frames[-1].intrinsics == INTR
    assert all(f.depth_raw is not None for f in frames[:-1])
    assert (src.stats.no_depth, src.stats.dropped, src.stats.delivered) == (1, 1, 4)


def test_no_camera_gives_one_clear_error() -> None:
    if len(rs.context().query_devices()):
        pytest.skip("hardware: a RealSense camera is attached; the no-device path cannot be exercised")
    with pytest.raises(SourceError, match=r"no RealSense camera found: connect .* USB 3 .*--bag FILE"):
        RealSenseSource()


@pytest.mark.realsense
def test_live_camera_smoke() -> None:
    if not len(rs.context().query_devices()):
        pytest.skip("no RealSense camera attached (rs.context().query_devices() is empty)")
    with RealSenseSource(RealSenseConfig(max_missed_frames=10)) as src:
        frames = [f for _, f in zip(range(5), src)]
    assert len(frames) == 5
    f = frames[-1]
    assert f.rgb.shape == (480, 640, 3) and f.depth_raw.shape == (480, 640) and f.depth_raw.dtype == np.uint16
    assert f.intrinsics is not None and 0 < f.intrinsics.depth_scale_m < 0.01


def test_import_engine_does_not_import_pyrealsense2() -> None:
    code = "import sys, engine, engine.realsense; assert 'pyrealsense2' not in sys.modules, 'imported eagerly'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --- the demo, headless, on a recording made here ------------------------------------------------
def _load_demo() -> Any:
    return load_script("demos/realsense_lift.py", "realsense_lift_demo")


def test_demo_headless_lifts_the_sphere_from_a_recording(tmp_path: Path) -> None:
    import open3d as o3d

    from engine.stream.engine import StreamEngine
    from engine.stream.scheduler import KeyframePolicy
    from tests.stream_fakes import FakeSegmenter, fake_spec

    bag = tmp_path / "sphere.db3"
    list(SyntheticRealSense(7, record_to=bag))  # sphere r = 0.1 m, front at 0.8 m, 240x320
    out = tmp_path / "run"
    engine = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy(interval=3))
    demo = _load_demo()
    assert demo.main(["--bag", str(bag), "--headless", "--out", str(out), "--box", "95,80,175,160"], engine) == 0

    report = json.loads((out / "objects.json").read_text())
    assert report["frames"] == 7 and report["source_stats"]["delivered"] == 7
    obj = report["objects"]["1"]
    assert obj["lift_statuses"] == {"ok": 7}
    extent = np.array(obj["extent_m"])
    assert 0.15 < extent[0] < 0.21 and 0.15 < extent[1] < 0.21  # the visible cap, eroded by 2 px
    assert 0.02 < extent[2] < 0.1
    assert 0.8 < obj["centroid_m"][2] < 0.9
    pcd = o3d.io.read_point_cloud(str(out / obj["ply"]))
    pts = np.asarray(pcd.points)
    assert len(pts) == obj["num_points"] > 500 and pcd.has_colors()
    assert pts[:, 2].min() > 0.79 and pts[:, 2].max() < 0.91  # no wall (1.5 m) points
    green = np.asarray(pcd.colors)
    assert (green[:, 1] > green[:, 0]).all()
    assert load_intrinsics(out / "intrinsics.json").width == 320
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    cap.release()
    assert cv2.imread(str(out / "overlay_last.png")).shape == (240, 320, 3)
