"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Module and parameter names equal the official segment-anything ``TwoWayTransformer`` so released
checkpoints load with a strict key match. Plain matmul/softmax attention (no fused kernels) keeps
the graph exportable to ONNX/TensorRT.

Speed (same results up to float rounding, ~1e-6 relative):

* Cross-attention between the few prompt tokens (``Nt`` = 5 + points) and the 4096 image tokens
  is computed in "absorbed" form when ``heads * Nt < internal_dim``: the key/query projection of
  the image side is folded into the tokens (``(q Wk_h) x^T`` instead of ``q (x Wk_h^T)^T``) and the
  value/output projections are applied to the token side after the attention-weighted sum, so
  no ``(4096, C) x (C, C/2)`` projection of the image runs. That halves the transformer's FLOPs for
  clicks and boxes (3.7 -> ~1.7 GFLOP per prompt with the mask decoder's matmul upscaling).
  The image-side key bias adds a per-row constant to the scores and drops out of the softmax.
* In eager inference, the first block's image-side projections (they depend only on the image
  embedding + the dense no-mask embedding + PE) are cached per embedding (checked by value), so
  repeated prompts on one keyframe skip them; a batch of prompts without masks shares them too.
* ``keys + key_pe`` is formed once per block (the official code forms it twice with equal keys).
* Traced graphs (ONNX) spell the token-axis softmax out and baddbmm as a plain add
  (``_softmax``, ``_baddbmm``): ONNX Runtime ran the exported forms several times slower.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from engine.models.common import MLPBlock, can_cache, is_tracing, version_key


