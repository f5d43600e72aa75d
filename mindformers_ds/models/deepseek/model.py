"""DeepSeek V2/V3 causal LM: embedding, decoder layers (dense then MoE), final norm, head, MTP.

Parameter names equal HuggingFace's (`model.layers.3.mlp.gate.e_score_correction_bias`,
`lm_head.weight`). MTP modules live at `model.layers.{num_hidden_layers + d}` as in the
official releases; they share the embedding and output head with the main model.

`construct(input_ids)` returns logits [B, S, V]; with labels it returns (loss, logits).
`forward_train` returns everything the training step needs (loss sums and token counts, so
that gradient accumulation and data parallelism average over tokens exactly).
"""
from __future__ import annotations

import hashlib

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from .attention import MLAttention, RotaryEmbedding
from .config import DeepseekConfig
from .layers import DTYPES, MLP, Embedding, Linear, RMSNorm
from .masks import attention_mask
from .moe import MoE
from .reuse import layer_class

IGNORE_INDEX = -100


class DecoderLayer(nn.Cell):
    def __init__(self, config: DeepseekConfig, layer_idx: int, ctx=None):
        super().__init__()
        c = config
        fused_norm = "rms_norm" in c.fused_ops
        self.self_attn = MLAttention(c, ctx)
        self.is_moe = c.is_moe_layer(layer_idx)
        self.reuse_key = ("moe" if self.is_moe else "dense",)  # what makes two layers' graphs differ (reuse.py)
        self.mlp = MoE(c, ctx, layer_idx) if self.is_moe else MLP(c.hidden_size, c.intermediate_size, DTYPES[c.compute_dtype],
                                                       "swiglu" in c.fused_ops, ctx)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, fused_norm)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, fused_norm)

    def construct(self, h, cos, sin, mask):
        """-> (hidden, tokens per expert [E] or None, balance loss)"""
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask).astype(h.dtype)
        return self.feed_forward(h)

    def forward_cached(self, h, cos, sin, mask, cache_c, cache_k, write):
        """Inference through the MLA latent cache (see MLAttention.forward_cached)."""
        out, cache_c, cache_k = self.self_attn.forward_cached(self.input_layernorm(h), cos, sin, mask,
                                                              cache_c, cache_k, write)
        return self.feed_forward(h + out.astype(h.dtype))[0], cache_c, cache_k

    def feed_forward(self, h):
        x = self.post_attention_layernorm(h)
        if self.is_moe:
            out, counts, aux = self.mlp(x)
            return h + out, counts, aux
        return h + self.mlp(x).astype(h.dtype), None, ops.zeros((), ms.float32)


class SharedHead(nn.Cell):
    """Holds the MTP output norm (`shared_head.norm`); the head matrix itself is the main lm_head."""

    def __init__(self, config: DeepseekConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "rms_norm" in config.fused_ops)

    def construct(self, h):
        return self.norm(h)


class MTPLayer(DecoderLayer):
    """One multi-token-prediction depth: h = block(eh_proj([enorm(emb(t_{i+d})); hnorm(h_prev)]))."""

    def __init__(self, config: DeepseekConfig, layer_idx: int, ctx=None):
        super().__init__(config, layer_idx, ctx)
        c = config
        fused_norm = "rms_norm" in c.fused_ops
        self.enorm = RMSNorm(c.hidden_size, c.rms_norm_eps, fused_norm)
        self.hnorm = RMSNorm(c.hidden_size, c.rms_norm_eps, fused_norm)
        self.eh_proj = Linear(2 * c.hidden_size, c.hidden_size, False, DTYPES[c.compute_dtype])
        self.shared_head = SharedHead(c)

    def mtp_forward(self, emb, h_prev, cos, sin, mask):
        x = self.eh_proj(ops.concat((self.enorm(emb), self.hnorm(h_prev)), -1))
        return self.construct(x, cos, sin, mask)


class DeepseekModel(nn.Cell):
    def __init__(self, config: DeepseekConfig, ctx=None):
        super().__init__()
        c = config
        self.num_layers = c.num_hidden_layers
        self.num_mtp = c.num_nextn_predict_layers
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        layer = layer_class(DecoderLayer, c)
        layers = [layer(c, i, ctx) for i in range(c.num_hidden_layers)]
        layers += [MTPLayer(c, c.num_hidden_layers + d, ctx) for d in range(c.num_nextn_predict_layers)]
        self.layers = nn.CellList(layers)
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, "rms_norm" in c.fused_ops)
        self.rotary_emb = RotaryEmbedding(c)


