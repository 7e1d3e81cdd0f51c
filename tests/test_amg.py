"""Segment everything (``engine.amg``): each filter stage by hand, parity with segment-anything's
``SamAutomaticMaskGenerator`` (MobileSAM at seeded random weights), the box-grid path on the real
LiteMedSAM weights, and ``arsel everything``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.amg import (
    AutoMaskConfig,
    box_grid,
    box_nms,
    generate_masks,
    point_grid,
    remove_small_regions,
    stability_score,
)
from engine.backends.torch_backend import TorchBackend
from engine.cli import main
from engine.models.registry import get_spec, load_model
from engine.predictor import Predictor
from tests.refs import medsam_checkpoint, official_mobile_sam


# --- filter stages ----------------------------------------------------------------------------
def test_stability_score_by_hand() -> None:
    logits = np.array([[[3.0, 0.5, -0.5], [-2.0, 1.5, 0.9], [-1.0, -3.0, 2.0]]])
    # > +1: 3.0, 1.5, 2.0 -> 3 pixels; > -1: 3.0, 0.5, -0.5, 1.5, 0.9, 2.0 -> 6 (-1.0 is not > -1)
    assert stability_score(logits, 1.0).tolist() == [0.5]
    # threshold 0.5, offset 1: > 1.5 -> 3.0, 2.0; > -0.5 -> 3.0, 0.5, 1.5, 0.9, 2.0
    assert stability_score(logits, 1.0, threshold=0.5).tolist() == [0.4]
    assert stability_score(np.full((2, 4, 4), -5.0), 1.0).tolist() == [0.0, 0.0]  # empty: 0, no NaN


def test_box_nms_keeps_higher_scoring_of_overlapping_pair() -> None:
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [50, 50, 59, 59]], np.float32)
    # SAM's (torchvision's) convention, no +1: areas 9x9 = 81, intersection 8x8 = 64,
    # IoU 64 / (81 + 81 - 64) = 0.653 (inclusive-pixel areas would give 81 / 119 = 0.68)
    assert box_nms(boxes, np.array([0.5, 0.9, 0.1]), 0.5).tolist() == [1, 2]
    assert box_nms(boxes, np.array([0.9, 0.5, 0.1]), 0.5).tolist() == [0, 2]
    assert box_nms(boxes, np.array([0.5, 0.9, 0.1]), 0.66).tolist() == [1, 0, 2]  # 0.653 <= 0.66: both stay
    assert box_nms(boxes, np.array([0.5, 0.9, 0.1]), 0.65).tolist() == [1, 2]
    assert box_nms(boxes[:2], np.array([1.0, 1.0]), 0.5).tolist() == [0]  # ties keep input order
    line = np.array([[5, 5, 5, 20], [5, 5, 5, 20]], np.float32)  # zero area: IoU 0/0 suppresses nothing
    assert box_nms(line, np.array([0.9, 0.5]), 0.5).tolist() == [0, 1]


def _sam_iou_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """IoU as torchvision's nms kernel computes it for SAM: areas (x2 - x1) * (y2 - y1)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union else float("nan")  # 0/0: NaN, never "> thresh"


def _sam_nms_by_hand(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        order = [j for j in order if not _sam_iou_by_hand(boxes[i], boxes[j]) > thresh]
    return keep


def test_box_nms_parity_with_sams_batched_nms() -> None:
    """Partly overlapping mask boxes (integer xyxy, inclusive pixel indices as SAM's
    ``batched_mask_to_box``) give the same kept indices as SAM's ``batched_nms(boxes.float(),
    iou_preds, zeros, box_nms_thresh)`` call, checked by hand and with torchvision when present."""
    rng = np.random.default_rng(7)
    xy = rng.integers(0, 30, (40, 2))
    boxes = np.concatenate([xy, xy + rng.integers(0, 30, (40, 2))], axis=1).astype(np.float32)  # some 0-wide
    scores = rng.permutation(40).astype(np.float32) / 40  # distinct: no tie order to argue about
    for thresh in (0.2, 0.4, 0.6):
        ours = box_nms(boxes, scores, thresh).tolist()
        assert ours == _sam_nms_by_hand(boxes, scores, thresh)
        assert 1 < len(ours) < len(boxes)  # the case suppresses some boxes and keeps others
        try:
            from torchvision.ops import batched_nms
        except ImportError:
            continue
        ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.zeros(40), thresh)
        assert ours == ref.tolist()