def _softmax(x: Tensor, dim: int) -> Tensor:
    """``torch.softmax(x, dim)``; in traced graphs spelled out (max, exp, sum, divide) for a ``dim``
    that is not the last, which ONNX Runtime's Softmax runs ~4x slower (it transposes around it)."""
    if not is_tracing() or dim in (-1, x.dim() - 1):
        return torch.softmax(x, dim=dim)
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def _baddbmm(inp: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``inp + a @ b`` (batched): ``torch.baddbmm`` in eager; in traced graphs a plain add, since
    ONNX export spells baddbmm as MatMul, Mul(alpha), Mul(beta), Add (two extra passes over the
    ``(B, 4096, C)`` result)."""
    return inp + a @ b if is_tracing() else torch.baddbmm(inp, a, b)


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

    # --- cross-attention between few tokens and many image tokens ----------------------------
    def absorb_pays(self, num_tokens: int) -> bool:
        """Whether the absorbed form is cheaper: ``heads * Nt`` folded rows vs ``internal_dim``."""
        return self.num_heads * num_tokens < self.internal_dim

    def _head_weights(self, linear: nn.Linear) -> Tensor:
        """A projection ``(heads * d, C)`` weight as ``(heads, d, C)``."""
        return linear.weight.reshape(self.num_heads, -1, linear.weight.shape[-1])

    def tokens_to_image(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Absorbed attention of token queries ``q (B, Nt, C)`` over image keys/values ``(Bk, HW, C)``.

        ``Bk`` is 1 (shared image side) or B. Equals ``forward(q, k, v)`` up to rounding.
        """
        h = self.num_heads
        b, nt, c = q.shape
        qh = self._separate_heads(self.q_proj(q))  # (B, h, Nt, d)
        # Scores: (q_h W_k,h) x^T / sqrt(d); q_h . b_k,h is constant along the softmax axis.
        qk = (qh @ self._head_weights(self.k_proj)).reshape(b, h * nt, c) / self._sqrt_head_dim
        if k.shape[0] == 1 and b > 1:  # one GEMM over all prompts, no broadcast copy of k
            scores = (qk.reshape(b * h * nt, c) @ k.squeeze(0).transpose(0, 1)).reshape(b, h * nt, -1)
        else:
            scores = qk @ k.transpose(1, 2)  # (B, h*Nt, HW)
        attn = torch.softmax(scores, dim=-1)
        if v.shape[0] == 1 and b > 1:
            pooled = (attn.reshape(b * h * nt, -1) @ v.squeeze(0)).reshape(b, h, nt, c)
        else:
            pooled = (attn @ v).reshape(b, h, nt, c)  # attention-weighted image tokens per head
        # Value projection after pooling (the attention rows sum to 1, so the bias passes through).
        vh = pooled @ self._head_weights(self.v_proj).transpose(1, 2) + self.v_proj.bias.reshape(h, 1, -1)
        return self.out_proj(self._recombine_heads(vh))

    def tokens_to_projected_image(self, q: Tensor, kh: Tensor, vh: Tensor) -> Tensor:
        """``forward(q, k, v)`` with the image side already projected: ``kh``/``vh`` ``(1, h, HW, d)``."""
        h = self.num_heads
        b, nt, _ = q.shape
        qh = self._separate_heads(self.q_proj(q))  # (B, h, Nt, d)
        qh = qh.transpose(0, 1).reshape(h, b * nt, -1)  # all prompts' tokens as one query set per head
        attn = qh @ kh.squeeze(0).transpose(1, 2)
        attn = attn / self._sqrt_head_dim
        attn = torch.softmax(attn, dim=-1)
        out = (attn @ vh.squeeze(0)).reshape(h, b, nt, -1).transpose(0, 1)  # (B, h, Nt, d)
        return self.out_proj(self._recombine_heads(out))

    def _token_values_out(self, v: Tensor) -> Tensor:
        """Token values through ``v_proj``, each head's slice of ``out_proj`` and ``1/heads`` of its bias.

        Returns ``(B, h*Nt, C)``: an image token's attention weights over (head, token) sum to
        ``heads``, so the weighted sum of these rows carries ``out_proj``'s bias exactly once.
        """
        b, nt, _ = v.shape
        vh = self._separate_heads(self.v_proj(v))  # (B, h, Nt, d)
        wo = self.out_proj.weight.reshape(-1, self.num_heads, vh.shape[-1]).permute(1, 2, 0)  # (h, d, C)
        return (vh @ wo).reshape(b, self.num_heads * nt, -1) + self.out_proj.bias / self.num_heads

    def _attend_tokens(self, scores_t: Tensor, v: Tensor, residual: Tensor) -> Tensor:
        """``residual + softmax(scores) @ V @ W_o^T + b_o`` from transposed scores ``(B, h*Nt, HW)``.

        The softmax runs per head over the ``Nt`` axis with the long ``HW`` axis innermost (a softmax
        over a last axis of 5-20 entries is several times slower). ``residual`` ``(1 or B, HW, C)``.
        """
        b, hnt, hw = scores_t.shape
        attn = _softmax(scores_t.reshape(b, self.num_heads, -1, hw), dim=2).reshape(b, hnt, hw)
        return _baddbmm(residual, attn.transpose(1, 2), self._token_values_out(v))

    def image_to_tokens(self, q: Tensor, k: Tensor, v: Tensor, residual: Tensor) -> Tensor:
        """``residual + forward(q, k, v)`` in absorbed form: image queries ``q (Bq, HW, C)`` (Bq 1 or B)
        over tokens ``k``/``v`` ``(B, Nt, C)``. Returns ``(B, HW, C)``.
        """
        h = self.num_heads
        b, nt, c = k.shape
        kh = self._separate_heads(self.k_proj(k)) / self._sqrt_head_dim  # (B, h, Nt, d)
        # scores[(h, t), p] = (x_p W_q,h^T + b_q,h) . k_h,t / sqrt(d)
        m = (kh @ self._head_weights(self.q_proj)).reshape(b, h * nt, c)
        bias = (kh @ self.q_proj.bias.reshape(h, -1, 1)).reshape(b, h * nt, 1)
        if q.shape[0] == 1 and b > 1:
            scores_t = torch.addmm(bias.reshape(b * h * nt, 1), m.reshape(b * h * nt, c), q.squeeze(0).transpose(0, 1))
            scores_t = scores_t.reshape(b, h * nt, -1)
        else:
            scores_t = _baddbmm(bias, m, q.transpose(1, 2))  # (B, h*Nt, HW)
        return self._attend_tokens(scores_t, v, residual)

    def projected_image_to_tokens(self, q_t: Tensor, k: Tensor, v: Tensor, residual: Tensor) -> Tensor:
        """``residual + forward(q, k, v)`` with the image queries already projected and transposed:
        ``q_t (h, d, HW)``; tokens ``k``/``v`` ``(B, Nt, C)``. Returns ``(B, HW, C)``.
        """
        h = self.num_heads
        b, nt, _ = k.shape
        kh = self._separate_heads(self.k_proj(k)) / self._sqrt_head_dim  # (B, h, Nt, d)
        scores_t = kh.transpose(0, 1).reshape(h, b * nt, -1) @ q_t  # (h, B*Nt, HW)
        scores_t = scores_t.reshape(h, b, nt, -1).transpose(0, 1).reshape(b, h * nt, -1)
        return self._attend_tokens(scores_t, v, residual)


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

    def _token_update(self, queries: Tensor, query_pe: Tensor) -> Tensor:
        if self.skip_first_layer_pe:
            return self.norm1(self.self_attn(q=queries, k=queries, v=queries))
        q = queries + query_pe
        return self.norm1(queries + self.self_attn(q=q, k=q, v=queries))

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor, absorb: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``queries``/``query_pe`` ``(B, Nt, C)``, ``keys`` ``(1 or B, HW, C)``, ``key_pe`` ``(1 or B, HW, C)``.

        ``absorb``: run both cross-attentions in absorbed form (``Attention.tokens_to_image``).
        Returns ``(queries (B, Nt, C), keys (B, HW, C))``.
        """
        queries = self._token_update(queries, query_pe)
        k = keys + key_pe  # keys do not change before the image->token attention: form it once
        q = queries + query_pe
        t2i = self.cross_attn_token_to_image
        attended = t2i.tokens_to_image(q, k, keys) if absorb else t2i(q=q, k=k, v=keys)
        queries = self.norm2(queries + attended)
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        i2t = self.cross_attn_image_to_token
        if absorb:
            keys = self.norm4(i2t.image_to_tokens(k, q, queries, residual=keys))
        else:
            keys = self.norm4(keys + i2t(q=k, k=q, v=queries))
        return queries, keys

    def image_side(self, keys: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projections of batch-1 image tokens that do not depend on the prompts.

        ``(keys, values)`` of the token->image attention ``(1, h, HW, d)`` and the transposed
        queries of the image->token attention ``(h, d, HW)``.
        """
        k = keys + key_pe
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        q_t = i2t._separate_heads(i2t.q_proj(k))[0].transpose(1, 2).contiguous()
        return t2i._separate_heads(t2i.k_proj(k)), t2i._separate_heads(t2i.v_proj(keys)), q_t

    def forward_with_image_side(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, image_side: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """``forward`` for shared ``keys (1, HW, C)`` whose ``image_side`` projections are given."""
        kh, vh, q_t = image_side
        queries = self._token_update(queries, query_pe)
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_projected_image(q, kh, vh))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(self.cross_attn_image_to_token.projected_image_to_tokens(q_t, q, queries, residual=keys))
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
        # Absorbed cross-attention in traced graphs (ONNX/TensorRT), where the point count is dynamic:
        # on for the usual prompts (click(s) or a box: Nt = 5 + N < 16); set False before exporting
        # for prompts of many points. Eager calls decide per call (``Attention.absorb_pays``).
        self.absorb_when_traced = True
        # (key, embedding copy, PE, keys, key_pe, side); see _cached_image_side and common.clear_caches
        self._cache_image_side: tuple[tuple, Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor]] | None = None

    def _cached_image_side(
        self, image_embedding: Tensor, image_pe: Tensor
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]] | None:
        """``(keys, key_pe, first block's image side)`` for a batch-1 image, reused while the values match.

        Hits need an equal embedding (by value), the same PE tensor (or equal values) and the same
        first-block projection weights (identity and version counter, ``common.VersionKey``).
        """
        if image_embedding is None or image_embedding.shape[0] != 1 or image_pe.shape[0] != 1:
            return None
        if not can_cache(image_embedding):
            return None
        first = self.layers[0]
        params = [
            p
            for attn in (first.cross_attn_token_to_image, first.cross_attn_image_to_token)
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj)
            for p in (lin.weight, lin.bias)
        ]
        version = version_key(*params)
        if version is None:  # inference-tensor weights: no version counter to check
            return None
        key = (version, tuple(image_embedding.shape), tuple(image_pe.shape), image_embedding.device)
        c = self._cache_image_side
        if (
            c is not None
            and c[0] == key
            and (c[2] is image_pe or torch.equal(c[2], image_pe))
            and torch.equal(c[1], image_embedding)
        ):
            return c[3], c[4], c[5]
        keys, key_pe, side = self.image_side(image_embedding, image_pe)
        self._cache_image_side = (key, image_embedding.clone(), image_pe, keys, key_pe, side)
        return keys, key_pe, side

    def image_side(
        self, image_embedding: Tensor, image_pe: Tensor
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Prompt-independent work for a batch-1 image ``(1, C, H, W)`` and PE: ``(keys, key_pe, side)``.

        ``keys``/``key_pe`` ``(1, HW, C)``; ``side`` the first block's projections
        (``TwoWayAttentionBlock.image_side``). Pass it back as ``forward(..., image_side=...)``.
        """
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        return keys, key_pe, self.layers[0].image_side(keys, key_pe)

    def forward(
        self,
        image_embedding: Tensor | None,
        image_pe: Tensor,
        point_embedding: Tensor,
        image_side: tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the transformer.

        ``image_embedding`` float ``(1 or B, C, H, W)`` (batch 1: shared by all prompts);
        ``image_pe`` ``(1 or B, C, H, W)``; ``point_embedding`` ``(B, Nt, C)``. ``image_side``:
        ``self.image_side(image_embedding, image_pe)`` computed earlier (``image_embedding`` is then
        unused). Returns ``(tokens (B, Nt, C), image tokens (B, H*W, C))``.
        """
        nt = point_embedding.shape[1]
        queries = point_embedding
        cached = image_side if image_side is not None else self._cached_image_side(image_embedding, image_pe)
        layers = list(self.layers)
        absorb = self.absorb_when_traced if is_tracing() else self.final_attn_token_to_image.absorb_pays(nt)
        if cached is not None:
            keys, key_pe, side = cached
            queries, keys = layers[0].forward_with_image_side(queries, keys, point_embedding, side)
            layers = layers[1:]
        else:
            keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
            key_pe = image_pe.flatten(2).transpose(1, 2)
        for layer in layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe, absorb=absorb)

        q = queries + point_embedding
        k = keys + key_pe
        final = self.final_attn_token_to_image
        attended = final.tokens_to_image(q, k, keys) if absorb else final(q=q, k=k, v=keys)
        queries = self.norm_final_attn(queries + attended)
        return queries, keys
