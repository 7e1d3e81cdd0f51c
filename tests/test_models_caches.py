"""Weight-derived caches of the eager models follow the weights; TinyViT never writes its inputs.

Caches: TinyViT's folded Conv2d+BN weights, scaled qkv and gathered attention bias
(``engine.models.fast_ops.cached``), the prompt encoder's dense PE and the transformer's image side.
Each is checked against its source tensors' identity and version counter (``VersionKey``):
``load_state_dict`` invalidates them; ``.data`` edits need ``clear_caches``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.models import fast_ops
from engine.models.common import VersionKey, clear_caches, version_key
from engine.models.sam import SamModel
from engine.models.tiny_vit import TinyViT, TinyViTBlock, TinyViTConfig
from tests.refs import randomize_
from tests.test_torch_backend import EMBED_HW, SIDE, tiny_model

# Small TinyViT: grids 16 -> 8 -> 4 -> 4, window 7 pads the 8x8 grid (the cropped block path).
SMALL_TINYVIT = TinyViTConfig(img_size=64, embed_dims=(16, 32, 32, 64), depths=(1, 1, 2, 1),
                              num_heads=(1, 2, 2, 4), window_sizes=(7, 7, 7, 7))


def small_tinyvit(seed: int) -> TinyViT:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyViT(SMALL_TINYVIT)
    randomize_(model, seed)
    return model.eval()


def decoder_model(seed: int) -> SamModel:
    """Prompt encoder + mask decoder at seeded weights (identity image encoder)."""
    return tiny_model(seed, nn.Identity(), mlp_dim=512)


def decode_inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One embedding and two click prompts without masks (the image-side cache's case)."""
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(1, 256, *EMBED_HW, generator=gen)
    coords = torch.rand(2, 2, 2, generator=gen) * SIDE
    labels = torch.tensor([[1.0, -1.0], [0.0, -1.0]])
    return emb, coords, labels, torch.zeros(2, 1, 4 * EMBED_HW[0], 4 * EMBED_HW[1]), torch.zeros(2)


# --- the key ------------------------------------------------------------------------------------
def test_version_key_compares_identity_not_only_the_address() -> None:
    t = torch.zeros(3)
    alias = t.view_as(t)  # same address, dtype, shape and version counter: another tensor object
    assert version_key(t) == version_key(t)
    assert version_key(t) != version_key(alias)  # (data_ptr, version) keys called these equal
    key = version_key(t)
    t.add_(1)  # in-place: version bump
    assert key != version_key(t)
    with torch.inference_mode():
        assert version_key(torch.zeros(1)) is None  # inference tensors: no version counter, no cache
    assert isinstance(key, VersionKey) and key != "not a key"


# --- TinyViT --------------------------------------------------------------------------------------
def test_tinyvit_load_state_dict_invalidates_its_caches() -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model, other = small_tinyvit(0), small_tinyvit(1)
    with torch.no_grad():
        before = model(x)
        assert clear_caches(model) > 0 and clear_caches(model) == 0  # the forward filled caches
        assert torch.equal(model(x), before)  # recomputed after clearing: same values
        model.load_state_dict(other.state_dict())
        after = model(x)
        want = small_tinyvit(1)(x)
    assert not torch.allclose(before, want)
    torch.testing.assert_close(after, want, atol=0, rtol=0)


def test_data_edits_need_clear_caches() -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model, other = small_tinyvit(0), small_tinyvit(1)
    with torch.no_grad():
        model(x)
        for p, q in zip(model.state_dict().values(), other.state_dict().values()):
            p.data.copy_(q)  # bypasses the version counter
        assert clear_caches(model) > 0
        torch.testing.assert_close(model(x), small_tinyvit(1)(x), atol=0, rtol=0)


