"""One decode path: the stream's ``decode_prompt`` and the image path's ``Predictor.predict`` give
the same masks, scores and logits for the same prompt and embedding (points, box, point + box,
multimask, mask input, the box upscaling window), and the selection rule is the best predicted IoU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from engine.backends.torch_backend import TorchBackend
from engine.models.common import LayerNorm2d
from engine.models.mask_decoder import MaskDecoder
from engine.models.prompt_encoder import PromptEncoder
from engine.models.registry import get_spec
from engine.models.sam import SamModel
from engine.models.transformer import TwoWayTransformer
from engine.predictor import Predictor
from engine.prompts import build_prompts
from engine.stream.decoding import box_roi, decode_prompt
from engine.stream.events import Prompt
from tests.refs import perturb_

SIDE, GRID = 256, 64  # LiteMedSAM's geometry: 256 px input, 64x64 embedding, 256x256 low-res masks
ORIGINAL_HW = (150, 200)  # landscape, enlarged to the model input (192x256)


class PatchEncoder(nn.Module):
    """``(1, 3, 256, 256)`` -> ``(1, 256, 64, 64)``: one 4x4 patch conv and a LayerNorm."""

    output_size = (GRID, GRID)

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 256, 4, stride=4), LayerNorm2d(256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = SamModel(
            PatchEncoder(),
            PromptEncoder(embed_dim=256, image_embedding_size=(GRID, GRID), input_image_size=(SIDE, SIDE),
                          mask_in_chans=16),
            MaskDecoder(num_multimask_outputs=3,
                        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=256, num_heads=8),
                        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        )
    spec = dataclasses.replace(get_spec("sam_vit_b"), name="patch", input_size=SIDE)
    p = Predictor(TorchBackend(perturb_(model, 5), SIDE), spec)
    rgb = np.random.default_rng(4).integers(0, 256, (*ORIGINAL_HW, 3), dtype=np.uint8)
    p.set_image(rgb)
    return p


CASES = {
    "point": dict(points_xy=[[100.0, 70.0]], labels=[1.0]),
    "points_fg_bg": dict(points_xy=[[100.0, 70.0], [20.0, 130.0]], labels=[1.0, 0.0]),
    "box": dict(box_xyxy=[30.0, 25.0, 140.0, 110.0]),
    "point_box": dict(points_xy=[[80.0, 50.0]], labels=[0.0], box_xyxy=[30.0, 25.0, 140.0, 110.0]),
}


@pytest.mark.parametrize(("name", "multimask", "with_mask"), [
    *((name, multimask, False) for name in CASES for multimask in (False, True)),
    ("point", False, True), ("box", False, True),  # the tracker's mask_input feedback
])
def test_stream_decode_equals_image_predict(predictor: Predictor, name: str, multimask: bool, with_mask: bool) -> None:
    kw = CASES[name]
    mask_input = np.random.default_rng(1).normal(size=(256, 256)).astype(np.float32) * 3 if with_mask else None
    pred = predictor.predict(**kw, mask_input=mask_input, multimask_output=multimask)
    best = int(np.argmax(pred.scores[0]))  # the image path's outputs, the stream's rule on top
    dec = decode_prompt(predictor, Prompt(kw.get("points_xy"), kw.get("labels"), kw.get("box_xyxy")),
                        mask_input, multimask)
    assert dec.logits.shape == ORIGINAL_HW and dec.low_res_logits.shape == (256, 256)
    assert dec.score == pred.scores[0, best]
    np.testing.assert_array_equal(dec.low_res_logits, pred.low_res_logits[0, best])
    np.testing.assert_array_equal(dec.logits, pred.logits[0, best])  # type: ignore[index]
    np.testing.assert_array_equal(dec.logits > 0, pred.masks[0, best])
    if multimask:  # the selection really chooses among three different outputs
        assert len({float(s) for s in pred.scores[0]}) == 3


def test_select_best_keeps_the_highest_predicted_iou_per_prompt(predictor: Predictor) -> None:
    emb = predictor.embedding
    pts = np.array([[[100.0, 70.0]], [[30.0, 120.0]], [[180.0, 15.0]]], np.float32)
    prompts = build_prompts(emb.original_hw, emb.input_hw, pts, np.ones((3, 1), np.float32))
    every = predictor.decode(prompts, True)
    best = predictor.decode(prompts, True, select="best")
    idx = np.argmax(every.scores, axis=1)
    assert best.masks.shape == (3, 1, *ORIGINAL_HW)
    np.testing.assert_array_equal(best.scores[:, 0], every.scores[np.arange(3), idx])
    np.testing.assert_array_equal(best.low_res_logits[:, 0], every.low_res_logits[np.arange(3), idx])
    # OpenCV's resize takes another SIMD path for 3 than for 9 channels: float rounding only
    np.testing.assert_allclose(best.logits[:, 0], every.logits[np.arange(3), idx], atol=1e-4)  # type: ignore[index]
    with pytest.raises(ValueError, match="select must be 'all' or 'best', got 'first'"):
        predictor.decode(prompts, True, select="first")  # type: ignore[arg-type]


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_stream_roi_window_equals_image_decode_with_the_same_window(predictor: Predictor, margin: float) -> None:
    emb = predictor.embedding
    box = np.array([40.0, 30.0, 100.0, 80.0], np.float32)
    prompts = build_prompts(emb.original_hw, emb.input_hw, box_xyxy=box)
    roi = box_roi(prompts.point_coords[0, :2].reshape(-1), SIDE, (GRID, GRID), margin)
    assert roi is not None
    windowed = predictor.decode(prompts, False, roi=roi)
    dec = decode_prompt(predictor, Prompt(box_xyxy=box), None, False, roi_margin=margin)
    np.testing.assert_array_equal(dec.logits, windowed.logits[0, 0])  # type: ignore[index]
    whole = predictor.decode(prompts, False)
    # inside the window (in original pixels, away from its border) the windowed mask is the whole one
    r0, r1, c0, c1 = (v * (SIDE // GRID) * max(ORIGINAL_HW) / SIDE for v in roi)
    inner = (slice(int(r0) + 2, int(r1) - 2), slice(int(c0) + 2, int(c1) - 2))
    np.testing.assert_array_equal(windowed.masks[0, 0][inner], whole.masks[0, 0][inner])


def test_roi_on_a_whole_mask_backend_is_refused(predictor: Predictor) -> None:
    class WholeOnly:
        supports_roi = False

    p = Predictor(WholeOnly(), predictor.spec)  # type: ignore[arg-type]
    p.set_embedding(predictor.embedding)
    emb = predictor.embedding
    prompts = build_prompts(emb.original_hw, emb.input_hw, box_xyxy=np.array([10.0, 10.0, 90.0, 90.0], np.float32))
    with pytest.raises(ValueError, match="decodes whole masks only; pass roi=None"):
        p.decode(prompts, False, roi=(0, 4, 0, 4))
