"""DeepSeek-V4 attention: shared-KV multi-query attention with a sliding window, plus the
compressed entries of CSA / HCA layers (v4_compressor.py), per-head attention sinks and the
grouped low-rank output projection.

  q   = unit_rms(q_b(rms(q_a(x))))  per head [B, H, S, D];  kv = rms(kv_proj(x)) [B, 1, S, D]
  RoPE on the trailing qk_rope_head_dim channels (interleaved pairs) of q and kv: "main" tables
  for sliding layers, "compress" (YaRN) tables for CSA/HCA layers, whose compressor entries
  [B, 1, T, D] are appended to kv with their own visibility.
  p   = softmax([q.kv / sqrt(D) + mask, sink_h]) without the sink column (a learned per-head
        logit that can absorb probability mass)
  out = p @ kv (the key is the value), then RoPE with -sin on its rope channels, which removes
        the value's absolute rotation; heads are split in o_groups, each projected to o_lora_rank
        (o_a_proj, block diagonal), then mixed to hidden (o_b_proj).
The one KV head is multiplied as a single [B, S+T, D] tensor, never copied per head.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from .config import DeepseekConfig
from .hyper_connection import unit_rms_norm
from .indexer_loss import index_stats
from . import results as R
from .layers import DTYPES, Linear, RMSNorm, SharedAcrossHeads, SummedOverHeads, zeros_param
from .ring_cache import blend_rows, one_hot_rows, ring_from_sequence
from .v4_compressor import MASK_VALUE, CSACompressor, HCACompressor, rope_tail

COMPRESSORS = {"compressed_sparse_attention": CSACompressor, "heavily_compressed_attention": HCACompressor}


def sliding_window_bias(seq: int, window: int, segment_ids=None):
    """Additive mask [B|1, 1, S, S]: query t sees keys (t - window, t], within its packed sample."""
    pos = ops.arange(seq, dtype=ms.int32)
    q, k = pos.reshape(-1, 1), pos.reshape(1, -1)
    keep = ops.logical_and(k <= q, k > q - window).reshape(1, 1, seq, seq)
    if segment_ids is not None:
        keep = ops.logical_and(keep, (segment_ids.expand_dims(2) == segment_ids.expand_dims(1)).expand_dims(1))
    return ops.stop_gradient((1.0 - keep.astype(ms.float32)) * MASK_VALUE)


class GroupedLinear(nn.Cell):
    """Block-diagonal projection: input [.., g, in_g] -> [.., g * out_g]; weight [g * out_g, in_g]
    as transformers stores `o_a_proj.weight`."""

    def __init__(self, in_per_group: int, out_features: int, groups: int):
        super().__init__()
        self.weight = zeros_param((out_features, in_per_group), "weight")
        self.groups, self.out_per_group, self.in_per_group = groups, out_features // groups, in_per_group
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)

    def construct(self, x):
        lead = x.shape[:-2]
        g = self.groups
        x = x.reshape(-1, g, self.in_per_group).transpose(1, 0, 2)                  # [g, N, in_g]
        w = self.weight.reshape(g, self.out_per_group, self.in_per_group)
        y = self.bmm_nt(x, w).transpose(1, 0, 2)                                     # [N, g, out_g]
        return y.reshape(lead + (g * self.out_per_group,))


class V4Attention(nn.Cell):
    def __init__(self, c: DeepseekConfig, layer_idx: int):
        super().__init__()
        dt = DTYPES[c.compute_dtype]
        self.layer_type = c.layer_types[layer_idx]
        self.uses_compress_rope = self.layer_type != "sliding_attention"
        self.head_dim, self.eps, self.window = c.head_dim, c.rms_norm_eps, c.sliding_window
        self.q_a_proj = Linear(c.hidden_size, c.q_lora_rank, False, dt)
        self.q_a_norm = RMSNorm(c.q_lora_rank, c.rms_norm_eps, c.fused_ops)
        self.q_b_proj = Linear(c.q_lora_rank, c.num_attention_heads * c.head_dim, False, dt)
        self.kv_proj = Linear(c.hidden_size, c.head_dim, False, dt)
        self.kv_norm = RMSNorm(c.head_dim, c.rms_norm_eps, c.fused_ops)
        heads_dim = c.num_attention_heads * c.head_dim
        self.o_a_proj = GroupedLinear(heads_dim // c.o_groups, c.o_groups * c.o_lora_rank, c.o_groups)
        self.o_b_proj = Linear(c.o_groups * c.o_lora_rank, c.hidden_size, False, dt)
        self.sinks = zeros_param((c.num_attention_heads,), "sinks")
        self.has_compressor = self.layer_type in COMPRESSORS
        self.has_indexer = self.layer_type == "compressed_sparse_attention"
        self.index_stage, self.reports_index = "frozen", False   # CausalLM.set_indexer_stage
        self.heads_summed = SummedOverHeads()
        if self.has_compressor:
            self.compressor = COMPRESSORS[self.layer_type](c)
        self.scale = c.head_dim ** -0.5
        self.shared_keys = SharedAcrossHeads()  # the one KV head (and compressed entries) every head reads
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bmm = ops.BatchMatMul()
        self.add_sinks = ops.Add()  # a primitive, so the Ascend plan can split the sinks with their heads

    def construct(self, x, rope_main, rope_compress, positions, mask_bias, segment_ids=None):
        """x [B, S, H]; rope_* = (cos, sin) [B, 1, S, r/2]; positions [B, S]; mask_bias [B|1, 1, S, S];
        segment_ids [B, S] of packed samples or None. -> out [B, S, H]; a CSA layer whose indexer
        trains (`index_stage`, indexer_loss.py) -> (out, its stats row)."""
        return self.over_sequence(x, rope_main, rope_compress, positions, mask_bias, segment_ids)[0]

    def project(self, x, cos, sin):
        """-> (q [B, H, S, D] and the shared key-value kv [B, 1, S, D], both rotated; the q latent)"""
        b, s, _ = x.shape
        d = self.head_dim
        q_resid = self.q_a_norm(self.q_a_proj(x))
        # heads read off q_b's shape: a rank holding whole output groups of heads runs this unchanged
        q = unit_rms_norm(self.q_b_proj(q_resid).reshape(b, s, -1, d), self.eps).transpose(0, 2, 1, 3)
        q = rope_tail(q, cos, sin)
        kv = rope_tail(self.kv_norm(self.kv_proj(x)).reshape(b, 1, s, d), cos, sin)
        return q, kv, q_resid

    def attend(self, q, kv, bias, cos, sin):
        """q [B, H, S, D] over the shared keys kv [B, 1, K, D] under the additive bias [B, 1, S, K]
        -> (out [B, S, hidden], the joint probabilities [B, H, S, K], the scaled scores, the sinks)."""
        b, h, s, d = q.shape
        keys = self.shared_keys(kv.reshape(b, -1, d))
        raw = self.bmm_nt(q.reshape(b, h * s, d), keys).reshape(b, h, s, -1) * self.scale
        sinks = self.add_sinks(ops.zeros((b, h, s, 1), raw.dtype), self.sinks.reshape(1, h, 1, 1))
        probs = joint_softmax(raw + bias, sinks)
        out = self.bmm(probs.reshape(b, h * s, -1), keys).reshape(b, h, s, d)
        out = rope_tail(out, cos, -sin).transpose(0, 2, 1, 3)                         # [B, S, H, D]
        grouped = self.o_a_proj(out.reshape(b, s, -1, self.o_a_proj.in_per_group))
        return self.o_b_proj(grouped), probs, raw, sinks

    def over_sequence(self, x, rope_main, rope_compress, positions, mask_bias, segment_ids=None):
        """construct()'s result over a whole sequence, and the rotated kv [B, 1, S, D] (a prefill keeps it)."""
        b, s, _ = x.shape
        cos, sin = rope_compress if self.uses_compress_rope else rope_main
        q, kv, q_resid = self.project(x, cos, sin)
        window = ops.broadcast_to(mask_bias, (b, 1, s, s))
        bias, keys = window, kv
        entries, visible, chosen, index, causal = None, None, None, None, None
        if self.reports_index:   # dense warm-up: every closed window; sparse: the indexer's top-k
            entries, chosen, index, causal = self.compressor.with_index(x, q_resid, rope_compress[0],
                                                                        rope_compress[1], positions, segment_ids)
            visible = causal if self.index_stage == "dense_warmup" else chosen
        elif self.has_compressor:
            entries, visible = self.compressor(x, q_resid, rope_compress[0], rope_compress[1], positions,
                                               segment_ids)
        if entries is not None:
            keys = ops.concat((kv, entries), 2)
            bias = ops.concat((window, entry_bias(visible)), -1)
        out, probs, raw, sinks = self.attend(q, keys, bias, cos, sin)
        if not self.reports_index:
            return out, kv
        if entries is None:   # no window has closed: nothing to rank
            return (out, ops.zeros((3,), ms.float32)), kv
        # the target is what the layer computes: each entry's share of the joint softmax over
        # window, entries and sink (indexer_loss.py); the dense one for recall
        attended_sum = self.heads_summed(ops.stop_gradient(probs)[..., s:].sum(1))   # a target only
        dense_sum = attended_sum
        if self.index_stage != "dense_warmup":   # attention ran over the top-k: the dense one for recall
            dense_p = joint_softmax(ops.stop_gradient(raw) + ops.concat((window, entry_bias(causal)), -1),
                                    ops.stop_gradient(sinks))
            dense_sum = self.heads_summed(dense_p[..., s:].sum(1))
        return (out, index_stats(index, attended_sum, visible, dense_sum, causal, chosen)), kv

    # ---- cached decoding (kv_cache.py) ---------------------------------------------------------
    @property
    def cache_count(self) -> int:
        """The sliding window's ring, then the compressor's caches (v4_compressor.py)."""
        return 1 + (self.compressor.cache_count if self.has_compressor else 0)

    def empty_cache(self, batch: int, length: int, dtype):
        ring = (ops.zeros((batch, min(self.window, length), self.head_dim), dtype),)
        return ring + (self.compressor.empty_cache(batch, length, dtype) if self.has_compressor else ())

    def forward_cached(self, x, inputs, caches, prefill):
        """Attention through the caches -> (out, caches). A prefill runs the whole padded prompts
        (over_sequence) and keeps, as of each row's last prompt position, the window's last keys and
        the compressors' state; a decode step attends from its token over the window's ring (slots
        it has filled) and the compressed entries whose windows have closed."""
        rope_main, rope_compress = inputs[R.ROPE_MAIN], inputs[R.ROPE_COMPRESS]
        cos, sin = rope_compress if self.uses_compress_rope else rope_main
        slots = caches[0].shape[1]
        if prefill:
            out, kv = self.over_sequence(x, rope_main, rope_compress, inputs[R.POSITIONS], inputs[R.MASK])
            if self.reports_index:
                out = out[0]
            last = inputs[R.LAST]
            new = (ring_from_sequence(kv[:, 0], last, slots, 0.0),)
            if self.has_compressor:
                new = new + self.compressor.prefill_cache(x, rope_compress[0], rope_compress[1], inputs[R.POSITIONS],
                                                          last)
            return out, new
        b = x.shape[0]
        pos = inputs[R.POSITIONS].reshape(b)
        q, kv, q_resid = self.project(x, cos, sin)
        ring = blend_rows(caches[0], kv.reshape(b, 1, self.head_dim), one_hot_rows(pos % slots, slots))
        keys, bias, new = ring.expand_dims(1), inputs[R.MASK], (ring,)
        if self.has_compressor:
            entry_cos, entry_sin = inputs[R.entry_rope(self.compressor.rate)]
            entries, visible, state = self.compressor.decode(x, q_resid, rope_compress[0], rope_compress[1], pos,
                                                             entry_cos, entry_sin, caches[1:],
                                                             self.index_stage == "dense_warmup")
            keys = ops.concat((keys, entries), 2)
            bias = ops.concat((bias, entry_bias(visible)), -1)
            new = new + state
        return self.attend(q, keys, bias, cos, sin)[0], new


def entry_bias(visible):
    """The compressed entries' additive mask [B, 1, S, T] from visible [B, S, T] bool."""
    return ops.stop_gradient((1.0 - visible.astype(ms.float32)) * MASK_VALUE).expand_dims(1)


def joint_softmax(scores, sinks):
    """softmax over [keys..., sink] per query, the sink's column dropped: [B, H, S, K]."""
    return ops.softmax(ops.concat((scores, sinks), -1), -1)[..., :-1]
