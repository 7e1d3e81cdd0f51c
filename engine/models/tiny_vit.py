"""TinyViT image encoder as used by MobileSAM (1024 input) and LiteMedSAM (256 input).

A ``(B, 3, S, S)`` float image becomes a ``(B, 256, R, R)`` float embedding, ``R`` computed from
the config (64 for both released models). Layout: a conv stem of two ``Conv2d_BN`` (3x3 stride 2
for MobileSAM, 1x1 stride 1 for LiteMedSAM), an MBConv stage, then windowed-attention stages with
learned per-offset ``attention_biases``, patch-merging convs between stages (stride 1 into the
last stage), and a conv neck to 256 channels.

BatchNorm runs with its running statistics (call ``eval()``). Eager CPU speed choices (each
faster than the official TinyViT in interleaved runs; current figures: ``bench/bench_model.py``):
* channels-last ``(B, H, W, C)`` grids: 1x1 convs are one 2-D ``addmm``, depthwise convs use
  oneDNN's channels-last kernels;
* eval-mode BN folded into the convs (cached, keyed on the sources' identity and version counters,
  ``engine.models.fast_ops``);
* attention is matmul + in-place bias + softmax with the gathered bias and the q-scale (folded
  into the qkv weight) cached (SDPA's float-mask path spent its time in isneginf/all/where);
* in-place GELU and residual adds on fresh intermediates; qkv on the unpadded grid (padded tokens
  get the constant ``qkv(norm.bias)``);
* the MBConv stage (67 MB intermediates) runs in ~8 MB row strips (``MBConv.STRIP_BYTES``) to
  stay in cache; chunked MLPs did not help.
Under ``torch.onnx.export`` the layout differs, same function: stem, MBConv stage and patch
merging run channels-first and the blocks' MLPs as 1x1 convs (``forward_nchw``), which ONNX
Runtime's NCHWc conv kernels run faster than channels-last Gemm + bias (``bench_backends.py``);
strips did not help ONNX Runtime.
The stem, MBConv stage and patch merging live in ``engine.models.tiny_vit_convs``.
Parameter and buffer names equal MobileSAM's / LiteMedSAM's ``TinyViT`` so the released
checkpoints load with a strict key match (``with_head`` adds MobileSAM's unused classifier head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.common import sam_neck
from engine.models.fast_ops import Conv2dBN, add, cached, fast_path, gelu, linear
from engine.models.tiny_vit_config import TinyViTConfig
from engine.models.tiny_vit_convs import ConvLayer, PatchEmbed, PatchMerging, export_layout
from engine.models.vit import check_encoder_input

__all__ = ["TinyViT", "TinyViTConfig", "lite_medsam_encoder", "mobile_sam_encoder"]


class Attention(nn.Module):
    """Multi-head attention on ``window x window`` windows (pre-norm, learned offset biases).

    ``attention_biases`` ``(heads, window**2)`` holds one learned bias per absolute offset
    ``(|dy|, |dx|)``, stored at index ``|dy| * window + |dx|`` (the order in which the reference
    enumerates offsets); ``attention_bias_idxs`` maps every query/key pair to its offset.
    ``TinyViTBlock`` drives it: ``qkv_params`` / ``bias`` are cached in eval + no-grad.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.window = window
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        coords = torch.arange(window)
        ys, xs = coords.repeat_interleave(window), coords.repeat(window)
        idx = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("attention_bias_idxs", idx, persistent=False)  # (N, N) long, not saved

    def _scaled_qkv(self) -> Tensor:
        d = self.key_dim
        row_scale = torch.ones(self.num_heads, 3 * d, dtype=self.qkv.weight.dtype, device=self.qkv.weight.device)
        row_scale[:, :d] = self.scale  # per head [q | k | v]: fold the softmax scale into q's rows
        row_scale = row_scale.flatten()
        return torch.cat([self.qkv.weight * row_scale[:, None], (self.qkv.bias * row_scale)[:, None]], dim=1)

    def qkv_params(self) -> tuple[Tensor, Tensor]:
        """``qkv`` weight and bias with the query rows pre-multiplied by ``scale``."""
        wb = cached(self, "qkv", (self.qkv.weight, self.qkv.bias), self._scaled_qkv)
        return wb[:, :-1], wb[:, -1]

    def bias(self) -> Tensor:
        """``(heads, N, N)`` bias gathered from ``attention_biases``."""
        idxs = self.attention_bias_idxs
        return cached(self, "bias", (self.attention_biases, idxs), lambda: self.attention_biases[:, idxs])

    def forward(self, windows: Tensor) -> Tensor:
        """Scaled qkv ``(B', heads, N, 3 * key_dim)`` -> ``(B', heads, N, key_dim)`` (before ``proj``)."""
        q, k, v = windows.split(self.key_dim, dim=3)
        # plain matmul + softmax: SDPA with a float mask checks for fully masked rows (isneginf /
        # all / where), ~0.2 s of a 4.5 s 1-thread mobile_sam encode under load
        attn = add(q @ k.transpose(-2, -1), self.bias())
        return attn.softmax(dim=-1) @ v


