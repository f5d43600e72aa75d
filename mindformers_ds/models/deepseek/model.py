"""DeepSeek V2 / V2-Lite / V3 / R1 / V3.2 causal LM: embedding, decoder layers (dense then MoE),
final norm, and MTP modules, inside the shared causal-LM shell (causal_lm.py: head, losses,
loading, generation).

Parameter names equal HuggingFace's (`model.layers.3.mlp.gate.e_score_correction_bias`,
`lm_head.weight`). MTP modules live at `model.layers.{num_hidden_layers + d}` as in the
official releases; they share the embedding and output head with the main model:
    h_d = block_d(eh_proj([enorm(emb(t_{i+d})); hnorm(h_{d-1})]))
`construct(input_ids)` returns logits [B, S, V]; with labels, the loss.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from . import results as R
from .attention import RotaryEmbedding
from .attention_types import attention_type, cell_class
from .causal_lm import IGNORE_INDEX, CausalLM, shift_left, shifted_targets, token_nll  # noqa: F401  (public)
from .config import DeepseekConfig
from .layers import DTYPES, MLP, Embedding, Linear, RMSNorm, SequenceGather, SequenceShard
from .masks import attention_mask  # noqa: F401  (public: tests and tools read it here)
from .model_v4 import DeepseekV4ForCausalLM
from .moe import MoE
from .reuse import layer_class


class DecoderLayer(nn.Cell):
    """h + attn(norm(h)), then h + ffn(norm(h)). The `Sequence*` cells mark the blocks' edges:
    under sequence parallelism the residual and the norms (`sequence_region`) hold 1/tp of the
    sequence and the blocks gather it whole (layers.py, parallel/sequence.py)."""

    sequence_region = ("input_layernorm", "post_attention_layernorm")

    def __init__(self, config: DeepseekConfig, layer_idx: int):
        super().__init__()
        c = config
        kind = attention_type(c, layer_idx)
        self.self_attn = cell_class(kind)(c)
        self.reports_index = False   # its attention returns indexer stats (CausalLM.set_indexer_stage)
        self.is_moe = c.is_moe_layer(layer_idx)
        self.reuse_key = ("moe" if self.is_moe else "dense", kind)  # what makes two layers' graphs differ (reuse.py)
        self.mlp = MoE(c, layer_idx) if self.is_moe else MLP(c.hidden_size, c.intermediate_size,
                                                             DTYPES[c.compute_dtype], c.fused_ops)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.fused_ops)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.fused_ops)
        self.attn_in, self.attn_out = SequenceGather(), SequenceShard("self_attn.o_proj")
        # a MoE block's output arrives whole (routed experts are not split over tp)
        self.ffn_in, self.ffn_out = SequenceGather(), SequenceShard("" if self.is_moe else "mlp.down_proj")

    def construct(self, h, inputs):
        """h [B, S, H], the per-layer bundle (results.py: ROPE, MASK) -> (hidden, tokens per expert
        [E] or None, balance loss, the indexer's stats row or None)"""
        cos, sin = inputs[R.ROPE]
        x = self.attn_in(self.input_layernorm(h))
        out = self.self_attn(x, cos, sin, inputs[R.MASK])
        stats = None
        if self.reports_index:   # V3.2's indexer in a training stage (indexer_loss.py)
            out, stats = out
        h = h + self.attn_out(out).astype(h.dtype)
        h, counts, aux = self.feed_forward(h)
        return h, counts, aux, stats

    def forward_cached(self, h, inputs, caches, prefill):
        """Inference through the attention's caches (MLAttention.forward_cached) -> (h, caches)."""
        cos, sin = inputs[R.ROPE]
        out, caches = self.self_attn.forward_cached(self.input_layernorm(h), cos, sin, inputs[R.MASK], caches,
                                                    inputs[R.CACHE_WRITE])
        return self.feed_forward(h + out.astype(h.dtype))[0], caches

    def feed_forward(self, h):
        x = self.ffn_in(self.post_attention_layernorm(h))
        if self.is_moe:
            out, counts, aux = self.mlp(x)
            return h + self.ffn_out(out), counts, aux
        return h + self.ffn_out(self.mlp(x)).astype(h.dtype), None, ops.zeros((), ms.float32)


class SharedHead(nn.Cell):
    """Holds the MTP output norm (`shared_head.norm`); the head matrix itself is the main lm_head."""

    def __init__(self, config: DeepseekConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.fused_ops)

    def construct(self, h):
        return self.norm(h)


class MTPLayer(DecoderLayer):
    """One multi-token-prediction depth: h = block(eh_proj([enorm(emb(t_{i+d})); hnorm(h_prev)]))."""

    def __init__(self, config: DeepseekConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        c = config
        self.enorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.fused_ops)
        self.hnorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.fused_ops)
        self.eh_proj = Linear(2 * c.hidden_size, c.hidden_size, False, DTYPES[c.compute_dtype])
        self.shared_head = SharedHead(c)
        # the module's input is made whole (from the whole hidden and embeddings) and its output
        # read whole by the head: under sequence parallelism it shards and gathers its own block
        self.mtp_in, self.mtp_out = SequenceShard(), SequenceGather()

    def mtp_forward(self, emb, h_prev, layer_inputs):
        """`layer_inputs`: the backbone's per-layer bundle (results.py)."""
        x = self.eh_proj(ops.concat((self.enorm(emb), self.hnorm(h_prev)), -1))
        h, counts, aux, stats = self.construct(self.mtp_in(x), layer_inputs)
        return self.mtp_out(h), counts, aux, stats


