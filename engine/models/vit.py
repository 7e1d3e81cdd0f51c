"""SAM image encoder (ViT-B / ViT-L / ViT-H, the ViTDet-style backbone of segment-anything).

A ``(B, 3, S, S)`` float image (``S = 1024``, already normalised) becomes a ``(B, 256, S/16, S/16)``
float embedding: 16x16 patch embedding, absolute position embedding, transformer blocks with
windowed (14x14) attention except at the global-attention indexes, decomposed relative position
biases in every block, and a conv neck down to 256 channels.

Parameter and buffer names equal the official ``segment_anything.modeling.ImageEncoderViT`` so
the released checkpoints load with a strict key match. The graph has no data-dependent control
flow: it traces and exports to ONNX with a dynamic batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.common import MLPBlock, sam_neck

__all__ = [
    "ImageEncoderViT",
    "ViTConfig",
    "check_encoder_input",
    "vit_b_encoder",
    "vit_h_encoder",
    "vit_l_encoder",
    "window_partition",
    "window_unpartition",
]


@dataclass(frozen=True, slots=True)
class ViTConfig:
    """Hyper-parameters of a SAM ViT image encoder (defaults: ViT-B at 1024 input).

    ``window_size`` is the side of the local attention windows; blocks listed in
    ``global_attn_indexes`` attend over the whole ``S/patch x S/patch`` grid instead.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    mlp_ratio: float = 4.0
    out_chans: int = 256
    window_size: int = 14
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.img_size <= 0 or self.patch_size <= 0 or self.img_size % self.patch_size:
            raise ValueError(
                f"img_size ({self.img_size}) must be a positive multiple of patch_size ({self.patch_size})"
            )
        if self.num_heads <= 0 or self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.window_size <= 0:
            raise ValueError(f"window_size must be positive, got {self.window_size}")
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} are outside the block range 0..{self.depth - 1}")

    @property
    def grid_size(self) -> int:
        """Side of the token grid and of the output embedding: ``img_size // patch_size``."""
        return self.img_size // self.patch_size


def check_encoder_input(x: Tensor, in_chans: int, img_size: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a float ``(B, in_chans, img_size, img_size)`` tensor.

    Skipped while tracing (the shapes are then fixed by the example input).
    """
    if torch.jit.is_tracing():
        return
    expected = f"(B, {in_chans}, {img_size}, {img_size})"
    if not isinstance(x, Tensor):
        raise ValueError(f"image encoder expects a float tensor of shape {expected}, got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != (in_chans, img_size, img_size):
        raise ValueError(
            f"image encoder expects a float tensor of shape {expected}, got {tuple(x.shape)}; "
            f"resize the longest side to {img_size}, pad to a square and put channels first"
        )
    if not x.is_floating_point():
        raise ValueError(f"image encoder expects a floating-point tensor, got {x.dtype}; convert it with .float()")


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into ``(B * nWindows, ws, ws, C)`` windows, zero-padding H and W up
    to multiples of ``ws``. Returns the windows and the padded size ``(Hp, Wp)``."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(windows: Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nWindows, ws, ws, C)`` -> ``(B, H, W, C)``."""
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    x = windows.view(-1, nh, nw, window_size, window_size, windows.shape[-1])
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, windows.shape[-1])
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def _relative_index(size: int, device: torch.device) -> Tensor:
    """``(size, size)`` long tensor ``q - k + size - 1``: row of the relative table for each pair."""
    coords = torch.arange(size, device=device)
    return coords[:, None] - coords[None, :] + (size - 1)


class Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, C)`` grid with decomposed relative positions.

    ``rel_pos_h`` / ``rel_pos_w``: ``(2 * side - 1, head_dim)`` tables for the grid the block sees
    (a window, or the whole token grid for global blocks). The grid must have that side.
    ``softmax(q k^T * scale + rel_bias) v`` runs in ``scaled_dot_product_attention`` with the
    relative-position bias as a float mask (fused kernels on CPU and GPU; exports to ONNX).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, side: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * side - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * side - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``, same dtype."""
        b, h, w, c = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        rel_h = self.rel_pos_h[_relative_index(h, x.device)].to(q.dtype)  # (H, H, head_dim)
        rel_w = self.rel_pos_w[_relative_index(w, x.device)].to(q.dtype)  # (W, W, head_dim)
        q_grid = q.reshape(b, self.num_heads, h, w, -1)  # unscaled q, as in the reference
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, rel_h)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, rel_w)
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class Block(nn.Module):
    """Pre-norm transformer block; attends within ``window_size`` windows, or globally when 0."""

    def __init__(self, cfg: ViTConfig, window_size: int) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        side = window_size if window_size > 0 else cfg.grid_size
        self.attn = Attention(dim, cfg.num_heads, cfg.qkv_bias, side)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * cfg.mlp_ratio), act=nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            windows, pad_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(windows), self.window_size, pad_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv: ``(B, C_in, S, S)`` -> ``(B, S/p, S/p, D)``."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM ViT image encoder.

    ``forward(x)``: ``x`` float ``(B, in_chans, img_size, img_size)`` (normalised pixels) ->
    float ``(B, out_chans, img_size/patch, img_size/patch)``, i.e. ``(B, 256, 64, 64)`` for SAM.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.img_size = cfg.img_size
        grid = cfg.grid_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        self.neck = sam_neck(cfg.embed_dim, cfg.out_chans)

    @property
    def output_size(self) -> tuple[int, int]:
        """Spatial size ``(H, W)`` of the output embedding."""
        return (self.config.grid_size, self.config.grid_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, S, S)`` float -> ``(B, 256, S/16, S/16)`` float; ``ValueError`` on another shape."""
        check_encoder_input(x, self.config.in_chans, self.config.img_size)
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def vit_b_encoder() -> ImageEncoderViT:
    """SAM ViT-B encoder (768 wide, 12 blocks, 12 heads), random weights."""
    return ImageEncoderViT(ViTConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)))


def vit_l_encoder() -> ImageEncoderViT:
    """SAM ViT-L encoder (1024 wide, 24 blocks, 16 heads), random weights."""
    return ImageEncoderViT(ViTConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)))


def vit_h_encoder() -> ImageEncoderViT:
    """SAM ViT-H encoder (1280 wide, 32 blocks, 16 heads), random weights."""
    return ImageEncoderViT(ViTConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)))
