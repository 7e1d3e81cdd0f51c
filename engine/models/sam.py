"""``SamModel``: image encoder + prompt encoder + mask decoder with the ``engine.contract`` interface.

``decode`` has exactly the semantics of the official SAM ONNX decoder (``SamOnnxModel`` with
``return_single_mask=False``, no upscaling, no ``orig_im_size``): one image embedding, a batch of
B prompts, all four mask tokens out. ``forward`` is the same decoder graph without input checks;
it has no data-dependent control flow and is the entry point to trace/export (dynamic B and N).

Attribute names (``image_encoder``, ``prompt_encoder``, ``mask_decoder``) give the state_dict keys
of the official checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.contract import LABEL_BACKGROUND, LABEL_BOX_BR, LABEL_BOX_TL, LABEL_FOREGROUND, LABEL_PAD
from engine.models.common import is_tracing
from engine.models.mask_decoder import MaskDecoder
from engine.models.prompt_encoder import PromptEncoder

_VALID_LABELS = (LABEL_PAD, LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_BOX_TL, LABEL_BOX_BR)


def _shape_error(name: str, expected: str, tensor: Tensor, fix: str) -> ValueError:
    return ValueError(f"{name} must have shape {expected}, got {tuple(tensor.shape)}; {fix}")


def check_decoder_inputs(
    image_embeddings: Tensor,
    point_coords: Tensor,
    point_labels: Tensor,
    mask_input: Tensor,
    has_mask_input: Tensor,
    *,
    embed_dim: int = 256,
    embed_hw: tuple[int, int] = (64, 64),
) -> None:
    """Raise ``ValueError`` unless the inputs follow ``engine.contract``'s decoder shapes and labels.

    Expected: ``image_embeddings`` ``(1, embed_dim, H, W)``, ``point_coords`` ``(B, N, 2)`` with
    N >= 1, ``point_labels`` ``(B, N)`` with values in {-1, 0, 1, 2, 3}, ``mask_input``
    ``(B, 1, 4H, 4W)``, ``has_mask_input`` ``(B,)``; all torch tensors of one floating dtype
    (float32 per the contract). Reads the labels (a device sync), so keep it out of traced code.
    """
    named = {
        "image_embeddings": image_embeddings,
        "point_coords": point_coords,
        "point_labels": point_labels,
        "mask_input": mask_input,
        "has_mask_input": has_mask_input,
    }
    for name, value in named.items():
        if not isinstance(value, Tensor):
            raise ValueError(
                f"{name} must be a torch.Tensor, got {type(value).__name__}; convert with torch.from_numpy"
            )
        if not value.is_floating_point():
            raise ValueError(f"{name} must be float32, got {value.dtype}; cast with .float()")
    dtypes = {name: value.dtype for name, value in named.items()}
    if len(set(dtypes.values())) != 1:
        raise ValueError(
            f"decoder inputs must share one float dtype (float32), got {dtypes}; cast them all with .float()"
        )
    h, w = embed_hw
    if tuple(image_embeddings.shape) != (1, embed_dim, h, w):
        raise _shape_error(
            "image_embeddings", f"(1, {embed_dim}, {h}, {w})", image_embeddings,
            "pass one image's encoder output (SamModel.encode); prompts are batched, images are not",
        )
    if point_coords.dim() != 3 or point_coords.shape[-1] != 2 or point_coords.shape[1] < 1:
        raise _shape_error(
            "point_coords", "(B, N, 2) with N >= 1", point_coords,
            "add a batch axis for a single prompt, and a padding point (label -1) for a mask-only prompt",
        )
    b, n = int(point_coords.shape[0]), int(point_coords.shape[1])
    if tuple(point_labels.shape) != (b, n):
        raise _shape_error("point_labels", f"(B, N) = ({b}, {n}) to match point_coords", point_labels,
                           "give one label per point")
    if tuple(mask_input.shape) != (b, 1, 4 * h, 4 * w):
        raise _shape_error("mask_input", f"(B, 1, {4 * h}, {4 * w}) with B = {b}", mask_input,
                           "pass zeros and has_mask_input = 0 where there is no earlier mask")
    if tuple(has_mask_input.shape) != (b,):
        raise _shape_error("has_mask_input", f"(B,) = ({b},)", has_mask_input, "give one 0/1 flag per prompt")
    _check_label_values(point_labels)


def _check_label_values(point_labels: Tensor) -> None:
    """Raise ``ValueError`` naming the labels outside the contract's codes (reads the tensor)."""
    valid = torch.tensor(_VALID_LABELS, dtype=point_labels.dtype, device=point_labels.device)
    known = torch.isin(point_labels, valid)
    if not bool(known.all()):
        bad = sorted({float(v) for v in point_labels[~known].tolist()})[:5]
        raise ValueError(
            f"point_labels must be in {_VALID_LABELS} (-1 pad, 0 background, 1 foreground, 2 box top-left, "
            f"3 box bottom-right), got {bad}; map your labels to these codes"
        )


