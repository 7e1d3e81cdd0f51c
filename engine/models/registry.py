"""Model registry: names -> builders, input size, pixel normalisation, prompt kinds.

A small builder registry in the style of segment-anything's ``sam_model_registry``: plain builder
functions, one private ``_build`` that loads a checkpoint. Checkpoints are untrusted input and are
read with ``torch.load(..., weights_only=True)`` (no arbitrary unpickling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.models.mask_decoder import MaskDecoder
from engine.models.prompt_encoder import PromptEncoder
from engine.models.sam import SamModel
from engine.models.tiny_vit import lite_medsam_encoder, mobile_sam_encoder
from engine.models.transformer import TwoWayTransformer
from engine.models.vit import vit_b_encoder, vit_h_encoder, vit_l_encoder


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a registered model is and how to feed it.

    ``input_size``: side S of the square encoder input (pixels). ``pixel_norm``: "imagenet" (SAM
    mean/std) or "minmax" (per-image [0, 1]). ``prompt_kinds``: prompts the released checkpoint
    answers ("point", "box", "mask"); ``box_only`` models need points turned into box proposals.
    ``uniform_scale``: prompts are mapped with one ratio ``S / max(H, W)`` (LiteMedSAM's recipe).
    ``resize``: the image resize recipe of ``engine.transforms`` ("pil": segment-anything's
    ``ResizeLongestSide``; "area": LiteMedSAM's OpenCV INTER_AREA; "fast": OpenCV, no model's
    recipe, opt in with ``dataclasses.replace(spec, resize="fast")``).
    """

    name: str
    description: str
    input_size: int
    pixel_norm: str
    prompt_kinds: frozenset[str]
    encoder: Callable[[], nn.Module]
    uniform_scale: bool = False
    resize: str = "pil"

    @property
    def box_only(self) -> bool:
        return "point" not in self.prompt_kinds


_POINTS = frozenset({"point", "box", "mask"})

REGISTRY: Mapping[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("sam_vit_b", "SAM ViT-B (Meta, 91M encoder params)", 1024, "imagenet", _POINTS, vit_b_encoder),
        ModelSpec("sam_vit_l", "SAM ViT-L (Meta, 308M encoder params)", 1024, "imagenet", _POINTS, vit_l_encoder),
        ModelSpec("sam_vit_h", "SAM ViT-H (Meta, 636M encoder params)", 1024, "imagenet", _POINTS, vit_h_encoder),
        ModelSpec("mobile_sam", "MobileSAM TinyViT-5M (1024 input)", 1024, "imagenet", _POINTS, mobile_sam_encoder),
        ModelSpec(
            "lite_medsam",
            "LiteMedSAM TinyViT (256 input, medical; answers boxes only)",
            256,
            "minmax",
            frozenset({"box", "mask"}),
            lite_medsam_encoder,
            uniform_scale=True,
            resize="area",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name; unknown names list the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}") from None


def _embedding_hw(encoder: nn.Module) -> tuple[int, int]:
    """Spatial size of ``encoder``'s output embedding, from its ``output_size`` (ViT: S/16;
    TinyViT: set by its stem and merge strides, 64 for both MobileSAM at 1024 and LiteMedSAM at 256)."""
    size = getattr(encoder, "output_size", None)
    if size is None:
        raise TypeError(
            f"image encoder {type(encoder).__name__} has no output_size (H, W); the prompt encoder "
            "needs it to size its positional grid"
        )
    return (int(size[0]), int(size[1]))


def build_model(spec: ModelSpec | str) -> SamModel:
    """Build a model with random weights (eval mode)."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    side = spec.input_size
    encoder = spec.encoder()
    model = SamModel(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=_embedding_hw(encoder), input_image_size=(side, side),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    return model.eval()


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used for the requested model."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (``weights_only=True``); accepts a plain state_dict or ``{"model": ...}``."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(
            f"{path} is not a valid checkpoint ({_why_unreadable(exc)}); a checkpoint is a PyTorch state_dict "
            "of tensors. Delete it and run `arsel weights fetch NAME` again, or pass the right --checkpoint."
        ) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a valid checkpoint: it does not hold a state_dict of tensors "
                              f"(got {type(obj).__name__})")
    bad = next((k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{path} is not a valid checkpoint: weight {bad!r} is not finite (NaN or inf); "
                              "the file is corrupt. Delete it and run `arsel weights fetch NAME` again.")
    return obj


def _why_unreadable(exc: Exception) -> str:
    """A short reason for a failed ``torch.load``, never torch's advice to unpickle arbitrary code."""
    text = str(exc)
    if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
        return "it holds Python objects besides tensors, which are not loaded for safety"
    if isinstance(exc, EOFError) or "EOF" in text or "truncated" in text.lower() or "central directory" in text:
        return "it is truncated or empty"
    return f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:160]}"


def identify(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the registered model a state_dict looks like, from its key layout and shapes."""
    qkv = state.get("image_encoder.blocks.0.attn.qkv.weight")
    if qkv is not None:
        return {768: "sam_vit_b", 1024: "sam_vit_l", 1280: "sam_vit_h"}.get(int(qkv.shape[1]))
    stem = state.get("image_encoder.patch_embed.seq.0.c.weight")
    if stem is not None:
        return "mobile_sam" if int(stem.shape[-1]) == 3 else "lite_medsam"
    return None


def load_model(name: str, checkpoint: Path) -> SamModel:
    """Build ``name`` and load ``checkpoint`` with a strict key match.

    Raises ``CheckpointError`` naming the model the file looks like when it is of another kind.
    """
    spec = get_spec(name)
    state = read_state_dict(checkpoint)
    looks_like = identify(state)
    if looks_like != spec.name:
        hint = f"it looks like a {looks_like!r} checkpoint" if looks_like else "it is not a SAM-family checkpoint"
        raise CheckpointError(
            f"{checkpoint} cannot be loaded as {spec.name!r}: {hint}. "
            + (f"Use --model {looks_like}." if looks_like else "Check the file.")
        )
    model = build_model(spec)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{checkpoint} does not match {spec.name!r}: {str(exc)[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{checkpoint} does not match {spec.name!r}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (first five of each)"
        )
    return model.eval()