def shift_left(x, n: int, fill):
    """x[:, n:] padded on the right with `fill` to the original length."""
    pad = ops.full((x.shape[0], n), fill, dtype=x.dtype)
    return ops.concat((x[:, n:], pad), 1)


def shifted_targets(labels, n: int, segment_ids=None):
    """Targets at offset n (labels[i + n] for position i), ignored when they fall in another
    packed sample than position i."""
    targets = shift_left(labels, n, IGNORE_INDEX)
    if segment_ids is None:
        return targets
    same = shift_left(segment_ids, n, -1) == segment_ids
    return ops.where(same, targets, ops.full_like(targets, IGNORE_INDEX))


def token_nll(logits, targets):
    """(sum of -log p(target), number of targets) over targets != IGNORE_INDEX, in float32."""
    # One LogSoftmax kernel (and its grad kernel) instead of logsumexp's composite: each [T, V]
    # intermediate is 262 MB at 2048 tokens x 32k vocab, and the composite kept ~10 of them.
    valid = targets != IGNORE_INDEX
    safe = ops.where(valid, targets, ops.zeros_like(targets))
    logp = ops.log_softmax(logits.astype(ms.float32), -1)
    picked = ops.gather_elements(logp, -1, safe.expand_dims(-1)).squeeze(-1)
    nll = -picked * valid.astype(ms.float32)
    return nll.sum(), valid.astype(ms.float32).sum()