def select_masks(iou_predictions: Tensor, low_res_masks: Tensor, multimask: bool) -> tuple[Tensor, Tensor]:
    """The official output choice: tokens 1..3 when ``multimask``, else token 0.

    ``iou_predictions`` ``(B, 4)``, ``low_res_masks`` ``(B, 4, h, w)`` -> ``(iou (B, K), masks (B, K, h, w))``
    with K = 3 or 1 (views, not copies).
    """
    if iou_predictions.dim() != 2 or low_res_masks.dim() != 4 or low_res_masks.shape[:2] != iou_predictions.shape:
        raise ValueError(
            f"expected iou_predictions (B, T) and low_res_masks (B, T, h, w), got {tuple(iou_predictions.shape)} "
            f"and {tuple(low_res_masks.shape)}; pass SamModel.decode's outputs unchanged"
        )
    picked = slice(1, None) if multimask else slice(0, 1)
    return iou_predictions[:, picked], low_res_masks[:, picked]


class SamModel(nn.Module):
    """SAM-family model. ``image_encoder`` maps ``(B, 3, S, S)`` to ``(B, 256, 64, 64)``."""

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def input_size(self) -> int:
        """Side S of the square encoder input, pixels."""
        return int(self.prompt_encoder.input_image_size[0])

    def encode(self, image: Tensor) -> Tensor:
        """Float ``(1, 3, S, S)`` normalised, padded image -> float ``(1, 256, 64, 64)`` embedding."""
        s = self.input_size
        if not is_tracing() and (
            not isinstance(image, Tensor) or not image.is_floating_point() or tuple(image.shape) != (1, 3, s, s)
        ):
            got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(
                f"image must be a float32 tensor of shape (1, 3, {s}, {s}), got {got}; resize the longest side "
                f"to {s}, normalise, pad to {s}x{s} and convert HWC -> CHW with a batch axis"
            )
        return self.image_encoder(image)

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        roi: tuple[int, int, int, int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The decoder graph without input checks (trace/export this); arguments as ``decode``.
        ``roi``: eager only, see ``MaskDecoder.forward`` (never exported: the ONNX graph is whole)."""
        sparse, dense = self.prompt_encoder(point_coords, point_labels, mask_input, has_mask_input)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            roi=roi,
        )

    def decoder_image_side(self, image_embeddings: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Prompt-independent decoder work for one embedding ``(1, 256, 64, 64)`` when no prompt has a mask.

        Returns ``(keys (1, HW, C), k (1, h, HW, d), v (1, h, HW, d), q_t (h, d, HW))`` for
        ``decode_no_mask``: the image tokens plus the first block's image-side projections. Runtimes
        without eager caching (ONNX Runtime) run it once per keyframe as a separate graph.
        """
        pe = self.prompt_encoder.get_dense_pe()
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys, _, (kh, vh, q_t) = self.mask_decoder.transformer.image_side(image_embeddings + no_mask, pe)
        return keys, kh, vh, q_t

    def decode_no_mask(
        self, image_side: tuple[Tensor, Tensor, Tensor, Tensor], point_coords: Tensor, point_labels: Tensor,
        roi: tuple[int, int, int, int] | Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``forward`` for prompts without a mask (``has_mask_input`` all 0) from ``decoder_image_side``.
        ``roi``: see ``MaskDecoder.forward`` (a tensor: the exported graph's window input)."""
        keys, kh, vh, q_t = image_side
        pe = self.prompt_encoder.get_dense_pe()
        key_pe = pe.flatten(2).transpose(1, 2)
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        return self.mask_decoder(
            image_embeddings=None, image_pe=pe, sparse_prompt_embeddings=sparse, dense_prompt_embeddings=None,
            image_side=(keys, key_pe, (kh, vh, q_t)), roi=roi,
        )

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Decode B prompts against one image embedding (the official SAM ONNX decoder's semantics).

        ``image_embeddings`` float32 ``(1, 256, 64, 64)`` (broadcast over B); ``point_coords``
        ``(B, N, 2)`` x, y input-frame pixels; ``point_labels`` float ``(B, N)`` (-1 pad, 0 bg,
        1 fg, 2/3 box corners; a points-only prompt needs one -1 pad point appended, a box is two
        points labelled 2, 3); ``mask_input`` ``(B, 1, 256, 256)`` logits; ``has_mask_input``
        ``(B,)`` 0/1. Returns ``(iou_predictions (B, 4), low_res_masks (B, 4, 256, 256))`` float
        logits, index 0 the single-mask output and 1..3 the multimask outputs (``select_masks``).
        Inputs are checked with ``check_decoder_inputs`` (skipped while tracing).
        """
        if not is_tracing():
            check_decoder_inputs(
                image_embeddings, point_coords, point_labels, mask_input, has_mask_input,
                embed_dim=self.prompt_encoder.embed_dim, embed_hw=self.prompt_encoder.image_embedding_size,
            )
        return self(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