def test_remove_small_regions_fills_holes_and_drops_islands() -> None:
    mask = np.zeros((30, 30), bool)
    mask[2:14, 2:14] = True  # 144 px square ...
    mask[6:8, 6:8] = False  # ... with a 4 px hole
    mask[20:23, 20:23] = True  # 9 px island
    out, changed = remove_small_regions(mask, 10)
    expected = np.zeros_like(mask)
    expected[2:14, 2:14] = True
    assert changed and np.array_equal(out, expected)
    out, changed = remove_small_regions(mask, 3)  # hole 4 px and island 9 px are not small
    assert not changed and np.array_equal(out, mask)
    only_small = np.zeros((30, 30), bool)
    only_small[0:2, 0:2] = True
    only_small[10:13, 10:13] = True
    out, changed = remove_small_regions(only_small, 100)  # all islands small: largest kept (SAM)
    assert changed and out.sum() == 9 and out[10:13, 10:13].all()


@pytest.mark.parametrize("n", [1, 4, 8])
def test_grid_counts_and_positions(n: int) -> None:
    hw = (60, 100)
    pts = point_grid(n, hw)
    assert pts.shape == (n * n, 2) and pts.dtype == np.float32
    assert np.allclose(pts[0], [100 / (2 * n), 60 / (2 * n)])  # cell centres, as SAM's grid
    assert np.all(pts[:n, 1] == pts[0, 1]) and np.all(np.diff(pts[:n, 0]) > 0)  # x varies fastest
    assert np.all((pts > 0) & (pts < [100, 60]))
    boxes = box_grid(n, (0.2, 0.5), hw)  # sides 0.2 and 0.5 of the short side 60: 12 and 30 px
    assert boxes.shape == (2 * n * n, 4)
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= [100, 60]) and np.all(boxes[:, 2:] > boxes[:, :2])
    sides = boxes[:, 2:] - boxes[:, :2]
    assert np.all(sides[: n * n] <= 12 + 1e-4) and np.all(sides[n * n:] <= 30 + 1e-4)
    assert np.allclose(sides.max(axis=0), [30, 30])  # an unclipped box of the larger scale


@pytest.mark.parametrize(
    "kwargs, exception",
    [
        ({}, None),
        ({"points_per_side": 0}, "points_per_side must be an integer >= 1"),
        ({"points_per_side": 2.5}, "points_per_side"),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"box_scales": ()}, "box_scales"),
        ({"box_scales": (0.0, 0.5)}, "box_scales"),
        ({"box_scales": (1.5,)}, "box_scales"),
        ({"nms_iou": 0.0}, "nms_iou"),
        ({"stability_offset": 0.0}, "stability_offset"),
        ({"min_region_px": -1}, "min_region_px"),
    ],
)
def test_config_validation(kwargs: dict, exception: str | None) -> None:
    if exception is None:
        AutoMaskConfig(**kwargs)
    else:
        with pytest.raises(ValueError, match=exception):
            AutoMaskConfig(**kwargs)


def test_thresholds_default_per_model_kind() -> None:
    assert AutoMaskConfig().thresholds(box_only=False) == (0.88, 0.95)  # SAM's generator
    assert AutoMaskConfig().thresholds(box_only=True) == (0.7, 0.8)
    assert AutoMaskConfig(pred_iou_thresh=0.5, stability_thresh=0.6).thresholds(True) == (0.5, 0.6)


def test_no_image_set_is_a_clear_error() -> None:
    predictor = Predictor(backend=None, spec=get_spec("mobile_sam"))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"set_image\(\.\.\.\) before"):
        generate_masks(predictor)


