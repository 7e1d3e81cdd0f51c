"""Drift guards on real frames: the guard's decisions on DAVIS masks, a point start that no longer
decays, an occlusion (the swan painted over on real frames) that becomes ``lost`` then
``reacquired``, status counters that add up, and J floors for box/point/gaze starts (LiteMedSAM)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.stream.engine import EngineConfig, StreamEngine
from engine.stream.evaluate import (
    START_KINDS,
    CachingBackend,
    box_of,
    davis_annotations,
    evaluate_davis,
    jaccard,
    start_prompt,
    worst_area_loss,
)
from engine.stream.events import Prompt
from engine.stream.guards import Expectation, GuardConfig, check, colour_hist, correction_boxes, recentre
from engine.stream.proposals import ProposalConfig
from engine.stream.results import TRACK_STATUSES, WIRE_STATUS, MaskResult
from engine.stream.scheduler import KeyframePolicy
from engine.stream.sources import ArraySource, folder_images
from engine.stream.tracker import interior_point_xy


def _frames(folder: Path, n: int) -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in folder_images(folder / "JPEGImages")[:n]]


# the point proposals of issue 18's report: squares ranked by predicted IoU x stability (half the swan)
SQUARES = ProposalConfig(scales=(0.1, 0.18, 0.3, 0.45, 0.65), aspects=(1.0,), min_fill=0.0, contrast=False,
                         edge_penalty=False, whole_band=1.0)


def _engine(backend: CachingBackend, guard: GuardConfig | None = None,
            proposals: ProposalConfig | None = None) -> StreamEngine:
    from engine.models.registry import get_spec

    config = EngineConfig(guard=guard or GuardConfig(), proposals=proposals or ProposalConfig())
    return StreamEngine(backend, get_spec("lite_medsam"), KeyframePolicy(interval=5), motion="homography",
                        config=config)


# --- the guard's decisions on real masks (no model) --------------------------------------------------
def _expectation(truth: np.ndarray, rgb: np.ndarray) -> Expectation:
    return Expectation(truth, interior_point_xy(truth), float(truth.sum()), colour_hist(rgb, truth))


@pytest.mark.parametrize(
    ("change", "passes", "why"),
    [
        ("next_frame", True, "the swan one frame later"),
        ("eroded", False, "area ratio"),
        ("shifted", False, "IoU and anchor"),
        ("grey", False, "colours of an occluder"),
    ],
)
def test_guard_check_on_blackswan_masks(data_dir: Path, change: str, passes: bool, why: str) -> None:
    folder = data_dir / "davis_blackswan"
    truth = davis_annotations(folder)[:2]
    rgbs = _frames(folder, 2)
    exp = _expectation(truth[0], rgbs[0])
    mask, rgb = truth[1], rgbs[1]
    if change == "eroded":  # a mask that shrank to about half: the decay this guard exists for
        mask = cv2.erode(truth[0].astype(np.uint8), np.ones((3, 3), np.uint8), iterations=12).astype(bool)
        assert 0.3 < mask.sum() / truth[0].sum() < 0.75
    elif change == "shifted":
        mask = np.roll(truth[0], 300, axis=1)
    elif change == "grey":
        rgb = rgbs[0].copy()
        rgb[truth[0]] = 128
        mask = truth[0]
    chk = check(mask, exp, GuardConfig(), rgb=rgb)
    assert chk.passed is passes, (why, chk)
    if change == "eroded":
        assert chk.area_ratio < GuardConfig().min_area_ratio and chk.anchor_inside
    if change == "grey":
        assert chk.colour_dist > GuardConfig().max_colour_dist and chk.iou == 1.0


def test_correction_boxes_and_recentre(data_dir: Path) -> None:
    truth = davis_annotations(data_dir / "davis_blackswan")[0]
    rgb = _frames(data_dir / "davis_blackswan", 1)[0]
    cfg = GuardConfig()
    boxes = correction_boxes(_expectation(truth, rgb), cfg, truth.shape)
    assert boxes.shape == (len(cfg.margins) + len(cfg.anchor_scales) + len(cfg.anchor_squares), 4)
    np.testing.assert_allclose(boxes[0], box_of(truth))  # margin 0: the expected box itself
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    edge = np.argwhere(truth)[0][::-1].astype(np.float32)  # a pixel on the mask's border
    moved = recentre(truth, edge)
    dist = cv2.distanceTransform(truth.astype(np.uint8), cv2.DIST_L2, 3)
    assert dist[int(moved[1]), int(moved[0])] > dist[int(edge[1]), int(edge[0])] + 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_area_ratio": 1.2}, "min_area_ratio"),
        ({"fit_area_ratio": (0.9, 2.0)}, "fit_area_ratio"),
        ({"min_iou": 1.5}, "min_iou"),
        ({"ref_rate": 0.0}, "ref_rate"),
        ({"strategy": "magic"}, "strategy must be 'auto'"),
        ({"margins": ()}, "margins"),
    ],
)
def test_guard_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GuardConfig(**kwargs)


def test_wire_status_maps_every_status() -> None:
    assert set(WIRE_STATUS) >= set(TRACK_STATUSES) | {"no_embedding", "outside"}
    res = MaskResult(1, 0, 0, np.zeros((2, 2), bool), 0.0, "drift_corrected")
    assert res.found and res.wire_status == "tracked"
    assert not MaskResult(1, 0, 0, np.zeros((2, 2), bool), 0.0, "lost").found


def test_start_prompts_from_the_first_annotation(data_dir: Path) -> None:
    truth = davis_annotations(data_dir / "davis_blackswan")[0]
    prompts = {k: start_prompt(k, truth) for k in START_KINDS}
    np.testing.assert_allclose(prompts["box"].box_xyxy, box_of(truth))
    point, gaze = prompts["point"].points_xy[0], prompts["gaze"].points_xy[0]
    assert truth[int(point[1]), int(point[0])] and prompts["gaze"].source == "gaze"
    assert 0 < np.hypot(*(gaze - point)) < 20  # jitter and drift moved it, the dwell averaged them
    with pytest.raises(ValueError, match="start must be one of"):
        start_prompt("wave", truth)  # type: ignore[arg-type]


def test_worst_area_loss_only_counts_stable_truth() -> None:
    truth = np.full(12, 1000)
    area = np.array([1000] * 5 + [400] * 7)
    assert worst_area_loss(area, truth) == pytest.approx(0.6)
    truth_shrinking = np.array([1000] * 5 + [400] * 7)  # the object itself shrank: not drift
    assert worst_area_loss(area, truth_shrinking) == 0.0


# --- on real frames with LiteMedSAM ----------------------------------------------------------------
@pytest.mark.slow
def test_shrinking_point_start_is_corrected_and_counters_add_up(cached_backend: CachingBackend,
                                                                  data_dir: Path) -> None:
    folder = data_dir / "davis_blackswan"
    truth = davis_annotations(folder)[:12]
    frames = _frames(folder, 12)
    areas = {}
    for name, guard in (("off", GuardConfig(enabled=False)), ("on", GuardConfig())):
        with _engine(cached_backend, guard, SQUARES) as eng:  # the half-swan start that decayed
            eng.add_object(start_prompt("point", truth[0]))
            results = [r.objects[0] for r in eng.run(ArraySource(frames))]
        areas[name] = np.array([r.mask.sum() for r in results], float)
        counts = eng.stats.track_status
        assert sum(counts.values()) == len(frames) == eng.stats.frames, counts
        assert [r.status for r in results].count("ok") == counts["ok"]
        if name == "on":
            statuses = [r.status for r in results]
            assert "drift_corrected" in statuses and "lost" not in statuses, statuses
            assert all(np.isfinite(r.area_ratio) for r in results[1:])
    off, on = areas["off"] / areas["off"][0], areas["on"] / areas["on"][0]
    assert off[-1] < 0.5, off  # without the guards the point start decays (issue 18: 19.9k -> 2.7k px)
    assert on.min() > 0.6, on  # with them it never loses half of its area


def _paint_over(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A grey board held in front of the object: its box grown by 20 % each side, painted over."""
    x0, y0, x1, y1 = box_of(mask).astype(int)
    dx, dy = (x1 - x0) // 5, (y1 - y0) // 5
    out = rgb.copy()
    out[max(0, y0 - dy):y1 + dy, max(0, x0 - dx):x1 + dx] = 128
    return out