@pytest.mark.parametrize("side", [7, 9])  # 9: padded windows, the output is cropped
def test_tinyvit_block_leaves_its_input_unchanged(side: int) -> None:
    block = TinyViTBlock(dim=32, side=side, num_heads=2, window=7, mlp_ratio=2.0, local_conv=3)
    randomize_(block, 0)
    block.eval()
    x = torch.randn(2, side, side, 32, generator=torch.Generator().manual_seed(1))
    x0 = x.clone()
    with torch.no_grad():
        out = block(x)
    assert torch.equal(x, x0)
    with torch.enable_grad():  # the graph path (no in-place ops) agrees
        torch.testing.assert_close(out, block(x).detach(), atol=1e-5, rtol=1e-5)


def test_fast_path_is_off_while_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = fast_ops.Conv2dBN(4, 8).eval()
    with torch.no_grad():
        assert fast_ops.fast_path()
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as under dynamo / torch.export
        assert not fast_ops.fast_path()
        conv.fused()
    assert getattr(conv, "_cache_fused", None) is None  # nothing cached while compiling


# --- prompt encoder and transformer ---------------------------------------------------------------
def test_decoder_caches_follow_load_state_dict() -> None:
    """Dense PE and the transformer's image side are cached by the first decode and renewed after
    ``load_state_dict``: the next decode equals a fresh model's."""
    inputs = decode_inputs()
    model, other = decoder_model(0), decoder_model(1)
    with torch.inference_mode():
        model.decode(*inputs)
        pe_before = model.prompt_encoder.get_dense_pe()
        assert model.mask_decoder.transformer._cache_image_side is not None
        model.load_state_dict(other.state_dict())
        got = model.decode(*inputs)
        want = decoder_model(1).decode(*inputs)
        pe_after = model.prompt_encoder.get_dense_pe()
    assert not torch.equal(pe_before, pe_after)
    torch.testing.assert_close(pe_after, decoder_model(1).prompt_encoder.get_dense_pe(), atol=0, rtol=0)
    for g, w in zip(got, want):  # a stale image side would differ by ~1e-1; GEMM alignment by ~1e-7
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_dense_pe_data_edit_then_clear_caches() -> None:
    model, other = decoder_model(0), decoder_model(1)
    gaussian = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    with torch.no_grad():
        model.prompt_encoder.get_dense_pe()
        gaussian.data.copy_(other.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix)
        clear_caches(model)
        torch.testing.assert_close(
            model.prompt_encoder.get_dense_pe(), other.prompt_encoder.get_dense_pe(), atol=0, rtol=0
        )


@pytest.mark.parametrize("strip_bytes", [1, 6000, 20000, 1 << 40])
def test_mbconv_strips_match_the_whole_block(monkeypatch: pytest.MonkeyPatch, strip_bytes: int) -> None:
    """Eager CPU MBConv in row strips (1-row halo for the depthwise conv) equals the whole block,
    with strips of 1, 2 and 7 of 13 rows (uneven last strip), and leaves its input unchanged."""
    from engine.models.tiny_vit_convs import MBConv

    with torch.random.fork_rng():
        torch.manual_seed(0)
        block = MBConv(8, 4.0)
    randomize_(block, 3)
    block.eval()
    x = torch.randn(2, 13, 11, 8)
    before = x.clone()
    calls = []
    whole = MBConv._block
    monkeypatch.setattr(MBConv, "_block", lambda self, t: calls.append(t.shape[1]) or whole(self, t))
    with torch.no_grad():
        want = whole(block, x)
        monkeypatch.setattr(MBConv, "STRIP_BYTES", strip_bytes)
        got = block(x)
    rows = max(1, strip_bytes // (2 * 11 * 32 * 4))
    assert len(calls) == -(-13 // rows) if rows < 13 else calls == [13]
    assert torch.allclose(got, want, rtol=0, atol=1e-6), float((got - want).abs().max())
    assert torch.equal(x, before)
    if strip_bytes == 1:  # training mode (BatchNorm on batch statistics) never splits the batch's rows
        calls.clear()
        with torch.no_grad():
            block.train()(x)
        assert calls == [13]