class NormMlp(nn.Module):
    """``LayerNorm -> fc1 -> GELU -> fc2`` on the last axis."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        if export_layout():  # as 1x1 convs
            y = self.norm(x).permute(0, 3, 1, 2)
            y = F.conv2d(F.gelu(F.conv2d(y, self.fc1.weight[:, :, None, None], self.fc1.bias)),
                         self.fc2.weight[:, :, None, None], self.fc2.bias)
            return y.permute(0, 2, 3, 1)
        return linear(gelu(linear(self.norm(x), self.fc1.weight, self.fc1.bias)), self.fc2.weight, self.fc2.bias)


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise local conv, MLP on a channels-last ``(B, side, side, C)`` grid.

    qkv is computed on the unpadded grid; padded tokens (zeros in the reference, whose LayerNorm
    output is the LayerNorm bias) get the constant ``qkv(norm.bias)``. ``proj`` runs on the
    padded grid after the windows are merged back, then the padding is cropped.
    """

    def __init__(self, dim: int, side: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int) -> None:
        super().__init__()
        self.side = side
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = NormMlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, kernel=local_conv, groups=dim)

    def _windows(self, x: Tensor) -> tuple[Tensor, int, int]:
        """``(B, H, W, C)`` -> scaled qkv windows ``(B * nH * nW, heads, ws * ws, 3 * key_dim)``."""
        b, h, w, c = x.shape
        ws, attn = self.window, self.attn
        weight, bias = attn.qkv_params()
        qkv = linear(attn.norm(x), weight, bias)  # (B, H, W, 3C)
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        hp, wp = h + pad_h, w + pad_w
        if pad_h or pad_w:
            fill = F.linear(attn.norm.bias, weight, bias)  # qkv of a zero token after LayerNorm
            if fast_path():
                padded = qkv.new_empty(b, hp, wp, 3 * c)
                padded[:, :h, :w] = qkv
                padded[:, h:] = fill
                padded[:, :h, w:] = fill
            else:
                padded = torch.cat([qkv, fill.expand(b, h, pad_w, 3 * c)], dim=2)
                padded = torch.cat([padded, fill.expand(b, pad_h, wp, 3 * c)], dim=1)
            qkv = padded
        nh, nw = hp // ws, wp // ws
        qkv = qkv.view(b, nh, ws, nw, ws, attn.num_heads, 3 * attn.key_dim).permute(0, 1, 3, 5, 2, 4, 6)
        return qkv.reshape(b * nh * nw, attn.num_heads, ws * ws, 3 * attn.key_dim), nh, nw

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        ws, attn = self.window, self.attn
        windows, nh, nw = self._windows(x)
        out = attn(windows)  # (B * nH * nW, heads, N, d)
        out = out.view(b, nh, nw, attn.num_heads, ws, ws, attn.key_dim).permute(0, 1, 4, 2, 5, 3, 6)
        out = linear(out.reshape(b, nh * ws, nw * ws, c), attn.proj.weight, attn.proj.bias)
        if nh * ws != h or nw * ws != w:
            x = x + out[:, :h, :w]  # a fresh contiguous sum (the crop is a strided view)
        else:
            x = add(out, x)  # into ``out``: the caller's ``x`` is never written
        x = self.local_conv.forward_cl(x)
        return add(self.mlp(x), x)