@pytest.mark.slow
def test_occlusion_becomes_lost_then_reacquired(cached_backend: CachingBackend, data_dir: Path) -> None:
    folder = data_dir / "davis_blackswan"
    truth = davis_annotations(folder)[:24]
    occluded = range(7, 18)
    frames = [_paint_over(f, truth[i]) if i in occluded else f for i, f in enumerate(_frames(folder, 24))]
    with _engine(cached_backend) as eng:
        eng.add_object(Prompt.box(box_of(truth[0])))
        results = [r.objects[0] for r in eng.run(ArraySource(frames))]
    statuses = [r.status for r in results]
    assert all(s in ("ok", "drift_corrected") for s in statuses[:7]), statuses
    assert all(s == "lost" for s in statuses[7:18]), statuses  # never a mask on the board
    assert not any(r.mask.any() for r in results[7:18])
    first_back = next(i for i, s in enumerate(statuses) if s == "reacquired")
    assert 18 <= first_back <= 20, statuses  # the first keyframe after the board went
    assert all(s != "lost" for s in statuses[first_back:]), statuses
    assert np.mean([jaccard(r.mask, truth[i]) for i, r in enumerate(results) if i >= first_back]) > 0.35
    counts = eng.stats.track_status
    assert counts["lost"] == 11 + (first_back - 18) and counts["reacquired"] == 1
    assert sum(counts.values()) == len(frames)


