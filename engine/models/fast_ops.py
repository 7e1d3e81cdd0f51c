"""Eager-inference shortcuts of the TinyViT encoder: in-place ops, cached derived weights, ``Conv2dBN``.

Every shortcut is on only outside autograd and outside any tracing or compiling
(``engine.models.common.is_tracing``: ``torch.jit.trace``, ONNX export, dynamo / ``torch.compile``
/ ``torch.export``), so exported and compiled graphs compute the derived weights themselves and
never write into their inputs. Measured costs are in ``engine.models.tiny_vit``'s docstring.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.models.common import CACHE_PREFIX, is_tracing, version_key

__all__ = ["Conv2dBN", "add", "cached", "fast_path", "gelu", "linear"]


def fast_path() -> bool:
    """True when in-place ops and cached derived weights may be used: no autograd, no tracing/compiling."""
    return not torch.is_grad_enabled() and not is_tracing()


def cached(module: nn.Module, name: str, sources: tuple[Tensor, ...], compute: Callable[[], Tensor]) -> Tensor:
    """``compute()``, memoised on ``module`` (attribute ``_cache_{name}``) while ``fast_path()`` holds.

    The entry holds the source tensors and is reused only for the same tensor objects at the same
    version counters (``engine.models.common.VersionKey``): ``load_state_dict``, in-place edits,
    ``.to()`` and replaced parameters invalidate it; ``.data`` edits need
    ``engine.models.common.clear_caches``. Nothing is added to the state dict.
    """
    if not fast_path():
        return compute()
    key = version_key(*sources)
    if key is None:  # inference tensors carry no version counter
        return compute()
    attr = CACHE_PREFIX + name
    hit = module.__dict__.get(attr)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = compute()
    module.__dict__[attr] = (key, value)
    return value


def gelu(x: Tensor) -> Tensor:
    """GELU, in place on fresh intermediates when allowed (avoids allocating a large output).

    Only pass tensors the caller owns (never a module input)."""
    return torch.ops.aten.gelu_(x) if fast_path() else F.gelu(x)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` on the last axis via one 2-D ``addmm`` (4-D inputs otherwise take ``mm`` plus a
    separate bias pass and output copy)."""
    return F.linear(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])


def add(fresh: Tensor, other: Tensor) -> Tensor:
    """``fresh + other``, written into ``fresh`` when allowed: ``fresh`` must be an intermediate
    the caller owns (never a module input, which would be overwritten)."""
    return fresh.add_(other) if fast_path() else fresh + other


class Conv2dBN(nn.Module):
    """``Conv2d`` (no bias, ``padding = kernel // 2``) followed by ``BatchNorm2d``; keys ``c.*``, ``bn.*``.

    ``forward`` takes ``(B, C, H, W)``; the encoder uses ``forward_cl`` on channels-last
    ``(B, H, W, C)`` grids. In eval mode BN is folded into the conv (cached fused weight and
    bias, recomputed when any source tensor changes); training mode runs the real BN.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, groups: int = 1, bn_weight_init: float = 1.0
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)
        self.pointwise = kernel == 1 and stride == 1 and groups == 1

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.c(x))

    def _fuse(self) -> Tensor:
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = self.c.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        if self.pointwise:
            weight = weight.flatten(1)
        return torch.cat([weight.flatten(), bias])  # one tensor to cache; split in fused()

    def fused(self) -> tuple[Tensor, Tensor]:
        """Folded ``(weight, bias)``; weight ``(out, in)`` for pointwise convs, else conv-shaped."""
        bn = self.bn
        sources = (self.c.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        flat = cached(self, "fused", sources, self._fuse)
        n = self.c.weight.numel()
        shape = self.c.weight.shape[:2] if self.pointwise else self.c.weight.shape
        return flat[:n].view(shape), flat[n:]

    def forward_nchw(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H', W')`` with the folded BN in eval mode (one conv)."""
        if self.training:
            return self.bn(self.c(x))
        weight, bias = self.fused()
        c = self.c
        weight = weight.reshape(c.weight.shape)
        return F.conv2d(x, weight, bias, c.stride, c.padding, 1, c.groups)

    def forward_cl(self, x: Tensor) -> Tensor:
        """``(B, H, W, C_in)`` -> ``(B, H', W', C_out)`` (channels-last in and out)."""
        if self.pointwise and not self.training:  # 1x1 conv as a matmul on channels-last tokens
            return linear(x, *self.fused())
        # channels-last input: oneDNN returns channels-last, so the permute back is a free view
        return self.forward_nchw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
