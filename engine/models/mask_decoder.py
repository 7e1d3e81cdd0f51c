"""SAM mask decoder: every mask token's low-res logits plus its predicted IoU.

Always returns all ``num_multimask_outputs + 1`` tokens (index 0 single-mask output, 1.. the
multimask outputs, as ``engine.contract``); picking a subset is ``engine.models.sam.select_masks``.
Parameter names equal the official segment-anything ``MaskDecoder`` (strict checkpoint loading).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.models.common import LayerNorm2d


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (parameters ``layers.K``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip([input_dim, *hidden], [*hidden, output_dim])
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(..., input_dim)`` -> ``(..., output_dim)``."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Predicts masks from image and prompt embeddings with a two-way transformer.

    ``transformer`` maps ``(image (B, C, H, W), pe (1, C, H, W), tokens (B, Nt, C))`` to
    ``(tokens (B, Nt, C), image tokens (B, H*W, C))`` (``engine.models.transformer.TwoWayTransformer``).
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Decode every mask token.

        ``image_embeddings`` float ``(1 or B, C, H, W)`` (broadcast over the prompt batch),
        ``image_pe`` ``(1, C, H, W)``, ``sparse_prompt_embeddings`` ``(B, N, C)``,
        ``dense_prompt_embeddings`` ``(B, C, H, W)``.
        Returns ``(iou_predictions (B, T), low_res_masks (B, T, 4H, 4W))`` with T = ``num_mask_tokens``
        (note: the official ``predict_masks`` returns them in the other order).
        """
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.shape[0], -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        src = image_embeddings + dense_prompt_embeddings
        b, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return self.iou_prediction_head(iou_token_out), masks
