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


class VersionKey:
    """Identity and state of source tensors, for memoising values derived from them (fused weights).

    Two keys are equal when they hold the very same tensor objects (``is``) and each has the same
    in-place version counter, storage address, shape, dtype and device. Holding the tensors keeps
    a freed tensor's address from matching a new one. ``load_state_dict`` (in-place ``copy_``),
    ``optimizer.step()`` and other in-place edits bump the version counter; replacing a parameter
    changes the identity. Edits through ``p.data`` (``p.data.copy_(w)``) bump no counter: call
    ``clear_caches(model)`` after them.
    """

    __slots__ = ("state", "tensors")

    def __init__(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.tensors = tensors
        self.state = tuple((t._version, t.data_ptr(), t.dtype, t.device, tuple(t.shape)) for t in tensors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionKey):
            return NotImplemented
        return (
            len(self.tensors) == len(other.tensors)
            and all(a is b for a, b in zip(self.tensors, other.tensors))
            and self.state == other.state
        )

    __hash__ = None  # type: ignore[assignment] - mutable identity, never a dict key


def version_key(*tensors: torch.Tensor) -> VersionKey | None:
    """``VersionKey`` of the tensors, or None where one is an inference tensor (no version counter:
    a value derived from it cannot be checked, so it must not be cached)."""
    if any(t.is_inference() for t in tensors):
        return None
    return VersionKey(tensors)


# Weight-derived caches live in module attributes named ``_cache_*`` (set to None when empty).
CACHE_PREFIX = "_cache_"


def clear_caches(model: nn.Module) -> int:
    """Drop every weight-derived cache in ``model`` and its submodules; returns how many were held.

    Caches (TinyViT's folded conv/BN weights and attention biases, the prompt encoder's dense PE,
    the transformer's image side) are checked against the source tensors' identity and version
    counters on each use, which catches ``load_state_dict`` and in-place updates. Call this after
    changing weights through ``.data`` (``p.data.copy_(w)``, ``p.data = w``), which the version
    counter does not see.
    """
    held = 0
    for module in model.modules():
        attrs = vars(module)
        for name in [k for k in attrs if k.startswith(CACHE_PREFIX)]:
            held += attrs[name] is not None
            attrs[name] = None
    return held


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
