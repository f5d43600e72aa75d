"""Multi-head Latent Attention (DeepSeek V2/V3) with decoupled, optionally YaRN-scaled RoPE.

q = q_b(norm(q_a(x)))  (or q_proj(x) without q LoRA, as in V2-Lite)
[c_kv, k_pe] = kv_a_proj_with_mqa(x);  [k_nope, v] = kv_b(norm(c_kv))
score = q_nope.k_nope + q_pe.k_pe, where k_pe is one rotary key shared by all heads: it is
multiplied as a single [B, S, d_rope] tensor and never copied per head.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor

from ...ops import choice, composite
from .config import DeepseekConfig, RopeScaling, yarn_mscale
from .indexer_loss import index_stats
from .layers import DTYPES, Linear, RMSNorm, SharedAcrossHeads, SummedOverHeads

MASK_VALUE = composite.MASK_VALUE


def rope_inv_freq(dim: int, base: float, scaling: Optional[RopeScaling]) -> Tuple[np.ndarray, float]:
    """Inverse frequencies [dim/2] (float32) and the cos/sin attention factor, as transformers
    computes them for `default` and `yarn` rope types (float32 arithmetic, same order)."""
    f32 = np.float32
    pos_freqs = f32(base) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim))
    inv_freq = (f32(1.0) / pos_freqs).astype(f32)
    if scaling is None or scaling.type == "default":
        return inv_freq, 1.0
    factor = scaling.factor
    if scaling.mscale and scaling.mscale_all_dim:
        attention_factor = yarn_mscale(factor, scaling.mscale) / yarn_mscale(factor, scaling.mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(scaling.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
            2 * math.log(base))

    low = max(math.floor(correction_dim(scaling.beta_fast)), 0)
    high = min(math.ceil(correction_dim(scaling.beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1).astype(f32)
    extrapolation = f32(1) - ramp
    interpolation = (f32(1.0) / (f32(factor) * pos_freqs)).astype(f32)
    inv_freq = interpolation * (f32(1) - extrapolation) + inv_freq * extrapolation
    return inv_freq.astype(f32), float(attention_factor)


class RotaryEmbedding(nn.Cell):
    """cos/sin [B, 1, S, d/2] for position ids [B, S]; shared by all layers of a model."""

    def __init__(self, config: DeepseekConfig):
        super().__init__()
        inv_freq, self.attention_factor = rope_inv_freq(config.qk_rope_head_dim, config.rope_theta,
                                                        config.rope_scaling)
        self.inv_freq = Tensor(inv_freq)

    def construct(self, position_ids):
        return composite.rope_cos_sin(position_ids, self.inv_freq, self.attention_factor)


class MLAttention(nn.Cell):
    """Heads are read off the projections' shapes (reshapes to -1 heads), so a rank holding a
    slice of the heads (q_b / q and kv_b column-split, o_proj row-split: the layout table's
    roles, applied from outside by parallel/parallelize.py) runs this code unchanged."""

    def __init__(self, config: DeepseekConfig):
        super().__init__()
        c = config
        dt = DTYPES[c.compute_dtype]
        self.num_heads = c.num_attention_heads  # of the whole model (the Ascend plan reads it)
        self.nope_dim, self.rope_dim, self.v_dim = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        self.kv_lora_rank = c.kv_lora_rank
        self.use_q_lora = c.q_lora_rank is not None
        qk_dim = self.nope_dim + self.rope_dim
        heads = c.num_attention_heads
        if self.use_q_lora:
            self.q_a_proj = Linear(c.hidden_size, c.q_lora_rank, c.attention_bias, dt)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, 1e-6, c.fused_ops)
            self.q_b_proj = Linear(c.q_lora_rank, heads * qk_dim, False, dt)
        else:
            self.q_proj = Linear(c.hidden_size, heads * qk_dim, False, dt)
        self.kv_a_proj_with_mqa = Linear(c.hidden_size, c.kv_lora_rank + self.rope_dim, c.attention_bias, dt)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, 1e-6, c.fused_ops)
        self.kv_b_proj = Linear(c.kv_lora_rank, heads * (self.nope_dim + self.v_dim), False, dt)
        self.o_proj = Linear(heads * self.v_dim, c.hidden_size, c.attention_bias, dt)
        self.shared_key = SharedAcrossHeads()  # k_pe: one per token, read by every head
        self.scale = c.softmax_scale()
        self.interleave = c.rope_interleave
        self.rope = choice.operator("rope", c.fused_ops, interleave=self.interleave)
        # scores, mask, softmax and the weighted values: one fused op (MLA's CPU kernel, CANN's
        # FlashAttentionScore on Ascend) or the composite cell, which the Ascend plan shards
        self.core = choice.operator("mla_attention", c.fused_ops, scale=self.scale, dtype=dt)
        self.compute_dtype = dt
        self.has_indexer = c.index_topk > 0  # V3.2: DeepSeek Sparse Attention
        self.index_stage, self.reports_index = "frozen", False   # set by CausalLM.set_indexer_stage
        if self.has_indexer:
            from .indexer import LightningIndexer
            self.indexer = LightningIndexer(c)
            # attention over the indexer's top-k keys: the kernel costs O(S k), the composite is
            # the masked dense computation
            self.sparse_core = choice.operator("sparse_mla_attention", c.fused_ops, scale=self.scale, dtype=dt)
            self.probs = MlaProbabilities()
            self.heads_summed = SummedOverHeads()

    def project_kv_latent(self, x, cos, sin):
        """The per-token cache of MLA: normalised latent c_kv [B, S, r] and rotated k_pe [B, S, d_rope]."""
        b, s, _ = x.shape
        kv = self.kv_a_proj_with_mqa(x)
        c_kv = self.kv_a_layernorm(kv[..., :self.kv_lora_rank])
        k_pe = kv[..., self.kv_lora_rank:].reshape(b, 1, s, self.rope_dim)
        k_pe = self.rope(k_pe, cos, sin, self.interleave).reshape(b, s, self.rope_dim)
        return c_kv, k_pe

    def project_q(self, x, cos, sin):
        """q [B, S, H, Dn+Dr] as projected (its rope channels are read only through q_pe), the
        rotated q_pe [B, H, S, Dr], and the normalised q latent (V3.2's indexer reads it)."""
        b, s, _ = x.shape
        q_resid = self.q_a_layernorm(self.q_a_proj(x)) if self.use_q_lora else x
        q = self.q_b_proj(q_resid) if self.use_q_lora else self.q_proj(x)
        q = q.reshape(b, s, -1, self.nope_dim + self.rope_dim)
        q_pe = q[..., self.nope_dim:].transpose(0, 2, 1, 3)
        return q, self.rope(q_pe, cos, sin, self.interleave), q_resid

    def expand_kv(self, c_kv):
        """[k_nope, v] per head [B, Sk, H, Dn+Dv] from the latents [B, Sk, r]."""
        return self.kv_b_proj(c_kv).reshape(c_kv.shape[0], c_kv.shape[1], -1, self.nope_dim + self.v_dim)

    def attend(self, q, q_pe, kv, k_pe, mask):
        """Attention of queries (project_q's layouts) over keys [B, Sk, *] (expand_kv's layout and
        k_pe); mask [B|1, 1, Sq, Sk] (bool)."""
        b, sq = q.shape[0], q.shape[1]
        # The mask enters as an additive [B|1, 1, Sq, Sk] bias (0 or MASK_VALUE, exact in float32),
        # shared by the heads: a `where` against a full-size fill kept two more [B, H, Sq, Sk]
        # tensors per layer alive for the backward.
        bias = composite.additive_mask(mask)  # no grad: no head-sum
        out = self.core(q, q_pe, kv, self.shared_key(k_pe), bias, self.scale)
        return self.o_proj(out.reshape(b, sq, -1))

    def attend_top_k(self, q, q_pe, kv, k_pe, chosen, allowed):
        """attend() over each query's chosen keys only: chosen [B, Sq, k] int32 indices into the
        keys, allowed [B, Sq, k] bool (a chosen key the mask drops is not attended)."""
        b, sq = q.shape[0], q.shape[1]
        bias = composite.additive_mask(allowed)
        out = self.sparse_core(q, q_pe, kv, self.shared_key(k_pe), chosen, bias, self.scale)
        return self.o_proj(out.reshape(b, sq, -1))

    def construct(self, x, cos, sin, mask):
        """-> out [B, S, hidden]; with an indexer in a training stage (out, its stats row:
        indexer_loss.index_stats)."""
        q, q_pe, q_resid = self.project_q(x, cos, sin)
        c_kv, k_pe = self.project_kv_latent(x, cos, sin)
        kv = self.expand_kv(c_kv)
        if not self.has_indexer:
            return self.attend(q, q_pe, kv, k_pe, mask)
        chosen, allowed, index = self.indexer(x, q_resid, cos, sin, mask, self.reports_index)
        if not self.reports_index:  # each query attends only to the keys the indexer picks
            return self.attend_top_k(q, q_pe, kv, k_pe, chosen, allowed)
        sparse_mask = self.indexer.chosen_mask(chosen, allowed, kv.shape[1])
        dense = ops.broadcast_to(mask, sparse_mask.shape)
        if self.index_stage == "dense_warmup":
            attended, out = dense, self.attend(q, q_pe, kv, k_pe, dense)
        else:
            attended, out = sparse_mask, self.attend_top_k(q, q_pe, kv, k_pe, chosen, allowed)
        raw = self.probs(q, q_pe, kv, k_pe, self.scale)
        dense_sum = self.heads_summed(masked_softmax(raw, dense).sum(1))
        attended_sum = dense_sum if self.index_stage == "dense_warmup" else self.heads_summed(
            masked_softmax(raw, attended).sum(1))
        return out, index_stats(index, attended_sum, attended[:, 0], dense_sum, dense[:, 0], sparse_mask[:, 0])

    @property
    def cache_count(self) -> int:
        """Its decoding caches: the latents c_kv and k_pe, and with V3.2's indexer its keys."""
        return 3 if self.has_indexer else 2

    def empty_cache(self, batch: int, length: int, dtype):
        caches = (ops.zeros((batch, length, self.kv_lora_rank), dtype), ops.zeros((batch, length, self.rope_dim), dtype))
        if self.has_indexer:
            caches = caches + (ops.zeros((batch, length, self.indexer.head_dim), dtype),)
        return caches

    def forward_cached(self, x, cos, sin, mask, caches, write):
        """Attention through the caches [B, L, *] (c_kv, k_pe and V3.2's indexer keys): the new
        tokens' entries are blended in where `write` [B, L, 1] is 1 (all slots for a prefill of L
        tokens, one per row for a decode step), then the queries attend over the cache under
        `mask` (with V3.2's indexer: over the top-k of the cached keys it scores) -> (out, caches)."""
        q, q_pe, q_resid = self.project_q(x, cos, sin)
        c_new, k_new = self.project_kv_latent(x, cos, sin)
        cache_c = caches[0] * (1.0 - write) + c_new * write
        cache_k = caches[1] * (1.0 - write) + k_new * write
        kv = self.expand_kv(cache_c)
        if not self.has_indexer:
            return self.attend(q, q_pe, kv, cache_k, mask), (cache_c, cache_k)
        cache_i = caches[2] * (1.0 - write) + self.indexer.keys(x, cos, sin) * write
        if self.index_stage == "dense_warmup":   # the model attends densely while its indexers warm up
            return self.attend(q, q_pe, kv, cache_k, mask), (cache_c, cache_k, cache_i)
        chosen, allowed, _ = self.indexer.top_keys(x, q_resid, cos, sin, cache_i, mask)
        return self.attend_top_k(q, q_pe, kv, cache_k, chosen, allowed), (cache_c, cache_k, cache_i)


class MlaProbabilities(nn.Cell):
    """The scaled attention scores [B, H, S, T] the indexer's training turns into its target
    (masked_softmax). Detached: a target, never a path for gradients. Its own composite scores,
    whichever core attention runs."""

    def __init__(self):
        super().__init__()
        self.core = composite.MlaAttentionCore()

    def construct(self, q, q_pe, kv, k_pe, scale):
        return self.core.scores(ops.stop_gradient(q), ops.stop_gradient(q_pe), ops.stop_gradient(kv),
                                ops.stop_gradient(k_pe)) * scale


def masked_softmax(scores, mask):
    """softmax over the keys `mask` [B, 1, S, T] allows."""
    return ops.softmax(scores + (1.0 - mask.astype(ms.float32)) * MASK_VALUE, -1)