# --- parity with segment-anything's generator -----------------------------------------------
@pytest.fixture(scope="module")
def mobile_pair(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Ours and SAM's generator over one MobileSAM at seeded random weights and one embedding.

    The official predictor is handed our embedding (encoder parity is test_predictor's job), so
    only the generator pipelines are compared and the encoder runs once.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from segment_anything import SamAutomaticMaskGenerator
    ref = official_mobile_sam(seed=3)
    ckpt = tmp_path_factory.mktemp("ckpt") / "mobile_sam_random.pt"
    torch.save(ref.state_dict(), ckpt)
    ours = Predictor(TorchBackend(load_model("mobile_sam", ckpt), 1024), get_spec("mobile_sam"))
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 3)
    emb = ours.set_image(rgb)

    def official(cfg: AutoMaskConfig) -> list[np.ndarray]:
        gen = SamAutomaticMaskGenerator(
            ref, points_per_side=cfg.points_per_side, points_per_batch=cfg.points_per_batch,
            pred_iou_thresh=cfg.pred_iou_thresh, stability_score_thresh=cfg.stability_thresh,
            stability_score_offset=cfg.stability_offset, box_nms_thresh=cfg.nms_iou,
            min_mask_region_area=cfg.min_region_px, output_mode="binary_mask",
        )
        pred = gen.predictor

        def set_image(image: np.ndarray, image_format: str = "RGB") -> None:
            pred.reset_image()
            pred.original_size, pred.input_size = image.shape[:2], emb.input_hw
            pred.features, pred.is_image_set = torch.as_tensor(emb.features), True

        pred.set_image = set_image
        return [a["segmentation"] for a in gen.generate(rgb)]

    return ours, official


def _mask_iou(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    fa = np.stack(a).reshape(len(a), -1).astype(np.float32)
    fb = np.stack(b).reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    return inter / (fa.sum(1)[:, None] + fb.sum(1)[None] - inter)


# Random weights give logits within about +-1.5 and masks whose boxes span the whole 240x320
# image, so the offset is scaled down and box NMS either keeps all (1.0) or collapses to the best
# (0.7); NMS itself is checked by hand above. 25 points x 3 masks; ~15 s per case on 2 cores.
PARITY = {
    "filters+cleanup": AutoMaskConfig(points_per_side=5, pred_iou_thresh=0.05, stability_thresh=0.5,
                                      stability_offset=0.1, nms_iou=1.0, min_region_px=100),
    "nms": AutoMaskConfig(points_per_side=5, pred_iou_thresh=0.05, stability_thresh=0.5,
                          stability_offset=0.1, nms_iou=0.7, min_region_px=0),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_parity_with_sam_automatic_mask_generator(mobile_pair, case: str) -> None:  # noqa: ANN001
    ours, official = mobile_pair
    cfg = PARITY[case]
    ref_masks = official(cfg)
    got = generate_masks(ours, cfg)
    assert ref_masks, "the thresholds keep no reference mask: the test would prove nothing"
    assert len(got) == len(ref_masks)
    iou = _mask_iou(ref_masks, [m.mask for m in got])
    assert np.mean(iou.max(axis=1) >= 0.9) >= 0.9, np.sort(iou.max(axis=1))
    scores = [m.predicted_iou for m in got]
    assert scores == sorted(scores, reverse=True)


# --- box grid on the real LiteMedSAM weights -----------------------------------------------------
def _read(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_box_grid_lite_medsam_real_weights(data_dir: Path) -> None:
    predictor = Predictor(TorchBackend(load_model("lite_medsam", medsam_checkpoint()), 256), get_spec("lite_medsam"))
    rgb = _read(data_dir / "sam_images" / "dog.jpg")
    predictor.set_image(rgb)
    cfg = AutoMaskConfig(points_per_side=4)
    masks = generate_masks(predictor, cfg)
    assert len(masks) >= 2  # 7 measured
    iou_min, stab_min = cfg.thresholds(box_only=True)
    for m in masks:
        assert m.mask.shape == rgb.shape[:2] and m.mask.dtype == np.bool_
        assert m.area_px == int(m.mask.sum()) >= cfg.min_region_px
        ys, xs = np.nonzero(m.mask)
        assert m.bbox_xyxy == [xs.min(), ys.min(), xs.max(), ys.max()]
        assert m.predicted_iou > iou_min and m.stability_score >= stab_min
    scores = [m.predicted_iou for m in masks]
    assert scores == sorted(scores, reverse=True)
    boxes = np.array([m.bbox_xyxy for m in masks], np.float32)
    assert len(box_nms(boxes, np.array(scores), cfg.nms_iou)) == len(masks)  # no box duplicates left
    iou = _mask_iou([m.mask for m in masks], [m.mask for m in masks])
    assert np.all(iou[~np.eye(len(masks), dtype=bool)] < 0.95)  # no duplicate masks


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_everything_writes_pngs_json_overlay(tmp_path: Path, data_dir: Path) -> None:
    img = data_dir / "sam_images" / "dog.jpg"
    out = tmp_path / "everything"
    code = main(["everything", str(img), "--model", "lite_medsam", "--checkpoint", str(medsam_checkpoint()),
                 "--points-per-side", "4", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "masks.json").read_text())
    pngs = sorted(out.glob("*.png"))
    assert summary["num_masks"] == len(summary["masks"]) == len(pngs) > 0
    assert sorted(r["file"] for r in summary["masks"]) == [p.name for p in pngs]
    for record in summary["masks"]:
        mask = cv2.imread(str(out / record["file"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (534, 800) and set(np.unique(mask)) <= {0, 255}
        assert record["area_px"] == int((mask == 255).sum()) > 0
    assert cv2.imread(str(out / "overlay.jpg")).shape == (534, 800, 3)


def test_cli_everything_bad_points_per_side(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["everything", str(data_dir / "sam_images" / "dog.jpg"), "--model", "lite_medsam",
                 "--checkpoint", str(medsam_checkpoint()), "--points-per-side", "0", "--out", str(tmp_path)])
    assert code == 2
    assert "--points-per-side must be in [1, 128], got 0" in capsys.readouterr().err
