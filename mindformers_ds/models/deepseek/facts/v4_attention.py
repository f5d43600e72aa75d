"""Facts of DeepSeek-V4's attention (cells: v4_attention.py, v4_compressor.py) and its
hyper-connections (hyper_connection.py). Under tensor parallelism the query heads split by whole
output groups (q_b_proj column-, the grouped o_a_proj by group, o_b_proj row-parallel, the
per-head sinks with their heads); the single shared-KV head, the q latent, compressors and
indexers are replicated. Queries score all `seq` tokens plus the layer's compressed entries
(seq // rate), as the dense kernel does; the CSA indexer scores the compressed entries."""
from __future__ import annotations

from typing import Dict, Iterator

from .base import FP32, ActivationShape, BlockFacts, Spec

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"


def attention_kind(c, layer: int) -> str:
    return c.layer_types[layer] if layer < len(c.layer_types) else SLIDING


class CompressorFacts(BlockFacts):
    """CSA (rate compress_rate_csa, two overlapping series of width 2d, with an indexer) or HCA
    (compress_rate_hca, width d): pooled KV entries the attention also scores."""

    def __init__(self, c, prefix: str, kind: str):
        self.c, self.prefix, self.csa = c, prefix, kind == CSA
        d = c.head_dim
        self.width, self.rate = (2 * d, c.compress_rate_csa) if self.csa else (d, c.compress_rate_hca)

    def entries(self, seq: int) -> int:
        return seq // self.rate

    def params(self) -> Iterator[Spec]:
        c, cp, h = self.c, self.prefix, self.c.hidden_size
        yield cp + "kv_proj.weight", (self.width, h), "compressor"
        yield cp + "gate_proj.weight", (self.width, h), "compressor"
        yield cp + "position_bias", (self.rate, self.width), "compressor"
        yield cp + "kv_norm.weight", (c.head_dim,), "norm"
        if self.csa:
            ix, di, hi = cp + "indexer.", c.index_head_dim, c.index_n_heads
            yield ix + "kv_proj.weight", (2 * di, h), "indexer"
            yield ix + "gate_proj.weight", (2 * di, h), "indexer"
            yield ix + "position_bias", (self.rate, 2 * di), "indexer"
            yield ix + "kv_norm.weight", (di,), "norm"
            yield ix + "q_b_proj.weight", (hi * di, c.q_lora_rank), "indexer"
            yield ix + "scorer.weights_proj.weight", (hi, h), "indexer"

    def flops(self, seq: int) -> Dict[str, float]:
        c, h, d = self.c, self.c.hidden_size, self.c.head_dim
        if not self.csa:
            return {"attn_proj": float(2 * 2 * h * d)}
        hi, di, entries = c.index_n_heads, c.index_head_dim, self.entries(seq)
        return {"attn_proj": float(2 * 2 * h * 2 * d),   # kv_proj and gate_proj, two series
                "indexer": float(2 * 2 * h * 2 * di + 2 * c.q_lora_rank * hi * di + 2 * h * hi
                                 + 2 * hi * di * entries + 2 * hi * entries)}


class V4AttentionFacts(BlockFacts):
    def __init__(self, c, prefix: str, layer: int):
        self.c, self.prefix = c, prefix
        self.kind = attention_kind(c, layer)
        self.compressor = CompressorFacts(c, prefix + "compressor.", self.kind) if self.kind != SLIDING else None

    def params(self) -> Iterator[Spec]:
        c, a = self.c, self.prefix
        h, nh, d, q = c.hidden_size, c.num_attention_heads, c.head_dim, c.q_lora_rank
        yield a + "sinks", (nh,), "head_vector"
        yield a + "q_a_proj.weight", (q, h), "mla_latent"
        yield a + "q_a_norm.weight", (q,), "norm"
        yield a + "q_b_proj.weight", (nh * d, q), "linear_col"
        yield a + "kv_proj.weight", (d, h), "mla_latent"
        yield a + "kv_norm.weight", (d,), "norm"
        yield a + "o_a_proj.weight", (c.o_groups * c.o_lora_rank, nh * d // c.o_groups), "grouped_col"
        yield a + "o_b_proj.weight", (h, c.o_groups * c.o_lora_rank), "linear_row"
        if self.compressor is not None:
            yield from self.compressor.params()

    def _entries(self, seq: int) -> int:
        return self.compressor.entries(seq) if self.compressor is not None else 0

    def flops(self, seq: int) -> Dict[str, float]:
        c = self.c
        h, nh, d, q = c.hidden_size, c.num_attention_heads, c.head_dim, c.q_lora_rank
        proj = 2 * h * q + 2 * q * nh * d + 2 * h * d + 2 * nh * d * c.o_lora_rank + 2 * c.o_groups * c.o_lora_rank * h
        parts = {"attn_proj": float(proj)}
        if self.compressor is not None:
            extra = self.compressor.flops(seq)
            parts["attn_proj"] += extra.pop("attn_proj")
            parts.update(extra)
        parts["attn_scores"] = float(2 * 2 * nh * d * (seq + self._entries(seq)))   # q.k and p @ kv
        return parts

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        """Norms, q latent, q, out, kv; the [S, S + entries] fp32 probabilities; compressor kv/gate."""
        c, B, t = self.c, a.B, a.tokens
        h, nh, d = c.hidden_size, c.num_attention_heads, c.head_dim
        entries = self._entries(a.seq)
        attn = B * t * (2 * h + 2 * c.q_lora_rank + 3 * nh * d + 2 * d)
        attn += FP32 * a.batch * nh * a.seq * (a.seq + entries)
        if entries:
            attn += B * t * 4 * d * (2 if self.kind == CSA else 1)
        return {"attention": attn}


class HyperConnectionFacts(BlockFacts):
    """mHC around one block: fn [(2+n)n, n h], base [(2+n)n], scale [3] for n = hc_mult streams."""

    def __init__(self, c, prefix: str):
        self.c, self.prefix = c, prefix

    def params(self) -> Iterator[Spec]:
        n, h = self.c.hc_mult, self.c.hidden_size
        yield self.prefix + "fn", ((2 + n) * n, n * h), "hc"
        yield self.prefix + "base", ((2 + n) * n,), "hc"
        yield self.prefix + "scale", (3,), "hc"

    def flops(self, seq: int) -> Dict[str, float]:
        n, h = self.c.hc_mult, self.c.hidden_size
        return {"hyper_connections": float(2 * n * h * (2 + n) * n + 2 * n * n * h)}

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        """The n streams and the mixes (fp32); the normalised copy of the streams is never made
        (hyper_connection.py: normed_projection)."""
        n, h = self.c.hc_mult, self.c.hidden_size
        return {"hyper_connections": FP32 * a.tokens * (n * h + (2 + n) * n)}