class BasicLayer(nn.Module):
    """Attention stage ``i``: TinyViT blocks, then patch merging unless it is the last (channels-last grids)."""

    def __init__(self, cfg: TinyViTConfig, i: int, side: int) -> None:
        super().__init__()
        dim = cfg.embed_dims[i]
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, side, cfg.num_heads[i], cfg.window_sizes[i], cfg.mlp_ratio, cfg.local_conv_size)
            for _ in range(cfg.depths[i])
        )
        last = i == len(cfg.embed_dims) - 1
        self.downsample = None if last else PatchMerging(side, dim, cfg.embed_dims[i + 1], cfg.merge_strides[i])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is None:
            return x
        if export_layout():
            return self.downsample.forward_nchw(x.permute(0, 3, 1, 2))
        return self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT image encoder.

    ``forward(x)``: ``x`` float ``(B, in_chans, img_size, img_size)`` -> float
    ``(B, out_chans, R, R)`` with ``R = config.output_size`` (64 for MobileSAM and LiteMedSAM).
    Internally every stage works on channels-last ``(B, H, W, C)`` grids.
    """

    def __init__(self, cfg: TinyViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.img_size = cfg.img_size
        sides = cfg.stage_resolutions()
        self.patch_embed = PatchEmbed(cfg)
        layers: list[nn.Module] = [ConvLayer(cfg, sides[0])]
        layers += [BasicLayer(cfg, i, sides[i]) for i in range(1, len(cfg.embed_dims))]
        self.layers = nn.ModuleList(layers)
        if cfg.with_head:
            self.norm_head = nn.LayerNorm(cfg.embed_dims[-1])
            self.head = nn.Linear(cfg.embed_dims[-1], cfg.head_classes)
        self.neck = sam_neck(cfg.embed_dims[-1], cfg.out_chans)

    @property
    def output_size(self) -> tuple[int, int]:
        """Spatial size ``(H, W)`` of the output embedding."""
        return (self.config.output_size, self.config.output_size)

    def _neck(self, x: Tensor) -> Tensor:
        """``sam_neck`` on a channels-last grid (its LayerNorm2d is a last-axis LayerNorm here)."""
        conv1, norm1, conv2, norm2 = self.neck
        x = linear(x, conv1.weight.flatten(1))
        x = F.layer_norm(x, (self.config.out_chans,), norm1.weight, norm1.bias, norm1.eps)
        x = F.conv2d(x.permute(0, 3, 1, 2), conv2.weight, None, 1, 1).permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.config.out_chans,), norm2.weight, norm2.bias, norm2.eps)
        return x.permute(0, 3, 1, 2).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, S, S)`` float -> ``(B, 256, R, R)`` float; ``ValueError`` on another shape."""
        check_encoder_input(x, self.config.in_chans, self.config.img_size)
        if export_layout():  # conv stages channels-first
            x = self.layers[0].forward_nchw(self.patch_embed.forward_nchw(x))
        else:
            x = self.layers[0](self.patch_embed(x.permute(0, 2, 3, 1).contiguous()))  # channels-last from here
        for layer in self.layers[1:]:
            x = layer(x)
        return self._neck(x)


def mobile_sam_encoder() -> TinyViT:
    """MobileSAM's TinyViT-5M at 1024 input (3x3 stride-2 stem, classifier head kept for loading)."""
    return TinyViT(TinyViTConfig(img_size=1024, stem_kernel=3, stem_stride=2, with_head=True))


def lite_medsam_encoder() -> TinyViT:
    """LiteMedSAM's TinyViT at 256 input (1x1 stride-1 stem, no classifier head)."""
    return TinyViT(TinyViTConfig(img_size=256, stem_kernel=1, stem_stride=1, with_head=False))