@pytest.mark.slow
def test_blackswan_point_and_gaze_starts_hold_j(cached_backend: CachingBackend, data_dir: Path,
                                               record_property: pytest.RecordProperty) -> None:
    folder = data_dir / "davis_blackswan"
    js = {}
    for start in START_KINDS:
        with _engine(cached_backend) as eng:
            res = evaluate_davis(eng, folder, start=start)
        js[start] = res.mean_j_after_first
        record_property(f"mean_j_1_49_{start}", round(js[start], 4))
        assert worst_area_loss(res.area_px, res.truth_area_px) < 0.5, start
    print(f"\nblackswan J(1-49): {js}")
    assert js["box"] >= 0.476, js  # the box start before the guards (issue 18)
    assert js["point"] >= 0.44 and js["gaze"] >= 0.44, js  # before the guards: 0.059
    assert js["point"] >= 0.9 * js["box"] and js["gaze"] >= 0.9 * js["box"], js  # issue 18's target


@pytest.mark.slow
def test_car_shadow_box_start_no_longer_decays(cached_backend: CachingBackend, data_dir: Path) -> None:
    folder = data_dir / "davis2016" / "car-shadow"
    with _engine(cached_backend) as eng:
        res = evaluate_davis(eng, folder)
    assert len(res.j_per_frame) == 40
    assert res.mean_j_after_first >= 0.5, res.mean_j_after_first  # before the guards: 0.387 (area 0.9 -> 0.04)
    assert res.area_px[-1] >= 0.5 * res.truth_area_px[-1]  # the car drives off (41.8k -> 12.1k px); before: 0.04


@pytest.mark.slow
def test_car_shadow_point_start_frames_the_car_and_keeps_it(cached_backend: CachingBackend, data_dir: Path) -> None:
    folder = data_dir / "davis2016" / "car-shadow"
    with _engine(cached_backend) as eng:
        res = evaluate_davis(eng, folder, start="point")
    assert res.j_per_frame[0] > 0.5, res.j_per_frame[0]  # squares picked a door panel: 0.02
    assert worst_area_loss(res.area_px, res.truth_area_px) < 0.5  # squares: lost for good (1.0)
    assert "lost" not in res.statuses, res.status_counts()
    assert res.mean_j_after_first >= 0.45, res.mean_j_after_first  # squares: 0.004
