"""Facts of V2/V3's Multi-head Latent Attention and V3.2's Lightning Indexer (cells: attention.py,
indexer.py). FLOPs: projections, and every query scored against all `seq` keys (a dense kernel)."""
from __future__ import annotations

from typing import Dict, Iterator

from .base import FP32, ActivationShape, BlockFacts, Spec


class LightningIndexerFacts(BlockFacts):
    """V3.2: small, frozen, replicated; its scores cover every key."""

    def __init__(self, c, prefix: str):
        self.c, self.prefix = c, prefix

    def params(self) -> Iterator[Spec]:
        c, ix, h = self.c, self.prefix, self.c.hidden_size
        yield ix + "wq_b.weight", (c.index_n_heads * c.index_head_dim, c.q_lora_rank), "indexer"
        yield ix + "wk.weight", (c.index_head_dim, h), "indexer"
        yield ix + "k_norm.weight", (c.index_head_dim,), "norm"
        yield ix + "k_norm.bias", (c.index_head_dim,), "norm"
        yield ix + "weights_proj.weight", (c.index_n_heads, h), "indexer"

    def flops(self, seq: int) -> Dict[str, float]:
        """wq_b, wk, weights_proj, q.k and the head-weighted sum."""
        c, h = self.c, self.c.hidden_size
        hi, di = c.index_n_heads, c.index_head_dim
        return {"indexer": float(2 * c.q_lora_rank * hi * di + 2 * h * di + 2 * h * hi + 2 * hi * di * seq
                                 + 2 * hi * seq)}


class MlaFacts(BlockFacts):
    """q (through the q latent when q_lora_rank is set), the kv latent, kv_b and o_proj; with tp
    each rank keeps num_heads/tp heads (q_b / q and kv_b column-, o_proj row-parallel)."""

    def __init__(self, c, prefix: str):
        self.c, self.prefix = c, prefix
        self.indexer = LightningIndexerFacts(c, prefix + "indexer.") if c.index_topk > 0 else None

    def params(self) -> Iterator[Spec]:
        c, a = self.c, self.prefix
        h, nh = c.hidden_size, c.num_attention_heads
        qk = c.qk_nope_head_dim + c.qk_rope_head_dim
        if c.q_lora_rank is None:
            yield a + "q_proj.weight", (nh * qk, h), "linear_col"
        else:
            yield a + "q_a_proj.weight", (c.q_lora_rank, h), "mla_latent"
            yield a + "q_a_layernorm.weight", (c.q_lora_rank,), "norm"
            yield a + "q_b_proj.weight", (nh * qk, c.q_lora_rank), "linear_col"
        yield a + "kv_a_proj_with_mqa.weight", (c.kv_lora_rank + c.qk_rope_head_dim, h), "mla_latent"
        yield a + "kv_a_layernorm.weight", (c.kv_lora_rank,), "norm"
        yield a + "kv_b_proj.weight", (nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank), "linear_col"
        yield a + "o_proj.weight", (h, nh * c.v_head_dim), "linear_row"
        if self.indexer is not None:
            yield from self.indexer.params()
        if c.attention_bias:
            if c.q_lora_rank is not None:
                yield a + "q_a_proj.bias", (c.q_lora_rank,), "mla_latent"
            yield a + "kv_a_proj_with_mqa.bias", (c.kv_lora_rank + c.qk_rope_head_dim,), "mla_latent"
            yield a + "o_proj.bias", (h,), "norm"

    def flops(self, seq: int) -> Dict[str, float]:
        c, h, nh = self.c, self.c.hidden_size, self.c.num_attention_heads
        qk, v = c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim
        if c.q_lora_rank is None:
            q = 2 * h * nh * qk
        else:
            q = 2 * h * c.q_lora_rank + 2 * c.q_lora_rank * nh * qk
        kv = 2 * h * (c.kv_lora_rank + c.qk_rope_head_dim) + 2 * c.kv_lora_rank * nh * (c.qk_nope_head_dim + v)
        out = 2 * nh * v * h
        scores = 2 * nh * qk * seq + 2 * nh * v * seq  # QK^T and the weighted sum of V
        parts = {"attn_proj": float(q + kv + out), "attn_scores": float(scores)}
        if self.indexer is not None:
            parts.update(self.indexer.flops(seq))
        return parts

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        """The input norm's input and output, the latents, q/k/v/out and the fp32 probabilities."""
        c, B, t = self.c, a.B, a.tokens
        h, nh = c.hidden_size, c.num_attention_heads / a.tp
        qk, v = c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim
        attn = B * t * 2 * h / a.sp
        if c.q_lora_rank:
            attn += B * t * 2 * c.q_lora_rank                       # q_a output, its norm output
        attn += B * t * (2 * c.kv_lora_rank + c.qk_rope_head_dim)   # kv_a output, kv norm output
        attn += B * t * nh * (2 * qk + 2 * v)                       # q, k, v and the attention output
        attn += FP32 * a.batch * nh * a.seq * a.seq                 # softmax probabilities
        return {"attention": attn}
