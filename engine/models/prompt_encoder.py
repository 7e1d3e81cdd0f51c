"""SAM prompt encoder in the trace-friendly form of the official SAM ONNX decoder.

Prompts arrive as the tensors of ``engine.contract``: points ``(B, N, 2)`` with float labels
``(B, N)`` (-1 padding, 0 background, 1 foreground, 2 box top-left, 3 box bottom-right) and a
low-res mask ``(B, 1, 256, 256)`` gated by ``has_mask_input`` ``(B,)``. Label embeddings are added
as label-weighted sums, so the graph has no data-dependent control flow (exports to ONNX with
dynamic ``B`` and ``N`` and runs in TensorRT).

Parameter and buffer names equal the official segment-anything ``PromptEncoder`` so released
checkpoints load with a strict key match.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from engine.contract import LABEL_BACKGROUND, LABEL_BOX_BR, LABEL_BOX_TL, LABEL_FOREGROUND, LABEL_PAD
from engine.models.common import LayerNorm2d, can_cache, is_tracing, version_key

# Label code of each entry of ``PromptEncoder.point_embeddings`` (index i embeds label LABELS[i]).
POINT_EMBEDDING_LABELS = (LABEL_BACKGROUND, LABEL_FOREGROUND, LABEL_BOX_TL, LABEL_BOX_BR)


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (works on torch 2.1 .. current)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cuda":
            return torch.is_autocast_enabled()
        return device_type == "cpu" and torch.is_autocast_cpu_enabled()


@contextlib.contextmanager
def _full_precision(device_type: str) -> Iterator[None]:
    """Turn autocast off inside (only where it is on, so plain and traced runs see no context)."""
    if _autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding: ``[sin(2 pi (2p - 1) G), cos(...)]``.

    ``G`` (``positional_encoding_gaussian_matrix``) is a float ``(2, num_pos_feats)`` buffer; the
    encoding of a point has ``2 * num_pos_feats`` channels. It is always computed in float32 (with
    autocast off): in fp16/bf16 the unit coordinates and the phases lose pixels of precision.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def encode_unit(self, coords: Tensor) -> Tensor:
        """``(..., 2)`` x, y in [0, 1] -> ``(..., 2 * num_pos_feats)`` in the buffer's dtype."""
        gaussian: Tensor = self.positional_encoding_gaussian_matrix
        with _full_precision(coords.device.type):
            unit = 2 * coords.float() - 1
            phase = unit @ gaussian.float()
            phase = 2 * math.pi * phase
            encoding = torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)
        return encoding.to(gaussian.dtype)

    def dense(self, size: tuple[int, int]) -> Tensor:
        """Encoding of the pixel centres of an ``(h, w)`` grid: float ``(2 * num_pos_feats, h, w)``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self.encode_unit(grid).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Embeds points/box corners (sparse tokens) and a low-res mask (dense map) for the mask decoder.

    ``image_embedding_size`` is the encoder output grid ``(H, W)`` (64, 64); ``input_image_size``
    the padded encoder input ``(S, S)`` whose pixel frame the point coordinates are in.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        self.num_point_embeddings = len(POINT_EMBEDDING_LABELS)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in POINT_EMBEDDING_LABELS)
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._cache_dense_pe: tuple[tuple, Tensor] | None = None  # (key, PE); see common.clear_caches

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid: float ``(1, embed_dim, H, W)``.

        It depends only on the PE buffer, so eager inference computes it once and returns the same
        tensor until the buffer changes (treat it as read-only); traced/autograd calls recompute it.
        The cache follows the buffer's identity and version counter (``load_state_dict``, in-place
        edits); after ``.data`` edits call ``engine.models.common.clear_caches``.
        """
        gaussian = self.pe_layer.positional_encoding_gaussian_matrix
        version = version_key(gaussian) if can_cache(gaussian) else None
        if version is None:
            return self.pe_layer.dense(self.image_embedding_size).unsqueeze(0)
        key = (version, self.image_embedding_size)
        cached = self._cache_dense_pe
        if cached is None or cached[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
                cached = (key, self.pe_layer.dense(self.image_embedding_size).unsqueeze(0))
            self._cache_dense_pe = cached
        return cached[1]

    def embed_points(self, point_coords: Tensor, point_labels: Tensor) -> Tensor:
        """Points ``(B, N, 2)`` (input-frame pixels) and float labels ``(B, N)`` -> ``(B, N, embed_dim)``.

        Each point gets the PE of its pixel centre ``(xy + 0.5) / (W, H)``; padding points (-1) get
        zero PE plus ``not_a_point_embed``; label i in 0..3 adds ``point_embeddings[i]``.
        """
        h, w = self.input_image_size
        centres = point_coords + 0.5
        if h == w:
            unit = centres / w
        else:
            unit = torch.cat([centres[..., :1] / w, centres[..., 1:] / h], dim=-1)
        encoding = self.pe_layer.encode_unit(unit)
        labels = point_labels.unsqueeze(-1)
        encoding = encoding * (labels != LABEL_PAD).to(encoding.dtype)
        encoding = encoding + self.not_a_point_embed.weight * (labels == LABEL_PAD).to(encoding.dtype)
        for label, table in zip(POINT_EMBEDDING_LABELS, self.point_embeddings):
            encoding = encoding + table.weight * (labels == label).to(encoding.dtype)
        return encoding

    def embed_masks(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        """Mask logits ``(B, 1, 4H, 4W)`` and gate ``(B,)`` -> dense embedding ``(B, embed_dim, H, W)``.

        ``has * mask_downscaling(mask) + (1 - has) * no_mask_embed`` (the official ONNX blend).
        """
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        if not is_tracing() and not bool(has_mask_input.any()):
            # Eager, no prompt has a mask: the blend is exactly no_mask_embed; skip the convs. A
            # batch-broadcast view (stride 0) lets the mask decoder do the image-side work once.
            b, (h, w) = has.shape[0], self.image_embedding_size
            return no_mask.to(mask_input.dtype).expand(b, -1, h, w)
        return has * self.mask_downscaling(mask_input) + (1 - has) * no_mask

    def forward(
        self, point_coords: Tensor, point_labels: Tensor, mask_input: Tensor, has_mask_input: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(sparse (B, N, embed_dim), dense (B, embed_dim, H, W))``; see ``embed_points``/``embed_masks``."""
        return self.embed_points(point_coords, point_labels), self.embed_masks(mask_input, has_mask_input)
