"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Module and parameter names equal the official segment-anything ``TwoWayTransformer`` so released
checkpoints load with a strict key match. Plain matmul/softmax attention (no fused kernels) keeps
the graph exportable to ONNX/TensorRT and bit-comparable with the reference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from engine.models.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by ``downsample_rate``.

    ``q`` ``(B, Nq, C)``, ``k``/``v`` ``(B, Nk, C)`` float -> ``(B, Nq, C)``. ``k``/``v`` may have
    batch 1 where ``q`` has batch B (broadcast).
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        self._sqrt_head_dim = math.sqrt(self.internal_dim // num_heads)
        if self.internal_dim % num_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must divide embedding_dim // downsample_rate "
                f"({embedding_dim} // {downsample_rate} = {self.internal_dim}); pick a divisor"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: Tensor) -> Tensor:
        """``(B, N, C)`` -> ``(B, heads, N, C / heads)``."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    @staticmethod
    def _recombine_heads(x: Tensor) -> Tensor:
        """``(B, heads, N, c)`` -> ``(B, N, heads * c)``."""
        b, heads, n, c = x.shape
        return x.transpose(1, 2).reshape(b, n, heads * c)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        attn = q @ k.permute(0, 1, 3, 2)
        attn = attn / self._sqrt_head_dim
        attn = torch.softmax(attn, dim=-1)
        return self.out_proj(self._recombine_heads(attn @ v))


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, tokens->image cross-attention, token MLP, image->tokens cross-attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """``queries``/``query_pe`` ``(B, Nt, C)``, ``keys`` ``(B, HW, C)``, ``key_pe`` ``(1 or B, HW, C)``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks then a final tokens->image attention and LayerNorm."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Run the transformer.

        ``image_embedding`` float ``(B, C, H, W)``; ``image_pe`` ``(1 or B, C, H, W)``;
        ``point_embedding`` ``(B, Nt, C)``. Returns ``(tokens (B, Nt, C), image tokens (B, H*W, C))``.
        """
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)

        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
