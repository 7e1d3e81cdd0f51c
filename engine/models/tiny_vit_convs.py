"""TinyViT's convolutional parts: the stem, the MBConv stage and patch merging.

Eager inference runs them on channels-last ``(B, H, W, C)`` grids (``forward``); exported graphs
use ``forward_nchw`` (channels-first, plain convolutions), see ``engine.models.tiny_vit``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.fast_ops import Conv2dBN, add, fast_path, gelu
from engine.models.tiny_vit_config import TinyViTConfig

__all__ = ["ConvLayer", "MBConv", "PatchEmbed", "PatchMerging", "export_layout"]


def export_layout() -> bool:
    """Whether TinyViT runs its export layout (``torch.onnx.export``: conv stages channels-first,
    block MLPs as 1x1 convs; see ``engine.models.tiny_vit``) instead of the eager channels-last one."""
    return torch.onnx.is_in_onnx_export()


class PatchEmbed(nn.Module):
    """Stem ``Conv2d_BN -> GELU -> Conv2d_BN``: ``(B, S, S, C_in)`` -> ``(B, S', S', D0)`` (channels-last)."""

    def __init__(self, cfg: TinyViTConfig) -> None:
        super().__init__()
        dim, k, s = cfg.embed_dims[0], cfg.stem_kernel, cfg.stem_stride
        self.seq = nn.Sequential(Conv2dBN(cfg.in_chans, dim // 2, k, s), nn.GELU(), Conv2dBN(dim // 2, dim, k, s))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq[2].forward_cl(gelu(self.seq[0].forward_cl(x)))

    def forward_nchw(self, x: Tensor) -> Tensor:
        """``(B, C_in, S, S)`` -> ``(B, D0, S', S')``."""
        return self.seq[2].forward_nchw(F.gelu(self.seq[0].forward_nchw(x)))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU. ``(B, H, W, C)``.

    Eager CPU inference runs it in horizontal strips (1-row halo for the depthwise conv, so the
    result is the same): the expanded ``(B, rows, W, 4C)`` intermediate then stays near
    ``STRIP_BYTES`` instead of growing with the image, which is faster for this memory-bound block.
    """

    STRIP_BYTES = 8 << 20

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, kernel=3, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def _block(self, x: Tensor) -> Tensor:
        y = self.conv3.forward_cl(gelu(self.conv2.forward_cl(gelu(self.conv1.forward_cl(x)))))
        return gelu(add(y, x))

    def forward_nchw(self, x: Tensor) -> Tensor:
        """The block on a channels-first ``(B, C, H, W)`` grid (``export_layout``)."""
        y = self.conv3.forward_nchw(F.gelu(self.conv2.forward_nchw(F.gelu(self.conv1.forward_nchw(x)))))
        return F.gelu(y + x)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        row_bytes = b * w * self.conv1.c.out_channels * x.element_size()
        rows = max(1, self.STRIP_BYTES // max(1, row_bytes))
        if self.training or not (fast_path() and x.device.type == "cpu") or rows >= h:  # train BN: batch stats
            return self._block(x)
        out = torch.empty_like(x)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            a, z = max(0, r0 - 1), min(h, r1 + 1)  # halo rows feed the depthwise conv at the seams
            out[:, r0:r1] = self._block(x[:, a:z])[:, r0 - a : r1 - a]
        return out


class PatchMerging(nn.Module):
    """1x1 conv, depthwise 3x3 conv of ``stride``, 1x1 conv (GELU between): ``(B, H, W, C)`` ->
    ``(B, H', W', out_dim)`` (channels-last grids)."""

    def __init__(self, side: int, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.side = side
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, kernel=3, stride=stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = gelu(self.conv2.forward_cl(gelu(self.conv1.forward_cl(x))))
        return self.conv3.forward_cl(x)

    def forward_nchw(self, x: Tensor) -> Tensor:
        """Channels-first ``(B, C, H, W)`` in, channels-last ``(B, H', W', out_dim)`` out."""
        x = F.gelu(self.conv2.forward_nchw(F.gelu(self.conv1.forward_nchw(x))))
        return self.conv3.forward_nchw(x).permute(0, 2, 3, 1)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then patch merging; channels-last ``(B, H, W, C)`` grids."""

    def __init__(self, cfg: TinyViTConfig, side: int) -> None:
        super().__init__()
        dim = cfg.embed_dims[0]
        self.blocks = nn.ModuleList(MBConv(dim, cfg.mbconv_expand_ratio) for _ in range(cfg.depths[0]))
        self.downsample = PatchMerging(side, dim, cfg.embed_dims[1], cfg.merge_strides[0])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)

    def forward_nchw(self, x: Tensor) -> Tensor:
        """Channels-first ``(B, D0, H, W)`` in, channels-last ``(B, H', W', D1)`` out."""
        for block in self.blocks:
            x = block.forward_nchw(x)
        return self.downsample.forward_nchw(x)
