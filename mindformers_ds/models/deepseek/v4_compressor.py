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
Over whole sequences (training, recompute, a prefill) the windows are reshaped out of the
sequence; in cached decoding (kv_cache.py) each compressor keeps its closed entries [B, T, dim]
and its open windows' token rows in a ring (ring_cache.py; m slots, 2m for CSA's overlap), and
pools a window's entry in the step its last token arrives. Shapes are static.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from ...ops.composite import MASK_VALUE
from .config import DeepseekConfig
from .layers import Linear, RMSNorm, zeros_param
from .ring_cache import blend_rows, one_hot_rows, ring_from_sequence



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
        starts = ops.arange(n, dtype=ms.int32) * m
        cos_w, sin_w = ops.gather(cos, starts, 2), ops.gather(sin, starts, 2)      # [B, 1, n, half]
        return rope_tail(self.pool(kv, gate).expand_dims(1), cos_w, sin_w)

    def pool(self, kv, gate):
        """Windows' rows kv, gate [B, n, slots, dim] -> normed entries [B, n, dim]."""
        return self.kv_norm((kv * ops.softmax(gate.astype(ms.float32), 2).astype(kv.dtype)).sum(2))

    # ---- cached decoding -------------------------------------------------------------------
    @property
    def ring_slots(self) -> int:
        """The open windows a decoding cache keeps: CSA's entry pools the previous window too."""
        return 2 * self.rate if self.overlap else self.rate

    def entry_count(self, length: int) -> int:
        """Entries a cache of `length` positions holds; one that never becomes visible when no
        window closes (so every shape stays non-empty)."""
        return max(length // self.rate, 1)

    def empty_window_cache(self, batch: int, length: int, dtype):
        """(entries [B, T, dim], ring of kv rows, ring of gate rows [B, P, width])."""
        width = self.kv_proj.out_features
        return (ops.zeros((batch, self.entry_count(length), self.dim), dtype),
                ops.zeros((batch, self.ring_slots, width), dtype),
                ops.full((batch, self.ring_slots, width), MASK_VALUE, dtype=dtype))

    def prefill_window_cache(self, x, cos, sin, positions, last):
        """The cache as of each row's last prompt position `last` [B], from the whole padded
        prompts x [B, L, H] (entries of windows past `last` are rewritten before any query sees them)."""
        b, length, _ = x.shape
        entries = self.compress(x, cos, sin)
        entries = (ops.zeros((b, 1, self.dim), x.dtype) if entries is None
                   else entries.reshape(b, -1, self.dim))
        gate = self.gate_proj(x) + ops.gather(self.position_bias, positions % self.rate, 0)
        return (entries, ring_from_sequence(self.kv_proj(x), last, self.ring_slots, 0.0),
                ring_from_sequence(gate, last, self.ring_slots, MASK_VALUE))

    def decode_window(self, x, pos, entry_cos, entry_sin, caches):
        """One token x [B, 1, H] at positions pos [B]: its rows enter the ring; where it closes a
        window (pos + 1 divisible by m) that window's entry is pooled, rotated at the window's
        first position (entry_cos/sin [B, 1, 1, half]) and stored -> (entries [B, T, dim], caches)."""
        entries, ring_kv, ring_gate = caches
        b = x.shape[0]
        m, d, slots = self.rate, self.dim, self.ring_slots
        gate_row = self.gate_proj(x) + ops.gather(self.position_bias, (pos % m).reshape(b, 1), 0)
        put = one_hot_rows(pos % slots, slots)
        ring_kv, ring_gate = blend_rows(ring_kv, self.kv_proj(x), put), blend_rows(ring_gate, gate_row, put)
        window = pos // m
        kv_w, gate_w = ring_kv, ring_gate            # HCA: slot j holds the window's token j
        if self.overlap:   # window w-1's slots first, then window w's: the whole-sequence layout
            order = (ops.arange(slots, dtype=ms.int32).reshape(1, slots) + ((window + 1) % 2 * m).reshape(b, 1)) % slots
            order = ops.broadcast_to(order.expand_dims(-1), ring_kv.shape)
            kv_o, gate_o = ops.gather_elements(ring_kv, 1, order), ops.gather_elements(ring_gate, 1, order)
            kv_w = ops.concat((kv_o[:, :m, :d], kv_o[:, m:, d:]), 1)
            gate_w = ops.concat((gate_o[:, :m, :d], gate_o[:, m:, d:]), 1)
        entry = rope_tail(self.pool(kv_w.expand_dims(1), gate_w.expand_dims(1)).expand_dims(1), entry_cos, entry_sin)
        closes = ((pos + 1) % m == 0).astype(ms.int32)
        # rows whose window does not close write nowhere (index -1)
        entries = blend_rows(entries, entry.reshape(b, 1, d),
                             one_hot_rows(window * closes - (1 - closes), entries.shape[1]))
        return entries, (entries, ring_kv, ring_gate)


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
        return self.rank(x, q_resid, cos, sin, self.compress(ops.stop_gradient(x), cos, sin), positions, segment_ids)

    def rank(self, x, q_resid, cos, sin, keys, positions, segment_ids=None):
        """construct()'s results for queries x [B, S, H] at `positions` [B, S] over the pooled
        keys [B, 1, T, Di] (of the same sequence, or a decoding cache's)."""
        x, q_resid = ops.stop_gradient(x), ops.stop_gradient(q_resid)
        b, s, _ = x.shape
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
    cache_count = 3   # decoding: entries and the ring of the open window (WindowCompressor)

    def __init__(self, c: DeepseekConfig):
        super().__init__(c.hidden_size, c.head_dim, c.compress_rate_hca, False, c.rms_norm_eps,
                         c.fused_ops)

    def construct(self, x, q_resid, cos, sin, positions, segment_ids=None):
        """-> (entries [B, 1, T, D], visible [B, S, T]) or (None, None) when no window has closed."""
        entries = self.compress(x, cos, sin)
        if entries is None:
            return None, None
        return entries, window_visible(entries.shape[2], positions, self.rate, segment_ids)

    def empty_cache(self, batch: int, length: int, dtype):
        return self.empty_window_cache(batch, length, dtype)

    def prefill_cache(self, x, cos, sin, positions, last):
        return self.prefill_window_cache(x, cos, sin, positions, last)

    def decode(self, x, q_resid, cos, sin, pos, entry_cos, entry_sin, caches, dense=False):
        """One token x [B, 1, H] at pos [B] -> (entries [B, 1, T, D], visible [B, 1, T], caches)."""
        entries, caches = self.decode_window(x, pos, entry_cos, entry_sin, caches)
        return entries.expand_dims(1), window_visible(entries.shape[1], pos.reshape(-1, 1), self.rate), caches


class CSACompressor(WindowCompressor):
    cache_count = 6   # decoding: its own entries and ring, then its indexer's

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

    def empty_cache(self, batch: int, length: int, dtype):
        return self.empty_window_cache(batch, length, dtype) + self.indexer.empty_window_cache(batch, length, dtype)

    def prefill_cache(self, x, cos, sin, positions, last):
        return (self.prefill_window_cache(x, cos, sin, positions, last)
                + self.indexer.prefill_window_cache(ops.stop_gradient(x), cos, sin, positions, last))

    def decode(self, x, q_resid, cos, sin, pos, entry_cos, entry_sin, caches, dense=False):
        """One token x [B, 1, H] at pos [B] -> (entries [B, 1, T, D], the entries it attends to
        [B, 1, T]: the indexer's top-k of the visible ones, or all of them when `dense`, caches)."""
        entries, own = self.decode_window(x, pos, entry_cos, entry_sin, caches[:3])
        keys, index_caches = self.indexer.decode_window(x, pos, entry_cos, entry_sin, caches[3:])
        chosen, _, _, causal = self.indexer.rank(x, q_resid, cos, sin, keys.expand_dims(1), pos.reshape(-1, 1))
        return entries.expand_dims(1), causal if dense else chosen, own + index_caches
