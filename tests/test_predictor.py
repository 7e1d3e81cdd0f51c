"""Predictor end to end: parity with MobileSAM's official predictor (random weights) and with
the original LiteMedSAM recipe (real weights, real images), plus bad-input errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine.backends.torch_backend import TorchBackend
from engine.models.registry import get_spec, load_model
from engine.predictor import Predictor
from tests.refs import LiteMedSamRecipe, medsam_checkpoint, official_mobile_sam


def _read(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def mobile_pair(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """(ours, official SamPredictor) sharing seeded random MobileSAM weights, same image set."""
    ref = official_mobile_sam(seed=3)
    ckpt = tmp_path_factory.mktemp("ckpt") / "mobile_sam_random.pt"
    torch.save(ref.state_dict(), ckpt)
    ours = Predictor(TorchBackend(load_model("mobile_sam", ckpt), 1024), get_spec("mobile_sam"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import SamPredictor
    official = SamPredictor(ref)
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
    ours.set_image(rgb)
    official.set_image(rgb)  # each side resizes, normalises and pads the uint8 image itself
    return ours, official, rgb


def test_mobile_sam_embedding_parity(mobile_pair) -> None:  # noqa: ANN001
    ours, official, _ = mobile_pair
    diff = (torch.as_tensor(ours.embedding.features) - official.features).abs().max().item()
    assert diff <= 1e-4, diff


PROMPTS = {
    "point": dict(points_xy=[[320, 240]], labels=[1]),
    "points_fg_bg": dict(points_xy=[[320, 240], [100, 400], [500, 80]], labels=[1, 0, 1]),
    "box": dict(box_xyxy=[100, 100, 400, 300]),
    "point_box": dict(points_xy=[[250, 200]], labels=[0], box_xyxy=[100, 100, 400, 300]),
}


@pytest.mark.parametrize("name", list(PROMPTS))
@pytest.mark.parametrize("multimask", [False, True])
def test_mobile_sam_predict_parity(mobile_pair, name: str, multimask: bool) -> None:  # noqa: ANN001
    ours, official, _ = mobile_pair
    kw = PROMPTS[name]
    pred = ours.predict(**kw, multimask_output=multimask)
    ref_masks, ref_scores, ref_low = official.predict(
        point_coords=None if "points_xy" not in kw else np.array(kw["points_xy"], np.float32),
        point_labels=None if "labels" not in kw else np.array(kw["labels"]),
        box=None if "box_xyxy" not in kw else np.array(kw["box_xyxy"], np.float32),
        multimask_output=multimask,
        return_logits=True,
    )
    assert pred.masks.shape == (1, 3 if multimask else 1, 480, 640)
    assert np.abs(pred.low_res_logits[0] - ref_low).max() <= 1e-4
    assert np.abs(pred.scores[0] - ref_scores).max() <= 1e-4
    assert np.abs(pred.logits[0] - ref_masks).max() <= 1e-3  # full-size logits (bilinear of the above)
    _assert_same_masks(pred.masks[0], ref_masks)


def _assert_same_masks(masks: np.ndarray, ref_logits: np.ndarray) -> None:
    """Identical thresholded masks wherever the reference logit is not a near-tie (|x| > 1e-3).

    Our encoder uses fused attention (embeddings differ by ~1e-6), so pixels whose logit is
    within float noise of 0 may land on either side.
    """
    decided = np.abs(ref_logits) > 1e-3
    assert np.array_equal(masks[decided], (ref_logits > 0)[decided])
    assert np.mean(masks != (ref_logits > 0)) < 1e-4


def test_mobile_sam_mask_input_parity(mobile_pair) -> None:  # noqa: ANN001
    ours, official, _ = mobile_pair
    first = ours.predict(points_xy=[[320, 240]], multimask_output=True)
    best = first.low_res_logits[0, int(np.argmax(first.scores[0]))]
    pred = ours.predict(points_xy=[[320, 240], [330, 250]], labels=[1, 1], mask_input=best)
    ref_masks, ref_scores, ref_low = official.predict(
        point_coords=np.array([[320, 240], [330, 250]], np.float32), point_labels=np.array([1, 1]),
        mask_input=best[None], multimask_output=False, return_logits=True,
    )
    assert np.abs(pred.low_res_logits[0] - ref_low).max() <= 1e-4
    _assert_same_masks(pred.masks[0], ref_masks)


def test_batched_prompts_equal_single_calls(mobile_pair) -> None:  # noqa: ANN001
    ours, _, _ = mobile_pair
    boxes = np.array([[100, 100, 400, 300], [10, 20, 200, 220], [300, 50, 630, 470]], np.float32)
    batched = ours.predict(box_xyxy=boxes)
    for i, box in enumerate(boxes):
        single = ours.predict(box_xyxy=box)
        assert np.abs(batched.low_res_logits[i] - single.low_res_logits[0]).max() <= 1e-4
        _assert_same_masks(batched.masks[i], single.logits[0])


@pytest.fixture(scope="module")
def medsam_pair():  # noqa: ANN201
    ckpt = medsam_checkpoint()
    ours = Predictor(TorchBackend(load_model("lite_medsam", ckpt), 256), get_spec("lite_medsam"))
    return ours, LiteMedSamRecipe(ckpt)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_lite_medsam_truck_matches_recipe(medsam_pair, data_dir: Path) -> None:  # noqa: ANN001
    ours, recipe = medsam_pair
    rgb = _read(data_dir / "sam_images" / "truck.jpg")
    ours.set_image(rgb)
    for box in ([425, 600, 700, 875], [75, 275, 1725, 850], [1375, 550, 1650, 800]):
        ref_mask, ref_low = recipe.segment(rgb, np.array(box, np.float32))
        pred = ours.predict(box_xyxy=box)
        assert np.abs(pred.low_res_logits[0, 0] - ref_low).max() <= 1e-3
        ref_logits = _recipe_logits(ref_low, rgb.shape[:2])
        assert np.array_equal(ref_logits > 0, ref_mask)
        _assert_same_masks(pred.masks[0, 0], ref_logits)  # exact away from float-noise ties (|logit| <= 1e-3)
        assert ref_mask.sum() > 1000  # a real, non-empty selection


def _recipe_logits(low: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The LiteMedSAM recipe's full-size logits (its mask is ``sigmoid(.) > 0.5``) from its 256x256 logits."""
    import torch.nn.functional as F

    h, w = hw
    nh, nw = int(h * 256 / max(h, w) + 0.5), int(w * 256 / max(h, w) + 0.5)
    up = F.interpolate(torch.from_numpy(low)[None, None], (256, 256), mode="bilinear", align_corners=False)
    return F.interpolate(up[..., :nh, :nw], (h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def test_lite_medsam_blackswan_matches_recipe(medsam_pair, data_dir: Path) -> None:  # noqa: ANN001
    ours, recipe = medsam_pair
    root = data_dir / "davis_blackswan"
    ious_ours, ious_ref = [], []
    for k in range(0, 50, 7):
        rgb = _read(root / "JPEGImages" / f"{k:05d}.jpg")
        gt = cv2.imread(str(root / "Annotations" / f"{k:05d}.png"), cv2.IMREAD_GRAYSCALE) > 127
        ys, xs = np.nonzero(gt)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        ref_mask, _ = recipe.segment(rgb, box)
        ours.set_image(rgb)
        mask = ours.predict(box_xyxy=box).masks[0, 0]
        assert int((mask != ref_mask).sum()) <= 0.0001 * mask.size
        ious_ours.append(_iou(mask, gt))
        ious_ref.append(_iou(ref_mask, gt))
    # A medical model on a swan: parity and relative behaviour, not a high absolute IoU.
    assert abs(np.mean(ious_ours) - np.mean(ious_ref)) <= 0.005
    assert 0.15 < np.mean(ious_ours) < 0.8


@pytest.mark.parametrize(
    "call,exception,match",
    [
        (lambda p: p.predict(box_xyxy=[0, 0, 10, 10]), RuntimeError, "set_image"),
        (lambda p: p.set_image(np.zeros((10, 10), np.uint8)), ValueError, "HxWx3"),
        (lambda p: p.set_embedding("nope"), TypeError, "Embedding"),
    ],
)
def test_predictor_bad_use(medsam_pair, call, exception: type, match: str) -> None:  # noqa: ANN001
    ours, _ = medsam_pair
    fresh = Predictor(ours.backend, ours.spec)
    with pytest.raises(exception, match=match):
        call(fresh)


def test_box_only_model_warns_on_points(medsam_pair) -> None:  # noqa: ANN001
    ours, _ = medsam_pair
    ours.set_image(np.full((64, 64, 3), 100, np.uint8))
    with pytest.warns(UserWarning, match="box prompts only"):
        ours.predict(points_xy=[[10, 10]])


def test_embedding_round_trip(medsam_pair) -> None:  # noqa: ANN001
    ours, _ = medsam_pair
    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    emb = ours.set_image(rgb)
    a = ours.predict(box_xyxy=[10, 10, 100, 100])
    other = Predictor(ours.backend, ours.spec)
    other.set_embedding(emb)
    b = other.predict(box_xyxy=[10, 10, 100, 100])
    assert emb.original_hw == (120, 160) and emb.input_hw == (192, 256)
    assert np.array_equal(a.masks, b.masks) and np.allclose(a.scores, b.scores)