class DeepseekForCausalLM(nn.Cell):
    def __init__(self, config: DeepseekConfig, parallel=None):
        """`parallel`: a ParallelContext of the explicit executor; this rank then holds only
        its slices (heads / FFN width over tp, experts over ep). None: the whole model."""
        super().__init__()
        self.config = config
        self.parallel = parallel
        c = config
        self.model = self.make_backbone(c, parallel)
        self.tie = c.tie_word_embeddings
        if not self.tie:
            self.lm_head = Linear(c.hidden_size, c.vocab_size, False, DTYPES[c.compute_dtype])
        self.head_matmul = ops.MatMul(transpose_b=True)
        self.head_nll = None  # head + cross-entropy as one kernel (no [T, V] logits kept)
        if "lm_head_nll" in c.fused_ops:
            from ...ops import kernels
            self.head_nll = kernels.lm_head_nll_op(DTYPES[c.compute_dtype])
        self.num_layers, self.num_mtp = c.num_hidden_layers, self.mtp_depth(c)
        self.mtp_factor = c.mtp_loss_factor
        self.num_moe_layers = sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers + self.num_mtp))
        self.generators = {}  # (batch, length, cache) -> the compiled decoder `generate` reuses

    # ---- pieces ------------------------------------------------------------------------
    @staticmethod
    def make_backbone(c: DeepseekConfig, parallel):
        return DeepseekModel(c, parallel)

    @staticmethod
    def mtp_depth(c: DeepseekConfig) -> int:
        return c.num_nextn_predict_layers

    def head(self, h):
        if self.tie:
            b, s, d = h.shape
            w = self.model.embed_tokens.weight.astype(h.dtype)
            return self.head_matmul(h.reshape(b * s, d), w).reshape(b, s, -1)
        return self.lm_head(h)

    def head_loss(self, h, targets):
        """(sum of -log p(target), count) for hidden states h [B, S, D]."""
        lora_on_head = not self.tie and self.lm_head.lora_rank > 0  # the kernel knows no adapters
        if self.head_nll is None or lora_on_head:
            return token_nll(self.head(h), targets)
        w = self.model.embed_tokens.weight if self.tie else self.lm_head.weight
        return self.head_nll(h, w, targets)

    def backbone(self, input_ids, position_ids=None, segment_ids=None):
        """-> (final normed hidden [B, S, H], pre-norm hidden, cos, sin, mask, loads tuple, aux sum)"""
        b, s = input_ids.shape
        if position_ids is None:
            position_ids = ops.broadcast_to(ops.arange(s, dtype=ms.int32).expand_dims(0), (b, s))
        cos, sin = self.model.rotary_emb(position_ids)
        mask = attention_mask(b, s, segment_ids)
        h = self.model.embed_tokens(input_ids)
        loads = ()
        aux = ops.zeros((), ms.float32)
        for i in range(self.num_layers):
            h, counts, layer_aux = self.model.layers[i](h, cos, sin, mask)
            if counts is not None:
                loads = loads + (counts,)
            aux = aux + layer_aux
        return self.model.norm(h), cos, sin, mask, loads, aux

    # ---- entry points --------------------------------------------------------------------
    def forward_train(self, input_ids, labels, position_ids=None, segment_ids=None):
        """-> (lm nll sum, lm token count, mtp nll sum (mean over depths), mtp token count,
               balance loss, expert load [n_moe_layers, E] or a 0-size tensor)"""
        hidden, cos, sin, mask, loads, aux = self.backbone(input_ids, position_ids, segment_ids)
        lm_sum, lm_count = self.head_loss(hidden, shifted_targets(labels, 1, segment_ids))
        mtp_sum = ops.zeros((), ms.float32)
        mtp_count = ops.zeros((), ms.float32)
        h_prev = hidden
        for d in range(self.num_mtp):
            layer = self.model.layers[self.num_layers + d]
            emb = self.model.embed_tokens(shift_left(input_ids, d + 1, 0))
            h_prev, counts, layer_aux = layer.mtp_forward(emb, h_prev, cos, sin, mask)
            if counts is not None:
                loads = loads + (counts,)
            aux = aux + layer_aux
            d_sum, d_count = self.head_loss(layer.shared_head(h_prev), shifted_targets(labels, d + 2, segment_ids))
            mtp_sum = mtp_sum + d_sum / self.num_mtp
            mtp_count = mtp_count + d_count / self.num_mtp
        load = ops.stack(loads).astype(ms.float32) if loads else ops.zeros((0,), ms.float32)
        return lm_sum, lm_count, mtp_sum, mtp_count, aux, load

    def construct(self, input_ids, labels=None, position_ids=None, segment_ids=None):
        if labels is None:
            hidden = self.backbone(input_ids, position_ids, segment_ids)[0]
            return self.head(hidden)
        lm_sum, lm_count, mtp_sum, mtp_count, aux, _ = self.forward_train(input_ids, labels, position_ids,
                                                                          segment_ids)
        loss = lm_sum / ops.maximum(lm_count, 1.0) + aux
        if self.num_mtp > 0:
            loss = loss + self.mtp_factor * mtp_sum / ops.maximum(mtp_count, 1.0)
        return loss

    def generate(self, input_ids, max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id=None, pad_token_id=None, attention_mask=None,
                 seed: int = 0, use_cache: bool = True):
        """transformers-style generation (KV cache for V2/V3): ids [B, S] -> ms.Tensor int32
        [B, S + new], prompt then new tokens, padded with `pad_token_id`; see generation.generate_ids."""
        from ...generation import generate_ids
        out = generate_ids(self, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id,
                           pad_token_id, attention_mask, seed, use_cache)
        return ms.Tensor(out)

    # ---- transformers-style loading ---------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, **overrides) -> "DeepseekForCausalLM":
        """A model from a HuggingFace directory or a directory/checkpoint written by this stack."""
        from ...checkpoint.pretrained import from_pretrained
        return from_pretrained(path, **overrides)

    def save_pretrained(self, directory: str, layout: str = "hf", dtype: str = "F32") -> str:
        from ...checkpoint.pretrained import save_pretrained
        return save_pretrained(self, directory, layout, dtype)

    # ---- initialisation ------------------------------------------------------------------
    def init_weights(self, seed: int = 0, layout=None) -> None:
        """Deterministic init from `seed` (same on every process): N(0, initializer_range) for
        matrices, ones for norms, zeros for biases and the router correction bias. Each
        parameter draws from its own stream keyed by name, so adding a module never changes
        the others. With `layout` (a callable name -> (full shape, slicer)), the full tensor is
        drawn and this rank keeps its slice, so every parallel layout starts from the same model."""
        std = self.config.initializer_range
        for p in self.get_parameters():
            name = p.name
            if p.dtype in (ms.int32, ms.int64):
                continue  # integer tables (V4's tid2eid): see init_special
            if name.endswith("norm.weight"):
                continue  # created as ones
            if name.endswith("bias") or p.ndim < 2:
                p.set_data(ms.Tensor(np.zeros(p.shape, np.float32)))
                continue
            full_shape, slicer = layout(name) if layout is not None else (p.shape, None)
            key = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
            values = np.random.default_rng([seed, key]).normal(0.0, std, full_shape).astype(np.float32)
            p.set_data(ms.Tensor(slicer(values) if slicer is not None else values))
        self.init_special(seed)

    def init_special(self, seed: int) -> None:
        """Parameters whose initial value is not N(0, std) / ones / zeros (V4 has some)."""

    def num_parameters(self, trainable_only: bool = False) -> int:
        params = self.trainable_params() if trainable_only else self.get_parameters()
        return int(sum(int(np.prod(p.shape)) for p in params))
