"""TinyViT image encoder as used by MobileSAM (1024 input) and LiteMedSAM (256 input).

A ``(B, 3, S, S)`` float image becomes a ``(B, 256, R, R)`` float embedding, ``R`` computed from
the config (64 for both released models). Layout: a conv stem of two ``Conv2d_BN`` (3x3 stride 2
for MobileSAM, 1x1 stride 1 for LiteMedSAM), an MBConv stage, then windowed-attention stages with
learned per-offset ``attention_biases``, patch-merging convs between stages (stride 1 into the
last stage), and a conv neck to 256 channels.

BatchNorm runs with its running statistics (call ``eval()``); no conv/BN fusion is needed.
Parameter and buffer names equal MobileSAM's / LiteMedSAM's ``TinyViT`` so the released
checkpoints load with a strict key match (``with_head`` adds MobileSAM's unused classifier head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.common import sam_neck
from engine.models.vit import check_encoder_input, window_partition, window_unpartition

__all__ = ["TinyViT", "TinyViTConfig", "lite_medsam_encoder", "mobile_sam_encoder"]


def _conv_out(size: int, kernel: int, stride: int) -> int:
    """Output side of a conv with ``padding = kernel // 2``."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True, slots=True)
class TinyViTConfig:
    """Hyper-parameters of a SAM-style TinyViT (defaults: MobileSAM's TinyViT-5M at 1024 input).

    Stage 0 is convolutional (MBConv); stages 1.. use windowed attention with ``num_heads[i]`` and
    ``window_sizes[i]`` (entry 0 of both is unused). ``merge_strides[i]`` is the stride of the
    patch merging between stage ``i`` and ``i + 1`` (the SAM variants keep the last merge at
    stride 1: the reference code picks stride 1 for out dims 320/448/576, the last stage of every
    released TinyViT size). The stem is two ``stem_kernel`` convs of stride ``stem_stride``
    (3/2 for MobileSAM, 1/1 for LiteMedSAM). ``with_head`` adds the classifier ``norm_head`` /
    ``head`` (to ``head_classes``) that MobileSAM's checkpoint carries; ``forward`` never uses it.
    """

    img_size: int = 1024
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    merge_strides: tuple[int, ...] = (2, 2, 1)
    stem_kernel: int = 3
    stem_stride: int = 2
    in_chans: int = 3
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    out_chans: int = 256
    with_head: bool = False
    head_classes: int = 1000

    def __post_init__(self) -> None:
        n = len(self.embed_dims)
        lengths = {"depths": len(self.depths), "num_heads": len(self.num_heads), "window_sizes": len(self.window_sizes)}
        if n < 2 or any(v != n for v in lengths.values()) or len(self.merge_strides) != n - 1:
            raise ValueError(
                f"embed_dims has {n} stages (need >= 2); depths, num_heads and window_sizes need {n} "
                f"entries and merge_strides {n - 1}, got {lengths} and {len(self.merge_strides)}"
            )
        for i in range(1, n):
            if self.num_heads[i] <= 0 or self.embed_dims[i] % self.num_heads[i]:
                raise ValueError(
                    f"stage {i}: embed_dim {self.embed_dims[i]} must be divisible by num_heads {self.num_heads[i]}"
                )
            if self.window_sizes[i] <= 0:
                raise ValueError(f"stage {i}: window size must be positive, got {self.window_sizes[i]}")
        if self.stem_kernel % 2 == 0 or min(self.stem_stride, *self.merge_strides) <= 0:
            raise ValueError(
                f"stem_kernel must be odd and strides positive, got stem_kernel={self.stem_kernel}, "
                f"stem_stride={self.stem_stride}, merge_strides={self.merge_strides}"
            )
        if self.img_size <= 0:
            raise ValueError(f"img_size must be positive, got {self.img_size}")

    def stage_resolutions(self) -> tuple[int, ...]:
        """Side of the feature grid entering each stage (the last one is the output side)."""
        side = self.img_size
        for _ in range(2):  # the stem's two convs
            side = _conv_out(side, self.stem_kernel, self.stem_stride)
        sides = [side]
        for stride in self.merge_strides:
            sides.append(_conv_out(sides[-1], 3, stride))
        return tuple(sides)

    @property
    def output_size(self) -> int:
        """Side ``R`` of the ``(B, out_chans, R, R)`` output embedding."""
        return self.stage_resolutions()[-1]


