"""Prompt encoder / mask decoder parity with Meta's segment-anything (CPU, seeded random weights).

The official path is the way ``SamPredictor.predict_torch`` calls it (points padded with one
not-a-point when there is no box; box corners embedded by the box path); ours gets the same prompt
in the ONNX form of ``engine.contract``. Also compared with the official ``SamOnnxModel``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.models.mask_decoder import MaskDecoder
from engine.models.prompt_encoder import PromptEncoder
from engine.models.sam import SamModel, check_decoder_inputs, select_masks
from engine.models.transformer import TwoWayTransformer
from tests.refs import medsam_checkpoint

sam_modeling = pytest.importorskip("segment_anything.modeling")
sam_onnx = pytest.importorskip("segment_anything.utils.onnx")

TOL = 1e-4
S = 1024


class _StubEncoder(nn.Module):
    """Stands in for the (heavy) image encoder; ``SamOnnxModel`` reads ``img_size``."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 256, 64, 64)


def _official(side: int) -> tuple[nn.Module, nn.Module]:
    pe = sam_modeling.PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(side, side), mask_in_chans=16
    )
    md = sam_modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=sam_modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    return pe, md


def _ours(side: int) -> SamModel:
    return SamModel(
        image_encoder=_StubEncoder(side),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(side, side), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
    ).eval()


def _randomize_(module: nn.Module) -> None:
    """Every parameter and buffer random. Linear/conv weights ~ N(0, 1.5^2 / fan_in) and their
    biases ~ N(0, 0.1^2), so activations stay O(1) and logits of every token straddle 0; the rest
    (norms, embeddings, the PE matrix) ~ N(0, 0.5^2), so no prompt path is trivially zero."""
    with torch.no_grad():
        for _, p in list(module.named_parameters()) + list(module.named_buffers()):
            p.normal_(std=0.5)
        for sub in module.modules():
            if isinstance(sub, nn.ConvTranspose2d):  # weight (in, out, k, k); stride k: fan-in = in
                sub.weight.normal_(std=1.5 / sub.weight.shape[0] ** 0.5)
                sub.bias.normal_(std=0.1)
            elif isinstance(sub, (nn.Linear, nn.Conv2d)):
                sub.weight.normal_(std=1.5 / sub.weight[0].numel() ** 0.5)
                sub.bias.normal_(std=0.1)


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, nn.Module, SamModel, nn.Module]:
    torch.manual_seed(0)
    pe, md = _official(S)
    _randomize_(pe)
    _randomize_(md)
    pe.eval()
    md.eval()
    ours = _ours(S)
    ours.prompt_encoder.load_state_dict(pe.state_dict(), strict=True)
    ours.mask_decoder.load_state_dict(md.state_dict(), strict=True)
    onnx_model = sam_onnx.SamOnnxModel(
        sam_modeling.Sam(image_encoder=_StubEncoder(S), prompt_encoder=pe, mask_decoder=md), return_single_mask=False
    ).eval()
    return pe, md, ours, onnx_model


@pytest.fixture(scope="module")
def embedding() -> torch.Tensor:
    return torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(1))


def _mask(b: int, seed: int = 2) -> torch.Tensor:
    return 4 * torch.randn(b, 1, 256, 256, generator=torch.Generator().manual_seed(seed))


