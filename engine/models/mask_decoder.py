"""SAM mask decoder: every mask token's low-res logits plus its predicted IoU.

Always returns all ``num_multimask_outputs + 1`` tokens (index 0 single-mask output, 1.. the
multimask outputs, as ``engine.contract``); picking a subset is ``engine.models.sam.select_masks``.
Parameter names equal the official segment-anything ``MaskDecoder`` (strict checkpoint loading).

Speed: the two stride-2 ``ConvTranspose2d`` of ``output_upscaling`` run as matrix products on
channels-last image tokens (a 2x2 stride-2 transposed conv is a per-pixel linear map to 4 output
pixels), and the mask tokens' hypernetwork product is taken before un-shuffling the pixels, so only
the ``(B, 4, 256, 256)`` logits are permuted. CPU ``ConvTranspose2d`` took ~3x longer for the same
FLOPs. A batch-broadcast dense embedding (no prompt has a mask) keeps the image side at batch 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.contract import ROI_FILL, check_roi
from engine.models.common import LayerNorm2d, is_tracing


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
        dense_prompt_embeddings: Tensor | None,
        image_side: tuple | None = None,
        roi: tuple[int, int, int, int] | Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode every mask token.

        ``image_embeddings`` float ``(1 or B, C, H, W)`` (broadcast over the prompt batch),
        ``image_pe`` ``(1, C, H, W)``, ``sparse_prompt_embeddings`` ``(B, N, C)``,
        ``dense_prompt_embeddings`` ``(B, C, H, W)``.
        ``image_side``: ``transformer.image_side(image_embeddings + no-mask dense, image_pe)`` computed
        earlier; ``image_embeddings`` and ``dense_prompt_embeddings`` are then unused (pass None).
        ``roi``: image-token window ``(row0, row1, col0, col1)`` of the ``H x W`` grid: the masks
        are upscaled only there (exact inside: each low-res pixel depends on its own token alone)
        and are ``ROI_FILL`` outside; IoU predictions are unchanged. Ignored by a non-standard
        ``output_upscaling``. About half of a decode is the upscaling, so a window around the
        object saves most of that. In a traced graph ``roi`` is an int64 ``(4,)`` tensor and the masks
        are the window's alone, ``(B, T, 4 (row1 - row0), 4 (col1 - col0))``: the runtime places them.
        Returns ``(iou_predictions (B, T), low_res_masks (B, T, 4H, 4W))`` with T = ``num_mask_tokens``
        (note: the official ``predict_masks`` returns them in the other order).
        """
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.shape[0], -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        c, h, w = image_pe.shape[1:]
        if image_side is not None:  # the no-mask image side, computed by ``transformer.image_side``
            src = None
        else:
            dense = dense_prompt_embeddings
            if not is_tracing() and image_embeddings.shape[0] == 1 and dense.shape[0] > 1 and dense.stride(0) == 0:
                dense = dense[:1]  # the same dense embedding for every prompt: one image side for all
            src = image_embeddings + dense
        hs, keys = self.transformer(src, image_pe, tokens, image_side=image_side)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        if self._upscaling_is_standard():
            if isinstance(roi, Tensor):
                masks = self._window_masks(keys, hyper_in, h, w, roi)
            elif roi is not None:
                masks = self._upscaled_window(keys, hyper_in, h, w, roi)
            else:
                masks = self._upscaled_masks(keys, hyper_in, h, w)
        else:
            b = keys.shape[0]
            upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
            b, c, h, w = upscaled.shape
            masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return self.iou_prediction_head(iou_token_out), masks

    def _upscaling_is_standard(self) -> bool:
        """``output_upscaling`` is SAM's ``ConvT(2, 2) -> LayerNorm2d -> act -> ConvT(2, 2) -> act``."""
        mods = list(self.output_upscaling)
        if len(mods) != 5 or not isinstance(mods[1], LayerNorm2d):
            return False
        convs = (mods[0], mods[3])
        return all(
            isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (2, 2) and m.stride == (2, 2)
            and m.padding == (0, 0) and m.output_padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1
            and m.bias is not None
            for m in convs
        )

    def _upscaled_window(self, keys: Tensor, hyper_in: Tensor, h: int, w: int, roi: tuple[int, int, int, int]) -> Tensor:
        """``_upscaled_masks`` of the tokens in ``roi`` only, placed in a ``ROI_FILL`` canvas ``(B, T, 4h, 4w)``."""
        r0, r1, c0, c1 = check_roi(roi, (h, w))
        b, _, c = keys.shape
        window = keys.reshape(b, h, w, c)[:, r0:r1, c0:c1].reshape(b, (r1 - r0) * (c1 - c0), c)
        crop = self._upscaled_masks(window, hyper_in, r1 - r0, c1 - c0)
        masks = crop.new_full((b, crop.shape[1], 4 * h, 4 * w), ROI_FILL)
        masks[:, :, 4 * r0 : 4 * r1, 4 * c0 : 4 * c1] = crop
        return masks

    def _window_masks(self, keys: Tensor, hyper_in: Tensor, h: int, w: int, roi: Tensor) -> Tensor:
        """``_upscaled_masks`` of the tokens in ``roi`` (int64 ``(4,)``, traced: the window stays
        dynamic in the graph) -> ``(B, T, 4 (row1 - row0), 4 (col1 - col0))``."""
        b, _, c = keys.shape
        r0, r1, c0, c1 = roi[0], roi[1], roi[2], roi[3]
        window = keys.reshape(b, h, w, c)[:, r0:r1, c0:c1].reshape(b, -1, c)
        return self._upscaled_masks(window, hyper_in, r1 - r0, c1 - c0)  # type: ignore[arg-type]

    def _upscaled_masks(self, keys: Tensor, hyper_in: Tensor, h: int, w: int) -> Tensor:
        """``hyper_in (B, T, C/8) @ output_upscaling(keys)`` for image tokens ``keys (B, h*w, C)`` -> ``(B, T, 4h, 4w)``.

        Each 2x2 stride-2 transposed conv maps one input pixel to a 2x2 block: a matrix product to
        ``4 * C_out`` channels, ordered (row offset, column offset, channel). Pixels stay in this
        blocked order until the last step.
        """
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        b, hw, c = keys.shape
        c1, c2 = conv1.out_channels, conv2.out_channels
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)  # (C_in, (a, c, C_out))
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        x = torch.addmm(conv1.bias.repeat(4), keys.reshape(b * hw, c), w1).reshape(b * hw * 4, c1)
        x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        x = act2(torch.addmm(conv2.bias.repeat(4), x, w2)).reshape(b, hw * 16, c2)
        masks = hyper_in @ x.transpose(1, 2)  # (B, T, pixels in (i, j, a, c, d, e) order)
        t = masks.shape[1]
        masks = masks.reshape(b, t, h, w, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return masks.reshape(b, t, 4 * h, 4 * w)  # row 4i + 2a + d, column 4j + 2c + e
