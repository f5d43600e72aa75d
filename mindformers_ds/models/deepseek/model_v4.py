"""DeepSeek-V4 (Flash, Pro) causal LM: the V3 causal-LM shell (head, loss, loading, init) around
V4's backbone in the shared shell (causal_lm.py): hyper-connected streams (hyper_connection.py), hybrid sliding / CSA / HCA
attention (v4_attention.py, v4_compressor.py) and the shared MoE (moe.py) with hash-routed
(`hash_moe`) and learned (`moe`, sqrt-softplus + bias) layers.

Parameter names equal transformers' DeepseekV4ForCausalLM. As there, the release's MTP block is
not part of the model: `mfds convert` keeps its tensors (`mtp.*`) so ms -> hf restores them.
Positions are the token indices 0..S-1 of the row: the compressors' windows and RoPE are laid on
them; packed samples (segment_ids) are kept apart by the masks (sliding window and compressed
entries that start in another sample).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor

from ...ops import composite
from .attention import rope_inv_freq
from .config import DeepseekConfig
from .hyper_connection import HyperConnection, HyperHead, merge_streams
from .layers import Embedding, RMSNorm, SequenceGather, SequenceShard
from . import results as R
from .causal_lm import CausalLM
from .moe import MoE
from .reuse import layer_class
from .attention_types import attention_type, cell_class
from .v4_attention import sliding_window_bias
from .v4_compressor import MASK_VALUE


class V4Rotary(nn.Cell):
    """cos/sin [B, 1, S, r/2] of the "main" rope (sliding layers) and the "compress" rope (CSA/HCA
    layers and compressors: compress_rope_theta, YaRN frequencies, cos/sin not rescaled)."""

    def __init__(self, c: DeepseekConfig):
        super().__init__()
        self.main_inv_freq = Tensor(rope_inv_freq(c.qk_rope_head_dim, c.rope_theta, None)[0])
        self.compress_inv_freq = Tensor(rope_inv_freq(c.qk_rope_head_dim, c.compress_rope_theta,
                                                      c.compress_rope_scaling)[0])

    def construct(self, positions):
        return (composite.rope_cos_sin(positions, self.main_inv_freq, 1.0),
                composite.rope_cos_sin(positions, self.compress_inv_freq, 1.0))


class V4DecoderLayer(nn.Cell):
    """Split by the layout table's roles from outside like V3's: routed experts over ep, shared
    experts by width over tp, query heads by whole output groups over tp; the shared-KV head,
    compressors, indexers and mHC have replicated roles and stay whole on every rank. Under
    sequence parallelism the streams, the mHC mixing and the norms (`sequence_region`, all per
    token) hold 1/tp of the sequence; attention and the MoE gather it whole."""

    sequence_region = ("input_layernorm", "post_attention_layernorm", "attn_hc", "ffn_hc")

    def __init__(self, c: DeepseekConfig, layer_idx: int):
        super().__init__()
        self.is_moe = True
        self.self_attn = cell_class(attention_type(c, layer_idx))(c, layer_idx)
        self.reports_index = False   # its attention returns indexer stats (CausalLM.set_indexer_stage)
        self.mlp = MoE(c, layer_idx)
        # what makes two layers' graphs differ (reuse.py): the attention type, hash or learned routing
        self.reuse_key = (self.self_attn.layer_type, "hash" if self.mlp.gate.is_hash else "learned")
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.fused_ops)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.fused_ops)
        self.attn_hc = HyperConnection(c)
        self.ffn_hc = HyperConnection(c)
        self.attn_in, self.attn_out = SequenceGather(), SequenceShard("self_attn.o_b_proj")
        self.ffn_in, self.ffn_out = SequenceGather(), SequenceShard()   # MoE: arrives whole

    def construct(self, streams, inputs):
        """streams [B, S, n, H], the per-layer bundle (results.py: ROPE_MAIN, ROPE_COMPRESS, POSITIONS,
        MASK, TOKEN_IDS, SEGMENT_IDS) -> (streams, tokens per expert [E], balance loss, the indexer's
        stats row or None)"""
        post, comb, x = self.attn_hc(streams)
        out = self.self_attn(self.attn_in(self.input_layernorm(x)), inputs[R.ROPE_MAIN], inputs[R.ROPE_COMPRESS],
                             inputs[R.POSITIONS], inputs[R.MASK], inputs[R.SEGMENT_IDS])
        stats = None
        if self.reports_index:   # a CSA indexer in a training stage (indexer_loss.py)
            out, stats = out
        streams, counts, aux = self.feed_forward(merge_streams(streams, self.attn_out(out), post, comb), inputs)
        return streams, counts, aux, stats

    def forward_cached(self, streams, inputs, caches, prefill):
        """Inference through the attention's caches (V4Attention.forward_cached) -> (streams, caches)."""
        post, comb, x = self.attn_hc(streams)
        out, caches = self.self_attn.forward_cached(self.input_layernorm(x), inputs, caches, prefill)
        return self.feed_forward(merge_streams(streams, out, post, comb), inputs)[0], caches

    def feed_forward(self, streams, inputs):
        post, comb, x = self.ffn_hc(streams)
        out, counts, aux = self.mlp(self.ffn_in(self.post_attention_layernorm(x)), inputs[R.TOKEN_IDS])
        return merge_streams(streams, self.ffn_out(out), post, comb), counts, aux