def _to_onnx_form(
    coords: torch.Tensor | None, labels: torch.Tensor | None, boxes: torch.Tensor | None, b: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictor prompts -> contract points: box corners labelled 2, 3 appended; else one -1 pad point."""
    parts_c = [] if coords is None else [coords]
    parts_l = [] if labels is None else [labels.float()]
    if boxes is not None:
        parts_c.append(boxes.reshape(b, 2, 2))
        parts_l.append(torch.tensor([[2.0, 3.0]]).expand(b, 2))
    else:
        parts_c.append(torch.zeros(b, 1, 2))
        parts_l.append(-torch.ones(b, 1))
    return torch.cat(parts_c, dim=1), torch.cat(parts_l, dim=1)


def _compare(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    (iou, low), (iou_ref, low_ref) = got, want
    assert low.shape == low_ref.shape and iou.shape == iou_ref.shape
    d_low = (low - low_ref).abs().max().item()
    d_iou = (iou - iou_ref).abs().max().item()
    assert d_low <= TOL, f"max |logit diff| {d_low:.3g}"
    assert d_iou <= TOL, f"max |iou diff| {d_iou:.3g}"
    # identical thresholded masks wherever the allowed logit difference cannot flip the sign (a few
    # reference logits lie within TOL of 0 by chance; BLAS thread counts change the last bits there)
    decided = low_ref.abs() > TOL
    assert torch.equal((low > 0)[decided], (low_ref > 0)[decided])
    assert (~decided).float().mean() < 1e-4
    return d_low, d_iou


CASES = {
    "one_point": dict(points=[[[300.0, 400.0]]], labels=[[1]]),
    "fg_bg_points": dict(points=[[[300.0, 400.0], [620.5, 100.0], [10.0, 1000.0]]], labels=[[1, 0, 1]]),
    "box": dict(boxes=[[100.0, 150.0, 700.0, 900.0]]),
    "point_and_box": dict(points=[[[400.0, 500.0]]], labels=[[0]], boxes=[[100.0, 150.0, 700.0, 900.0]]),
    "mask_and_point": dict(points=[[[300.0, 400.0]]], labels=[[1]], mask=True),
    "batch_of_4": dict(
        points=[[[10.0, 20.0], [500.0, 500.0]], [[1000.0, 3.0], [40.0, 800.0]],
                [[512.0, 512.0], [0.0, 0.0]], [[123.4, 987.6], [700.0, 300.0]]],
        labels=[[1, 0], [1, 1], [0, 1], [1, 0]],
        boxes=[[0.0, 0.0, 1023.0, 1023.0], [100.0, 150.0, 700.0, 900.0], [500.0, 10.0, 600.0, 20.0],
               [5.0, 6.0, 300.0, 700.0]],
        mask=True,
    ),
}


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_matches_official_predictor_path(models, embedding: torch.Tensor, case: str, multimask: bool) -> None:
    pe, md, ours, _ = models
    spec = CASES[case]
    coords = torch.tensor(spec["points"]) if "points" in spec else None
    labels = torch.tensor(spec["labels"]) if "labels" in spec else None
    boxes = torch.tensor(spec["boxes"]) if "boxes" in spec else None
    b = next(t.shape[0] for t in (coords, boxes) if t is not None)
    mask = _mask(b) if spec.get("mask") else None

    sparse, dense = pe(points=None if coords is None else (coords, labels), boxes=boxes, masks=mask)
    low_ref, iou_ref = md(
        image_embeddings=embedding, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask,
    )
    pc, pl = _to_onnx_form(coords, labels, boxes, b)
    mask_input = mask if mask is not None else torch.zeros(b, 1, 256, 256)
    has_mask = torch.full((b,), 1.0 if mask is not None else 0.0)
    iou, low = ours.decode(embedding, pc, pl, mask_input, has_mask)
    assert iou.shape == (b, 4) and low.shape == (b, 4, 256, 256)
    d_low, d_iou = _compare(select_masks(iou, low, multimask), (iou_ref, low_ref))
    print(f"{case} multimask={multimask}: max|dlogit|={d_low:.3g} max|diou|={d_iou:.3g} "
          f"logit range [{low_ref.min():.2f}, {low_ref.max():.2f}] on {(low_ref > 0).float().mean():.2f}")


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
@torch.no_grad()
def test_matches_official_onnx_model(models, embedding: torch.Tensor, with_mask: bool) -> None:
    _, _, ours, onnx_model = models
    pc = torch.tensor([[[10.0, 20.0], [500.0, 500.0], [100.0, 150.0], [700.0, 900.0]],
                       [[1000.0, 3.0], [40.0, 800.0], [0.0, 0.0], [0.0, 0.0]],
                       [[512.0, 512.0], [0.0, 0.0], [3.0, 4.0], [900.0, 1000.0]]])
    pl = torch.tensor([[1.0, 0.0, 2.0, 3.0], [1.0, 1.0, -1.0, -1.0], [0.0, -1.0, 2.0, 3.0]])
    mask = _mask(1, seed=3)
    has = torch.tensor([1.0 if with_mask else 0.0])
    _, iou_ref, low_ref = onnx_model(embedding, pc, pl, mask, has, torch.tensor([S, S], dtype=torch.float32))
    iou, low = ours.decode(embedding, pc, pl, mask.expand(3, -1, -1, -1), has.expand(3))
    d_low, d_iou = _compare((iou, low), (iou_ref, low_ref))
    print(f"SamOnnxModel mask={with_mask}: max|dlogit|={d_low:.3g} max|diou|={d_iou:.3g}")


@torch.no_grad()
def test_every_prompt_path_matters(models, embedding: torch.Tensor) -> None:
    """Guards the randomisation: each label, the pad embedding and the mask gate change the logits."""
    _, _, ours, _ = models
    pc = torch.tensor([[[300.0, 400.0], [0.0, 0.0]]])
    zeros = torch.zeros(1, 1, 256, 256)
    _, base = ours.decode(embedding, pc, torch.tensor([[1.0, -1.0]]), zeros, torch.zeros(1))
    for labels in ([0.0, -1.0], [2.0, -1.0], [3.0, -1.0], [1.0, 1.0]):
        _, low = ours.decode(embedding, pc, torch.tensor([labels]), zeros, torch.zeros(1))
        assert (low - base).abs().max() > 0.1, labels
    _, low = ours.decode(embedding, pc, torch.tensor([[1.0, -1.0]]), _mask(1), torch.ones(1))
    assert (low - base).abs().max() > 0.1
    on = (base > 0).float().mean(dim=(2, 3))
    assert ((on > 0.02) & (on < 0.98)).all(), f"degenerate masks (fraction on per token {on.tolist()})"


@pytest.mark.parametrize("b", [1, 4])
@pytest.mark.parametrize("n", [1, 2, 5, 16])
@torch.no_grad()
def test_decode_shapes(models, embedding: torch.Tensor, b: int, n: int) -> None:
    _, _, ours, _ = models
    gen = torch.Generator().manual_seed(b * 100 + n)
    pc = torch.rand(b, n, 2, generator=gen) * S
    pl = torch.randint(-1, 4, (b, n), generator=gen).float()
    iou, low = ours.decode(embedding, pc, pl, torch.zeros(b, 1, 256, 256), torch.zeros(b))
    assert iou.shape == (b, 4) and low.shape == (b, 4, 256, 256)
    assert iou.dtype == low.dtype == torch.float32 and torch.isfinite(low).all()
    assert select_masks(iou, low, True)[1].shape == (b, 3, 256, 256)
    assert select_masks(iou, low, False)[0].shape == (b, 1)


def _good_inputs(b: int = 2, n: int = 3) -> dict[str, torch.Tensor]:
    return dict(
        image_embeddings=torch.zeros(1, 256, 64, 64), point_coords=torch.zeros(b, n, 2),
        point_labels=torch.ones(b, n), mask_input=torch.zeros(b, 1, 256, 256), has_mask_input=torch.zeros(b),
    )


@pytest.mark.parametrize(
    ("name", "bad", "match"),
    [
        ("image_embeddings", torch.zeros(2, 256, 64, 64), r"image_embeddings must have shape \(1, 256, 64, 64\)"),
        ("point_coords", torch.zeros(3, 2), r"point_coords must have shape \(B, N, 2\)"),
        ("point_coords", torch.zeros(2, 0, 2), "padding point"),
        ("point_labels", torch.ones(2, 4), r"point_labels must have shape \(B, N\) = \(2, 3\)"),
        ("point_labels", torch.tensor([[1.0, 5.0, 0.0], [1.0, 1.0, 1.0]]), r"got \[5.0\]"),
        ("mask_input", torch.zeros(2, 256, 256), r"mask_input must have shape \(B, 1, 256, 256\)"),
        ("has_mask_input", torch.zeros(2, 1), r"has_mask_input must have shape \(B,\)"),
        ("point_labels", torch.ones(2, 3, dtype=torch.int64), "must be float32"),
        ("point_coords", torch.zeros(2, 3, 2, dtype=torch.float64), "share one float dtype"),
    ],
)
def test_check_decoder_inputs_errors(name: str, bad: torch.Tensor, match: str) -> None:
    inputs = _good_inputs()
    check_decoder_inputs(**inputs)
    inputs[name] = bad
    with pytest.raises(ValueError, match=match):
        check_decoder_inputs(**inputs)


def test_select_masks_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="pass SamModel.decode's outputs unchanged"):
        select_masks(torch.zeros(2, 4), torch.zeros(2, 3, 256, 256), True)


def test_positional_encoding_stays_float32_under_autocast(models) -> None:
    _, _, ours, _ = models
    coords = torch.rand(2, 7, 2, generator=torch.Generator().manual_seed(5))
    want = ours.prompt_encoder.pe_layer.encode_unit(coords)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours.prompt_encoder.pe_layer.encode_unit(coords)
        dense = ours.prompt_encoder.get_dense_pe()
    assert got.dtype == dense.dtype == torch.float32
    assert torch.equal(got, want)
    assert torch.equal(dense, ours.prompt_encoder.get_dense_pe())


@torch.no_grad()
def test_lite_medsam_checkpoint_loads_strictly_and_matches() -> None:
    """S=256 config: the real LiteMedSAM prompt_encoder.* / mask_decoder.* keys load strictly."""
    state = torch.load(medsam_checkpoint(), map_location="cpu", weights_only=True)
    ours = _ours(256)
    for prefix in ("prompt_encoder.", "mask_decoder."):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        getattr(ours, prefix[:-1]).load_state_dict(sub, strict=True)
    ours_keys = {k for k in ours.state_dict() if not k.startswith("image_encoder.")}
    assert ours_keys == {k for k in state if k.startswith(("prompt_encoder.", "mask_decoder."))}

    pe, md = _official(256)
    pe.load_state_dict({k[15:]: v for k, v in state.items() if k.startswith("prompt_encoder.")})
    md.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("mask_decoder.")})
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(4))
    box = torch.tensor([[30.0, 40.0, 200.0, 180.0]])
    sparse, dense = pe.eval()(points=None, boxes=box, masks=None)
    low_ref, iou_ref = md.eval()(emb, pe.get_dense_pe(), sparse, dense, multimask_output=False)
    pc, pl = _to_onnx_form(None, None, box, 1)
    iou, low = ours.decode(emb, pc, pl, torch.zeros(1, 1, 256, 256), torch.zeros(1))
    _compare(select_masks(iou, low, False), (iou_ref, low_ref))
