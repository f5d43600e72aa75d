"""The causal-LM shell every DeepSeek family shares: output head and token-mean losses (with the
MTP heads), the training forward with named results, generation, transformers-style loading and
deterministic initialisation. A family subclasses it with its backbone (`make_backbone`,
`backbone`); V2/V3/V3.2 in model.py, V4 in model_v4.py.

    loss(position i) = -log p(labels[i + 1] | tokens <= i)           (targets of another packed
    mtp_d(position i) = -log p(labels[i + 1 + d] | MTP module d)     sample are ignored)
`forward_train` returns sums and counts, not means, so gradient accumulation and data parallelism
average over the global batch's tokens exactly (the step scales by 1/tokens).
"""
from __future__ import annotations

import hashlib

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from ...ops import choice
from . import results as R
from .config import DeepseekConfig
from .indexer_loss import index_loss, stats_row
from .layers import DTYPES, Linear, SequenceGather, SequenceShard

IGNORE_INDEX = -100


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


class CausalLM(nn.Cell):
    def __init__(self, config: DeepseekConfig):
        """The whole model; an executor splits it over ranks from outside (parallel/parallelize.py)."""
        super().__init__()
        self.config = config
        c = config
        self.model = self.make_backbone(c)
        self.tie = c.tie_word_embeddings
        if not self.tie:
            self.lm_head = Linear(c.hidden_size, c.vocab_size, False, DTYPES[c.compute_dtype])
        self.head_matmul = ops.MatMul(transpose_b=True)
        # head + cross-entropy as one kernel (no [T, V] logits kept), or None: logits + token_nll
        self.head_nll = choice.operator("lm_head_nll", c.fused_ops, dtype=DTYPES[c.compute_dtype])
        self.num_layers, self.mtp_depth = c.num_hidden_layers, c.mtp_depth
        self.mtp_factor = c.mtp_loss_factor
        self.num_moe_layers = sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers + self.mtp_depth))
        self.generators = {}  # (batch, length, cache) -> the compiled decoder `generate` reuses
        # the residual stream's ends (sequence parallelism splits what lies between: layers.py)
        self.sequence_in, self.sequence_out = SequenceShard(), SequenceGather()
        # the indexers' training (indexer_loss.py): frozen unless set_indexer_stage says otherwise
        self.index_stage, self.index_weight = "frozen", 0.0
        self.index_rows = c.num_hidden_layers + c.mtp_depth   # rows of INDEX_STATS

    # ---- what a family provides ---------------------------------------------------------
    @staticmethod
    def make_backbone(c: DeepseekConfig):
        raise NotImplementedError

    def layer_inputs(self, input_ids, position_ids=None, segment_ids=None):
        """The per-layer inputs of a forward over input_ids [B, S] (a dict keyed as in results.py)."""
        raise NotImplementedError

    def prefill_inputs(self, input_ids, last):
        """The bundle of a cached prefill of the padded prompts input_ids [B, L] whose last real
        positions are `last` [B] (kv_cache.py)."""
        raise NotImplementedError

    def decode_inputs(self, token, pos, length: int):
        """The bundle of one decode step: token [B] at positions pos [B], caches of `length` slots."""
        raise NotImplementedError

    def first_hidden(self, input_ids):
        """What the first layer reads: V3's embeddings [B, S, H], V4's residual streams [B, S, n, H]."""
        raise NotImplementedError

    def last_hidden(self, h):
        """The last layer's output as the head reads it (normed [B, S, H])."""
        raise NotImplementedError

    @classmethod
    def family_for(cls, config: DeepseekConfig):
        """The class that builds `config`'s family; a family class refuses another family."""
        return cls

    # ---- the backbone: one layer loop for every family and every use ----------------------
    def residual_input(self, input_ids):
        """What the first decoder layer reads, as the residual stream between layers holds it."""
        return self.sequence_in(self.first_hidden(input_ids))

    def run_layers(self, h, inputs, caches=None, prefill=False, start=0, stop=None):
        """The decoder layers start..stop-1 (default: all) over h with the bundle `inputs`:
        training and recompute (caches None) -> {HIDDEN, LOADS (the MoE layers' expert loads),
        AUX (balance loss), INDEX_STATS (the indexers' rows, indexer_loss.py), CACHES ()};
        cached decoding (kv_cache.py): `caches` is the flat tuple of the layers' caches (each
        layer's attention holds `cache_count` of them), `prefill` says whether the bundle is a
        prompt's (prefill_inputs) or one token's (decode_inputs) -> the same with CACHES the new
        caches. A pipeline stage runs its own range."""
        loads, new = (), ()
        aux = ops.zeros((), ms.float32)
        index = self.empty_index_stats()
        offset = 0
        for i in range(start, self.num_layers if stop is None else stop):
            layer = self.model.layers[i]
            if caches is None:
                h, counts, layer_aux, stats = layer(h, inputs)
                if counts is not None:
                    loads = loads + (counts,)
                aux = aux + layer_aux
                if stats is not None:
                    index = index + stats_row(stats, i, self.index_rows)
            else:
                count = layer.self_attn.cache_count
                h, mine = layer.forward_cached(h, inputs, caches[offset:offset + count], prefill)
                new = new + mine
                offset += count
        return {R.HIDDEN: h, R.LOADS: loads, R.AUX: aux, R.INDEX_STATS: index, R.CACHES: new}

    def empty_caches(self, batch: int, length: int, dtype):
        """Every decoder layer's caches for `length` slots, before a prefill writes them."""
        caches = ()
        for i in range(self.num_layers):
            caches = caches + self.model.layers[i].self_attn.empty_cache(batch, length, dtype)
        return caches

    def empty_index_stats(self):
        """The zero INDEX_STATS table: [layers + MTP, 3] when an indexer trains, else 0-size."""
        if self.index_stage == "frozen":
            return ops.zeros((0,), ms.float32)
        return ops.zeros((self.index_rows, 3), ms.float32)

    def set_indexer_stage(self, stage: str, weight: float = 1.0) -> list:
        """Before the first compile: the indexers' training stage (frozen | dense_warmup | sparse) on every
        layer with an indexer, and the KL's weight in the loss; -> the indexers' parameters, which
        train in every stage but `frozen` (train/indexer_training.py freezes the rest in
        `dense_warmup`)."""
        self.index_stage, self.index_weight = stage, float(weight) if stage != "frozen" else 0.0
        params = []
        for layer in self.model.layers:
            attn = getattr(layer, "self_attn", None)
            if attn is None or not getattr(attn, "has_indexer", False):
                continue
            attn.index_stage, attn.reports_index = stage, stage != "frozen"
            layer.reports_index = stage != "frozen"
            params += [p for name, p in attn.parameters_and_names() if ".indexer." in f".{name}"]
        return params

    def backbone(self, input_ids, position_ids=None, segment_ids=None):
        """-> {HIDDEN, LAYER_INPUTS, LOADS, AUX} (results.py)"""
        inputs = self.layer_inputs(input_ids, position_ids, segment_ids)
        run = self.run_layers(self.residual_input(input_ids), inputs)
        return {R.HIDDEN: self.last_hidden(self.sequence_out(run[R.HIDDEN])), R.LAYER_INPUTS: inputs,
                R.LOADS: run[R.LOADS], R.AUX: run[R.AUX]}

    # ---- pieces ------------------------------------------------------------------------
    def head(self, h):
        if self.tie:
            b, s, d = h.shape
            w = self.model.embed_tokens.weight.astype(h.dtype)
            return self.head_matmul(h.reshape(b * s, d), w).reshape(b, s, -1)
        return self.lm_head(h)

    def head_loss(self, h, targets):
        """(sum of -log p(target), count) for hidden states h [B, S, D]."""
        lora_on_head = not self.tie and self.lm_head.has_adapter  # the kernel knows no adapters
        if self.head_nll is None or lora_on_head:
            return token_nll(self.head(h), targets)
        w = self.model.embed_tokens.weight if self.tie else self.lm_head.weight
        return self.head_nll(h, w, targets)

    # ---- entry points --------------------------------------------------------------------
    def forward_train(self, input_ids, labels, position_ids=None, segment_ids=None):
        """-> {LM_SUM, LM_COUNT, MTP_SUM (mean over depths), MTP_COUNT, AUX, INDEX_KL, LOAD, INDEX_STATS}
        (results.py)"""
        inputs = self.layer_inputs(input_ids, position_ids, segment_ids)
        run = self.run_layers(self.residual_input(input_ids), inputs)
        return self.train_heads(run, inputs, input_ids, labels, segment_ids)

    def train_heads(self, run, inputs, input_ids, labels, segment_ids=None):
        """What follows the last decoder layer in training: the final norm, the head's loss and
        the MTP modules over `run` (run_layers' results: the last layer's output and what the
        layers before reported) and the bundle `inputs`; the pipeline's last stage calls this."""
        loads, aux, index = run[R.LOADS], run[R.AUX], run[R.INDEX_STATS]
        hidden = self.last_hidden(self.sequence_out(run[R.HIDDEN]))
        lm_sum, lm_count = self.head_loss(hidden, shifted_targets(labels, 1, segment_ids))
        mtp_sum = ops.zeros((), ms.float32)
        mtp_count = ops.zeros((), ms.float32)
        h_prev = hidden
        for d in range(self.mtp_depth):
            layer = self.model.layers[self.num_layers + d]
            emb = self.model.embed_tokens(shift_left(input_ids, d + 1, 0))
            h_prev, counts, layer_aux, stats = layer.mtp_forward(emb, h_prev, inputs)
            if counts is not None:
                loads = loads + (counts,)
            aux = aux + layer_aux
            if stats is not None:
                index = index + stats_row(stats, self.num_layers + d, self.index_rows)
            d_sum, d_count = self.head_loss(layer.shared_head(h_prev), shifted_targets(labels, d + 2, segment_ids))
            mtp_sum = mtp_sum + d_sum / self.mtp_depth
            mtp_count = mtp_count + d_count / self.mtp_depth
        load = ops.stack(loads).astype(ms.float32) if loads else ops.zeros((0,), ms.float32)
        return {R.LM_SUM: lm_sum, R.LM_COUNT: lm_count, R.MTP_SUM: mtp_sum, R.MTP_COUNT: mtp_count,
                R.AUX: aux, R.INDEX_KL: index_loss(index, self.index_stage), R.LOAD: load, R.INDEX_STATS: index}

    def construct(self, input_ids, labels=None, position_ids=None, segment_ids=None):
        if labels is None:
            return self.head(self.backbone(input_ids, position_ids, segment_ids)[R.HIDDEN])
        out = self.forward_train(input_ids, labels, position_ids, segment_ids)
        loss = out[R.LM_SUM] / ops.maximum(out[R.LM_COUNT], 1.0) + out[R.AUX] + self.index_weight * out[R.INDEX_KL]
        if self.mtp_depth > 0:
            loss = loss + self.mtp_factor * out[R.MTP_SUM] / ops.maximum(out[R.MTP_COUNT], 1.0)
        return loss

    def generate(self, input_ids, max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id=None, pad_token_id=None, attention_mask=None,
                 seed: int = 0, use_cache: bool = True):
        """transformers-style generation (decoding caches for every family): ids [B, S] -> ms.Tensor int32
        [B, S + new], prompt then new tokens, padded with `pad_token_id`; see generation.generate_ids."""
        from ...generation import generate_ids
        out = generate_ids(self, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id,
                           pad_token_id, attention_mask, seed, use_cache)
        return ms.Tensor(out)

    # ---- transformers-style loading ---------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, seed: int = 0, **overrides) -> "CausalLM":
        """A model from a HuggingFace directory or a directory/checkpoint written by this stack,
        built by `cls.family_for(config)` (the family class of the checkpoint, or a refusal)."""
        from ...checkpoint.weights import load_weights, pretrained_config
        cfg = pretrained_config(path, **overrides)
        model = cls.family_for(cfg)(cfg)
        model.init_weights(seed)
        load_weights(model, path)
        return model

    def save_pretrained(self, directory: str, layout: str = "hf", dtype: str = "F32") -> str:
        from ...checkpoint.weights import save_pretrained
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
