"""DeepSeek-V3.2's Lightning Indexer (DeepSeek Sparse Attention): each query keeps only the
`index_topk` keys the indexer scores highest, and MLA attends to those alone.

    q_i = wq_b(q_resid)            [B, S, Hi, Di]   (q_resid = MLA's normalised q latent)
    k   = LayerNorm(wk(x))         [B, S, Di]       (one key per token, shared by the heads)
    first `qk_rope_head_dim` dims of q_i and k get RoPE in the half-split layout (MLA itself
    uses the interleaved one), with the same cos/sin tables
    score[b, s, t] = sum_h w[b, s, h] * relu(q_i[b, s, h] . k[b, t] / sqrt(Di)),
                     w = weights_proj(x) / sqrt(Hi)
then the causal (and packing) mask, and top-k over t (`index_topk`: one CPU kernel when fused,
which never builds the [B, Hi, S, T] logits; the training stages, which need every score, run the
composite). This is transformers' bf16 reading of the release (the Hadamard rotation it skips
preserves dot products; FP8 scoring is a kernel detail). Its input is detached: nothing flows back from the indexer into the main model, and
its selection is a mask, so the LM loss gives it no gradient either. By default (`frozen`, as in
the reference) its parameters do not train; the training stages (indexer_loss.py,
`train.indexer_stage`) train them through the KL of their scores against the main attention.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from ...ops import choice, composite
from .config import DeepseekConfig
from .layers import Linear

NEG_INF = float("-inf")


class LayerNorm(nn.Cell):
    """LayerNorm with HF parameter names (`weight`, `bias`), float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones((dim,), np.float32)), name="weight", requires_grad=False)
        self.bias = Parameter(Tensor(np.zeros((dim,), np.float32)), name="bias", requires_grad=False)
        self.eps = eps

    def construct(self, x):
        mean = x.mean(-1, keep_dims=True)
        centred = x - mean
        var = (centred * centred).mean(-1, keep_dims=True)
        return centred * ops.rsqrt(var + self.eps) * self.weight + self.bias


class LightningIndexer(nn.Cell):
    def __init__(self, c: DeepseekConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.rope_dim = c.index_n_heads, c.index_head_dim, c.qk_rope_head_dim
        self.topk = c.index_topk
        self.wq_b = Linear(c.q_lora_rank, self.n_heads * self.head_dim)
        self.wk = Linear(c.hidden_size, self.head_dim)
        self.k_norm = LayerNorm(self.head_dim, 1e-6)
        self.weights_proj = Linear(c.hidden_size, self.n_heads)
        for p in self.get_parameters():
            p.requires_grad = False
        self.scale = self.head_dim ** -0.5
        self.head_weight = self.n_heads ** -0.5
        self.select = choice.operator("index_topk", c.fused_ops, topk=self.topk, scale=self.scale)

    def _rope(self, x, cos, sin):
        """Half-split RoPE on the first rope_dim channels of x [B, H, S, D]."""
        rot = composite.apply_rope(x[..., :self.rope_dim], cos, sin, False)
        return ops.concat((rot, x[..., self.rope_dim:]), -1)

    def keys(self, x, cos, sin):
        """The index keys [B, T, Di] of tokens x [B, T, H] (what a decoding cache keeps)."""
        b, t, _ = x.shape
        return self._rope(self.k_norm(self.wk(x)).reshape(b, 1, t, self.head_dim), cos, sin).reshape(b, t, -1)

    def _queries(self, x, q_resid, cos, sin):
        """The roped index queries [B, S, Hi, Di] and the head weights [B, S, Hi] of tokens x [B, S, H]."""
        b, s, _ = x.shape
        q = self.wq_b(q_resid).reshape(b, s, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = self._rope(q, cos, sin).transpose(0, 2, 1, 3)
        return q, self.weights_proj(x) * self.head_weight

    def scores(self, x, q_resid, cos, sin, keys, mask):
        """Index scores [B, S, T] (masked entries -inf) of the queries x [B, S, H] over keys [B, T, Di]."""
        q, w = self._queries(x, q_resid, cos, sin)
        return composite.index_scores(q, keys, w, mask, self.scale)

    def top_keys(self, x, q_resid, cos, sin, keys, mask, with_scores: bool = False):
        """Each query's top-k keys under the attention mask [B|1, 1, S, T] bool, over keys [B, T, Di]
        -> (their indices [B, S, k] int32, whether the mask allows each [B, S, k] bool, the index
        scores [B, S, T] when `with_scores` (the training stages' KL reads them), else None). Masked
        keys score -inf, so a query with fewer than k allowed keys gets all of them and some masked
        ones (flagged). Without the scores the choice is `index_topk` (a kernel when fused)."""
        x, q_resid = ops.stop_gradient(x), ops.stop_gradient(q_resid)
        b, s, _ = x.shape
        t = keys.shape[1]
        mask = ops.broadcast_to(mask, (b, 1, s, t))
        if with_scores:
            index = self.scores(x, q_resid, cos, sin, keys, mask)
            top, chosen = ops.topk(index, min(self.topk, t))
            return chosen.astype(ms.int32), top > NEG_INF, index
        q, w = self._queries(x, q_resid, cos, sin)
        top, chosen = self.select(q, keys, w, mask, self.scale, min(self.topk, t))
        return chosen, top > NEG_INF, None

    @staticmethod
    def chosen_mask(chosen, allowed, keys: int):
        """The attention mask [B, 1, S, T] that keeps only the allowed chosen keys."""
        b, s = chosen.shape[0], chosen.shape[1]
        picked = ops.tensor_scatter_elements(ops.zeros((b, s, keys), ms.float32), chosen,
                                             allowed.astype(ms.float32), axis=-1)
        return (picked > 0).expand_dims(1)

    def construct(self, x, q_resid, cos, sin, mask, with_scores: bool = False):
        """top_keys() over the keys of the same tokens x [B, S, H] (training and recompute)."""
        return self.top_keys(x, q_resid, cos, sin, self.keys(ops.stop_gradient(x), cos, sin), mask, with_scores)
