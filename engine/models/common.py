"""Small building blocks shared by the SAM-family modules.

Parameter names mirror the official segment-anything modules so that the released checkpoints
load with a strict key match.
"""

from __future__ import annotations

import torch
from torch import nn


def is_tracing() -> bool:
    """True under ``torch.jit.trace``, ``torch.onnx.export`` and dynamo/``torch.export`` capture.

    Eager-only shortcuts (caches, skipping work that a flag turns off) check this so exported graphs
    stay free of data-dependent control flow and of baked-in cached values.
    """
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(
        torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or (is_compiling is not None and is_compiling())
    )


def can_cache(*tensors: torch.Tensor) -> bool:
    """Whether an eager inference call may reuse values cached from an earlier call.

    No tracing (the graph must compute them), no autograd (cached tensors carry no graph) and no
    autocast (the cached dtype would depend on the autocast state) on the tensors' devices.
    """
    if is_tracing() or torch.is_grad_enabled():
        return False
    for device_type in {t.device.type for t in tensors}:
        try:
            if torch.is_autocast_enabled(device_type):
                return False
        except TypeError:  # torch < 2.4: no device argument
            if torch.is_autocast_enabled():
                return False
    return True


def version_key(*tensors: torch.Tensor) -> tuple:
    """Identity of tensors' current values: storage, dtype and in-place version (parameters/buffers)."""
    return tuple((t.data_ptr(), t.dtype, t.device, t.shape, t._version) for t in tensors)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an ``(B, C, H, W)`` float tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two-layer MLP ``lin1 -> act -> lin2`` on the last axis."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def sam_neck(in_chans: int, out_chans: int) -> nn.Sequential:
    """SAM's encoder neck: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (no conv biases).

    Shared by the ViT and TinyViT encoders; the ``nn.Sequential`` indices give the official
    checkpoint keys ``neck.0.weight`` ... ``neck.3.bias``.
    """
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size=1, bias=False),
        LayerNorm2d(out_chans),
        nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_chans),
    )
