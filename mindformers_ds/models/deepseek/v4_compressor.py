"""DeepSeek-V4's KV compressors: Heavily Compressed Attention (HCA, rate m' = 128) and
Compressed Sparse Attention (CSA, rate m = 4, with a Lightning Indexer choosing top-k entries).

A compressor turns each closed window of m tokens into one extra KV entry:
  entry_w = RMSNorm( sum_j softmax_j(gate_j + position_bias_j) * kv_j )        (per channel)
then RoPE ("compress" tables) on its trailing rope channels at position w * m. Query t may see
entry w only once the window is complete: w < (t + 1) // m. CSA's windows overlap: each token
projects two series (2 x head_dim); entry w mixes the first half of window w-1 with the second
half of window w over 2m slots (window 0's missing half gets weight 0). HCA's do not overlap.

The V4 Lightning Indexer runs its own, narrower CSA-style compressor (index_head_dim) and scores
  score[t, w] = sum_h weights_proj(x)[t, h] / sqrt(Hi) * relu(q_i[t, h] . key_w) / sqrt(Di)
with q_i = q_b_proj(MLA-style q latent), keeping the top `index_topk` complete entries per query.
Its input is detached and its choice discrete: the LM loss gives it no gradient. As in the
reference it is frozen by default; the training stages (indexer_loss.py) train it by its KL.
Inputs are whole sequences (training and the recompute generation path); shapes are static.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from .config import DeepseekConfig
from .layers import Linear, RMSNorm, zeros_param

MASK_VALUE = -1e30  # additive mask; exp() of it is exactly 0 in float32


def rope_tail(x, cos, sin):
    """V4 RoPE: rotate the trailing 2*cos.shape[-1] channels of x [B, H, S, D] as interleaved pairs
    (2i, 2i+1), in place (the layout is kept: V4 reads the rotated value back out)."""
    half = cos.shape[-1]
    d = x.shape[-1]
    rot = x[..., d - 2 * half:] if d > 2 * half else x
    pairs = rot.reshape(rot.shape[:-1] + (half, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    out = ops.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).reshape(rot.shape)
    if d == 2 * half:   # every channel rotates (the tiny V4's indexer): an empty slice's gradient
        return out      # fails in MindSpore 2.10 on CPU (StridedSliceGrad "out of bounds")
    return ops.concat((x[..., :d - 2 * half], out), -1)


def window_visible(num_entries: int, positions, rate: int, segment_ids=None, overlap: bool = False):
    """[B, S, T] bool: query at `positions` [B, S] may see entry w: its window has closed and, with
    packed samples (`segment_ids` [B, S]), its first token is in the query's sample (so all are)."""
    entries = ops.arange(num_entries, dtype=ms.int32)
    visible = entries.reshape(1, 1, -1) < ((positions + 1) // rate).expand_dims(-1)
    if segment_ids is not None:
        first = entries * rate
        if overlap:  # CSA entry w also pools the previous window
            first = ops.maximum(first - rate, 0)
        same = ops.gather(segment_ids, first, 1).expand_dims(1) == segment_ids.expand_dims(2)
        visible = ops.logical_and(visible, same)
    return visible


class WindowCompressor(nn.Cell):
    """kv_proj / gate_proj / position_bias / kv_norm of one compressor. `overlap`: CSA layout
    (two series per token, windows of 2m slots)."""

    def __init__(self, hidden: int, dim: int, rate: int, overlap: bool, eps: float, fused_ops=()):
        super().__init__()
        width = 2 * dim if overlap else dim
        self.kv_proj = Linear(hidden, width)
        self.gate_proj = Linear(hidden, width)
        self.position_bias = zeros_param((rate, width), "position_bias")
        self.kv_norm = RMSNorm(dim, eps, fused_ops)
        self.dim, self.rate, self.overlap = dim, rate, overlap

    def compress(self, x, cos, sin):
        """x [B, S, H] -> entries [B, 1, S // m, dim] (RoPE'd at positions w * m), or None if S < m.
        `cos`/`sin` are the compress tables at positions 0..S-1; entry w reads row w * m."""
        b, s, _ = x.shape
        n, m, d = s // self.rate, self.rate, self.dim
        if n == 0:
            return None
        kv = self.kv_proj(x[:, :n * m]).reshape(b, n, m, -1)
        gate = self.gate_proj(x[:, :n * m]).reshape(b, n, m, -1) + self.position_bias
        if self.overlap:  # slots [0, m): first series of the previous window; [m, 2m): second of this one
            prev_kv = ops.concat((ops.zeros((b, 1, m, d), kv.dtype), kv[:, :n - 1, :, :d]), 1)
            prev_gate = ops.concat((ops.full((b, 1, m, d), MASK_VALUE, dtype=gate.dtype), gate[:, :n - 1, :, :d]), 1)
            kv = ops.concat((prev_kv, kv[..., d:]), 2)
            gate = ops.concat((prev_gate, gate[..., d:]), 2)
        pooled = self.kv_norm((kv * ops.softmax(gate.astype(ms.float32), 2).astype(kv.dtype)).sum(2))
        starts = ops.arange(n, dtype=ms.int32) * m
        cos_w, sin_w = ops.gather(cos, starts, 2), ops.gather(sin, starts, 2)      # [B, 1, n, half]
        return rope_tail(pooled.expand_dims(1), cos_w, sin_w)


class V4Indexer(WindowCompressor):
    """Top-k compressed entries per query for CSA (transformers: `compressor.indexer`); its own
    pooled keys come from the inherited compressor at index_head_dim."""

    def __init__(self, c: DeepseekConfig):
        super().__init__(c.hidden_size, c.index_head_dim, c.compress_rate_csa, True, c.rms_norm_eps)
        self.n_heads, self.head_dim, self.topk = c.index_n_heads, c.index_head_dim, c.index_topk
        self.q_b_proj = Linear(c.q_lora_rank, c.index_n_heads * c.index_head_dim)
        self.scorer = IndexScorer(c)
        for p in self.get_parameters():
            p.requires_grad = False
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)

    def construct(self, x, q_resid, cos, sin, positions, segment_ids=None):
        """-> (visible [B, S, T] bool: the chosen entries that query t may see, chosen [B, S, k],
        the index scores [B, S, T] (-inf where not visible), causal [B, S, T]: every entry t may see)."""
        x, q_resid = ops.stop_gradient(x), ops.stop_gradient(q_resid)
        b, s, _ = x.shape
        keys = self.compress(x, cos, sin)                                         # [B, 1, T, Di]
        t = keys.shape[2]
        q = self.q_b_proj(q_resid).reshape(b, s, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = rope_tail(q, cos, sin)                                                # [B, Hi, S, Di]
        logits = self.bmm_nt(q.reshape(b, self.n_heads * s, self.head_dim), keys.reshape(b, t, self.head_dim))
        logits = ops.relu(logits.reshape(b, self.n_heads, s, t)) * (self.head_dim ** -0.5)
        index = (logits * self.scorer(x).expand_dims(-1)).sum(1)                  # [B, S, T]
        causal = window_visible(t, positions, self.rate, segment_ids, True)
        index = ops.where(causal, index, ops.full_like(index, float("-inf")))
        k = min(self.topk, t)
        chosen = ops.topk(index, k)[1]
        picked = ops.tensor_scatter_elements(ops.zeros((b, s, t), ms.float32), chosen,
                                             ops.ones((b, s, k), ms.float32), axis=-1)
        return ops.logical_and(picked > 0, causal), chosen, index, causal


class IndexScorer(nn.Cell):
    """Per-head weights of the index score (transformers: `indexer.scorer.weights_proj`)."""

    def __init__(self, c: DeepseekConfig):
        super().__init__()
        self.weights_proj = Linear(c.hidden_size, c.index_n_heads)
        self.scale = c.index_n_heads ** -0.5

    def construct(self, x):
        return self.weights_proj(x).transpose(0, 2, 1) * self.scale               # [B, Hi, S]


class HCACompressor(WindowCompressor):
    def __init__(self, c: DeepseekConfig):
        super().__init__(c.hidden_size, c.head_dim, c.compress_rate_hca, False, c.rms_norm_eps,
                         c.fused_ops)

    def construct(self, x, q_resid, cos, sin, positions, segment_ids=None):
        """-> (entries [B, 1, T, D], visible [B, S, T]) or (None, None) when no window has closed."""
        entries = self.compress(x, cos, sin)
        if entries is None:
            return None, None
        return entries, window_visible(entries.shape[2], positions, self.rate, segment_ids)


class CSACompressor(WindowCompressor):
    def __init__(self, c: DeepseekConfig):
        super().__init__(c.hidden_size, c.head_dim, c.compress_rate_csa, True, c.rms_norm_eps,
                         c.fused_ops)
        self.indexer = V4Indexer(c)

    def construct(self, x, q_resid, cos, sin, positions, segment_ids=None):
        entries = self.compress(x, cos, sin)
        if entries is None:
            return None, None
        return entries, self.indexer(x, q_resid, cos, sin, positions, segment_ids)[0]

    def with_index(self, x, q_resid, cos, sin, positions, segment_ids=None):
        """The training stages' view (indexer_loss.py): (entries, the indexer's choice, its scores,
        every entry each query may see), or four Nones when no window has closed."""
        entries = self.compress(x, cos, sin)
        if entries is None:
            return None, None, None, None
        visible, _, index, causal = self.indexer(x, q_resid, cos, sin, positions, segment_ids)
        return entries, visible, index, causal