class DeepseekV4Model(nn.Cell):
    def __init__(self, c: DeepseekConfig):
        super().__init__()
        self.hc_mult, self.window = c.hc_mult, c.sliding_window
        self.compress_rates = (c.compress_rate_csa, c.compress_rate_hca)   # graph code reads plain ints
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        layer = layer_class(V4DecoderLayer, c)
        self.layers = nn.CellList([layer(c, i) for i in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.fused_ops)
        self.hc_head = HyperHead(c)
        self.rotary_emb = V4Rotary(c)


class DeepseekV4ForCausalLM(CausalLM):
    @staticmethod
    def make_backbone(c: DeepseekConfig):
        return DeepseekV4Model(c)

    @classmethod
    def family_for(cls, config: DeepseekConfig):
        if not config.is_v4:
            from ...errors import CheckpointError
            raise CheckpointError(f"{cls.__name__} builds deepseek_v4 models; this one is {config.model_type} "
                                  f"(DeepseekForCausalLM.from_pretrained picks the class)")
        return cls

    def layer_inputs(self, input_ids, position_ids=None, segment_ids=None):
        """The bundle of V4's layers. `position_ids` are not used: V4 lays windows and RoPE on the
        row's token indices."""
        b, s = input_ids.shape
        positions = ops.broadcast_to(ops.arange(s, dtype=ms.int32).expand_dims(0), (b, s))
        rope_main, rope_compress = self.model.rotary_emb(positions)
        return {R.ROPE_MAIN: rope_main, R.ROPE_COMPRESS: rope_compress, R.POSITIONS: positions,
                R.MASK: sliding_window_bias(s, self.model.window, segment_ids), R.TOKEN_IDS: input_ids,
                R.SEGMENT_IDS: segment_ids}

    def prefill_inputs(self, input_ids, last):
        """layer_inputs, and each row's last prompt position (what the ring caches keep)."""
        inputs = self.layer_inputs(input_ids)
        return {R.ROPE_MAIN: inputs[R.ROPE_MAIN], R.ROPE_COMPRESS: inputs[R.ROPE_COMPRESS],
                R.POSITIONS: inputs[R.POSITIONS], R.MASK: inputs[R.MASK], R.TOKEN_IDS: input_ids,
                R.SEGMENT_IDS: None, R.LAST: last}

    def decode_inputs(self, token, pos, length: int):
        """One token [B] per row at positions pos [B]: the ropes at pos, the window ring's mask (the
        slots filled so far: all once pos reaches the window) and the compress rope at the first
        position of each compressor's current window (kv_cache.py)."""
        b = pos.shape[0]
        positions = pos.reshape(b, 1)
        rope_main, rope_compress = self.model.rotary_emb(positions)
        slots = min(self.model.window, length)
        filled = ops.arange(slots, dtype=ms.int32).reshape(1, slots) <= positions
        mask = ops.stop_gradient((1.0 - filled.astype(ms.float32)) * MASK_VALUE).reshape(b, 1, 1, slots)
        csa, hca = self.model.compress_rates
        return {R.ROPE_MAIN: rope_main, R.ROPE_COMPRESS: rope_compress, R.POSITIONS: positions, R.MASK: mask,
                R.TOKEN_IDS: token.reshape(b, 1), R.SEGMENT_IDS: None,
                R.entry_rope(csa): self.model.rotary_emb(positions // csa * csa)[1],
                R.entry_rope(hca): self.model.rotary_emb(positions // hca * hca)[1]}

    def first_hidden(self, input_ids):
        """hc_mult copies of the embeddings: the residual streams [B, S, n, H]."""
        h = self.model.embed_tokens(input_ids)
        b, s, d = h.shape
        return ops.broadcast_to(h.expand_dims(2), (b, s, self.model.hc_mult, d))

    def last_hidden(self, streams):
        return self.model.norm(self.model.hc_head(streams))

    def init_special(self, seed: int) -> None:
        """mHC scales start at 1 (as transformers initialises them); the hash table, which a release
        ships, gets k distinct experts per token id from `seed` so a from-scratch run spreads load."""
        c = self.config
        rng = np.random.default_rng([seed, 4])
        for p in self.get_parameters():
            if p.name.endswith(("attn_hc.scale", "ffn_hc.scale", "hc_head.hc_scale")):
                p.set_data(Tensor(np.ones(p.shape, np.float32)))
            elif p.name.endswith("gate.tid2eid"):
                table = np.argsort(rng.random((c.vocab_size, c.n_routed_experts)), -1)[:, :c.num_experts_per_tok]
                p.set_data(Tensor(table.astype(np.int32)))