class DeepseekModel(nn.Cell):
    def __init__(self, config: DeepseekConfig):
        super().__init__()
        c = config
        self.num_layers = c.num_hidden_layers
        self.mtp_depth = c.mtp_depth
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        layer = layer_class(DecoderLayer, c)
        layers = [layer(c, i) for i in range(c.num_hidden_layers)]
        layers += [MTPLayer(c, c.num_hidden_layers + d) for d in range(c.mtp_depth)]
        self.layers = nn.CellList(layers)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.fused_ops)
        self.rotary_emb = RotaryEmbedding(c)


class DeepseekForCausalLM(CausalLM):
    """DeepSeek V2 / V2-Lite / V3 / R1 / V3.2 (MLA, DeepSeekMoE, MTP). As the family's public class,
    `DeepseekForCausalLM(config)` and `.from_pretrained(dir)` build whichever family the config
    names (V4 included)."""

    @classmethod
    def family_for(cls, config: DeepseekConfig):
        """V4 checkpoints build the V4 class: `DeepseekForCausalLM` is the family's public entry."""
        return DeepseekV4ForCausalLM if config.is_v4 and cls is DeepseekForCausalLM else cls

    @staticmethod
    def make_backbone(c: DeepseekConfig):
        return DeepseekModel(c)

    def layer_inputs(self, input_ids, position_ids=None, segment_ids=None):
        """{ROPE: (cos, sin) of the positions (0..S-1 unless given), MASK: causal, per packed sample}"""
        b, s = input_ids.shape
        if position_ids is None:
            position_ids = ops.broadcast_to(ops.arange(s, dtype=ms.int32).expand_dims(0), (b, s))
        return {R.ROPE: self.model.rotary_emb(position_ids), R.MASK: attention_mask(b, s, segment_ids)}

    def prefill_inputs(self, input_ids, last):
        """layer_inputs, every cache slot written (kv_cache.py)."""
        b, s = input_ids.shape
        inputs = self.layer_inputs(input_ids)
        return {R.ROPE: inputs[R.ROPE], R.MASK: inputs[R.MASK], R.CACHE_WRITE: ops.ones((b, s, 1), ms.float32)}

    def decode_inputs(self, token, pos, length: int):
        """The bundle of one decode step at positions pos [B] over caches of `length` slots: the
        token sees slots <= pos, and its own latents are written at slot pos (kv_cache.py)."""
        b = pos.shape[0]
        slots = ops.arange(length, dtype=ms.int32).expand_dims(0)
        mask = (slots <= pos.reshape(b, 1)).reshape(b, 1, 1, length)
        write = (slots == pos.reshape(b, 1)).astype(ms.float32).reshape(b, length, 1)
        return {R.ROPE: self.model.rotary_emb(pos.reshape(b, 1)), R.MASK: mask, R.CACHE_WRITE: write}

    def first_hidden(self, input_ids):
        return self.model.embed_tokens(input_ids)

    def last_hidden(self, h):
        return self.model.norm(h)