class Conv2dBN(nn.Module):
    """``Conv2d`` (no bias, ``padding = kernel // 2``) followed by ``BatchNorm2d``; keys ``c.*``, ``bn.*``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1, bn_weight_init: float = 1.0
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.c(x))


class PatchEmbed(nn.Module):
    """Stem ``Conv2d_BN -> GELU -> Conv2d_BN``: ``(B, C_in, S, S)`` -> ``(B, D0, S', S')``."""

    def __init__(self, cfg: TinyViTConfig) -> None:
        super().__init__()
        dim, k, s = cfg.embed_dims[0], cfg.stem_kernel, cfg.stem_stride
        self.seq = nn.Sequential(Conv2dBN(cfg.in_chans, dim // 2, k, s), nn.GELU(), Conv2dBN(dim // 2, dim, k, s))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU. ``(B, C, H, W)``."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, kernel=3, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.act3(x + y)


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 conv of ``stride``, 1x1 conv (GELU between).

    Input ``(B, C, H, W)`` or tokens ``(B, H*W, C)`` on the ``side x side`` grid; output tokens
    ``(B, H'*W', out_dim)``.
    """

    def __init__(self, side: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.side = side
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, kernel=3, stride=stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 3:
            x = x.reshape(x.shape[0], self.side, self.side, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.conv3(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Pre-normed multi-head attention on ``(B', N, C)`` windows of ``window x window`` tokens.

    ``attention_biases`` ``(heads, window**2)`` holds one learned bias per absolute offset
    ``(|dy|, |dx|)``, stored at index ``|dy| * window + |dx|`` (the order in which the reference
    enumerates offsets); ``attention_bias_idxs`` maps every query/key pair to its offset.
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

    def forward(self, x: Tensor) -> Tensor:
        """``(B', N, C)`` -> ``(B', N, C)``."""
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=3)  # per head: [q | k | v]
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class NormMlp(nn.Module):
    """``LayerNorm -> fc1 -> GELU -> fc2`` on the last axis."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise local conv, MLP on ``(B, side*side, C)`` tokens."""

    def __init__(self, dim: int, side: int, num_heads: int, window: int, mlp_ratio: float, local_conv: int) -> None:
        super().__init__()
        self.side = side
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = NormMlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, kernel=local_conv, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        grid = x.reshape(b, self.side, self.side, c)
        windows, pad_hw = window_partition(grid, self.window)
        attended = self.attn(windows.view(-1, self.window * self.window, c))
        attended = window_unpartition(attended.view_as(windows), self.window, pad_hw, (self.side, self.side))
        x = x + attended.reshape(b, n, c)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, self.side, self.side))
        x = x.flatten(2).transpose(1, 2)
        return x + self.mlp(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on ``(B, C, H, W)``, then patch merging to tokens."""

    def __init__(self, cfg: TinyViTConfig, side: int) -> None:
        super().__init__()
        dim = cfg.embed_dims[0]
        self.blocks = nn.ModuleList(MBConv(dim, cfg.mbconv_expand_ratio) for _ in range(cfg.depths[0]))
        self.downsample = PatchMerging(side, dim, cfg.embed_dims[1], cfg.merge_strides[0])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class BasicLayer(nn.Module):
    """Attention stage ``i``: TinyViT blocks on tokens, then patch merging unless it is the last."""

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
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT image encoder.

    ``forward(x)``: ``x`` float ``(B, in_chans, img_size, img_size)`` -> float
    ``(B, out_chans, R, R)`` with ``R = config.output_size`` (64 for MobileSAM and LiteMedSAM).
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

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, S, S)`` float -> ``(B, 256, R, R)`` float; ``ValueError`` on another shape."""
        check_encoder_input(x, self.config.in_chans, self.config.img_size)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        side = self.config.output_size
        x = x.reshape(x.shape[0], side, side, -1).permute(0, 3, 1, 2)
        return self.neck(x)


def mobile_sam_encoder() -> TinyViT:
    """MobileSAM's TinyViT-5M at 1024 input (3x3 stride-2 stem, classifier head kept for loading)."""
    return TinyViT(TinyViTConfig(img_size=1024, stem_kernel=3, stem_stride=2, with_head=True))


def lite_medsam_encoder() -> TinyViT:
    """LiteMedSAM's TinyViT at 256 input (1x1 stride-1 stem, no classifier head)."""
    return TinyViT(TinyViTConfig(img_size=256, stem_kernel=1, stem_stride=1, with_head=False))
