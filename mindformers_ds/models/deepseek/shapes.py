"""Every parameter of a DeepSeek model as (name, shape, role), computed from the config alone.

The converter checks checkpoints against it, the parallel layout table splits by role, and
the planner counts parameters with it, all without building the model. A test keeps it
equal to the model's own parameters.
Roles: embed, head, norm, linear_col (output dim splittable), linear_row (input dim),
router, router_bias, experts_gate_up, experts_down, mla_latent (kv_a / q_a: replicated),
indexer (V3.2's Lightning Indexer / V4's CSA indexer: replicated, frozen). V4 adds hc
(hyper-connection weights), compressor (CSA/HCA KV compressors) and hash_table (the frozen
token -> experts table of hash-routed layers); its attention is replicated as in transformers'
TP plan (role mla_latent).
"""
from __future__ import annotations

from typing import Iterator, Tuple

from .config import DeepseekConfig

Spec = Tuple[str, Tuple[int, ...], str]


def layer_params(c: DeepseekConfig, i: int) -> Iterator[Spec]:
    p = f"model.layers.{i}."
    h, nh = c.hidden_size, c.num_attention_heads
    qk = c.qk_nope_head_dim + c.qk_rope_head_dim
    yield p + "input_layernorm.weight", (h,), "norm"
    yield p + "post_attention_layernorm.weight", (h,), "norm"
    a = p + "self_attn."
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
    if c.index_topk > 0:  # V3.2 Lightning Indexer: small, frozen, replicated
        ix = a + "indexer."
        yield ix + "wq_b.weight", (c.index_n_heads * c.index_head_dim, c.q_lora_rank), "indexer"
        yield ix + "wk.weight", (c.index_head_dim, h), "indexer"
        yield ix + "k_norm.weight", (c.index_head_dim,), "norm"
        yield ix + "k_norm.bias", (c.index_head_dim,), "norm"
        yield ix + "weights_proj.weight", (c.index_n_heads, h), "indexer"
    if c.attention_bias:
        if c.q_lora_rank is not None:
            yield a + "q_a_proj.bias", (c.q_lora_rank,), "mla_latent"
        yield a + "kv_a_proj_with_mqa.bias", (c.kv_lora_rank + c.qk_rope_head_dim,), "mla_latent"
        yield a + "o_proj.bias", (h,), "norm"
    m = p + "mlp."
    if c.is_moe_layer(i):
        e, inter = c.n_routed_experts, c.moe_intermediate_size
        yield m + "gate.weight", (e, h), "router"
        if c.uses_correction_bias:
            yield m + "gate.e_score_correction_bias", (e,), "router_bias"
        yield m + "experts.gate_up_proj", (e, 2 * inter, h), "experts_gate_up"
        yield m + "experts.down_proj", (e, h, inter), "experts_down"
        if c.n_shared_experts > 0:
            s = inter * c.n_shared_experts
            yield m + "shared_experts.gate_proj.weight", (s, h), "linear_col"
            yield m + "shared_experts.up_proj.weight", (s, h), "linear_col"
            yield m + "shared_experts.down_proj.weight", (h, s), "linear_row"
    else:
        yield m + "gate_proj.weight", (c.intermediate_size, h), "linear_col"
        yield m + "up_proj.weight", (c.intermediate_size, h), "linear_col"
        yield m + "down_proj.weight", (h, c.intermediate_size), "linear_row"
    if i >= c.num_hidden_layers:  # an MTP module
        yield p + "enorm.weight", (h,), "norm"
        yield p + "hnorm.weight", (h,), "norm"
        yield p + "eh_proj.weight", (h, 2 * h), "mla_latent"
        yield p + "shared_head.norm.weight", (h,), "norm"


def v4_layer_params(c: DeepseekConfig, i: int) -> Iterator[Spec]:
    p = f"model.layers.{i}."
    h, nh, d, q, n = c.hidden_size, c.num_attention_heads, c.head_dim, c.q_lora_rank, c.hc_mult
    yield p + "input_layernorm.weight", (h,), "norm"
    yield p + "post_attention_layernorm.weight", (h,), "norm"
    for hc in ("attn_hc.", "ffn_hc."):
        yield p + hc + "fn", ((2 + n) * n, n * h), "hc"
        yield p + hc + "base", ((2 + n) * n,), "hc"
        yield p + hc + "scale", (3,), "hc"
    a = p + "self_attn."
    yield a + "sinks", (nh,), "norm"
    yield a + "q_a_proj.weight", (q, h), "mla_latent"
    yield a + "q_a_norm.weight", (q,), "norm"
    yield a + "q_b_proj.weight", (nh * d, q), "mla_latent"
    yield a + "kv_proj.weight", (d, h), "mla_latent"
    yield a + "kv_norm.weight", (d,), "norm"
    yield a + "o_a_proj.weight", (c.o_groups * c.o_lora_rank, nh * d // c.o_groups), "mla_latent"
    yield a + "o_b_proj.weight", (h, c.o_groups * c.o_lora_rank), "mla_latent"
    kind = c.layer_types[i] if i < len(c.layer_types) else "sliding_attention"
    if kind != "sliding_attention":
        csa = kind == "compressed_sparse_attention"
        width, rate = (2 * d, c.compress_rate_csa) if csa else (d, c.compress_rate_hca)
        cp = a + "compressor."
        yield cp + "kv_proj.weight", (width, h), "compressor"
        yield cp + "gate_proj.weight", (width, h), "compressor"
        yield cp + "position_bias", (rate, width), "compressor"
        yield cp + "kv_norm.weight", (d,), "norm"
        if csa:
            ix, di, hi = cp + "indexer.", c.index_head_dim, c.index_n_heads
            yield ix + "kv_proj.weight", (2 * di, h), "indexer"
            yield ix + "gate_proj.weight", (2 * di, h), "indexer"
            yield ix + "position_bias", (rate, 2 * di), "indexer"
            yield ix + "kv_norm.weight", (di,), "norm"
            yield ix + "q_b_proj.weight", (hi * di, q), "indexer"
            yield ix + "scorer.weights_proj.weight", (hi, h), "indexer"
    m = p + "mlp."
    e, inter = c.n_routed_experts, c.moe_intermediate_size
    yield m + "gate.weight", (e, h), "router"
    if c.is_hash_layer(i):
        yield m + "gate.tid2eid", (c.vocab_size, c.num_experts_per_tok), "hash_table"
    else:
        yield m + "gate.e_score_correction_bias", (e,), "router_bias"
    yield m + "experts.gate_up_proj", (e, 2 * inter, h), "experts_gate_up"
    yield m + "experts.down_proj", (e, h, inter), "experts_down"
    s = inter * c.n_shared_experts
    yield m + "shared_experts.gate_proj.weight", (s, h), "linear_col"
    yield m + "shared_experts.up_proj.weight", (s, h), "linear_col"
    yield m + "shared_experts.down_proj.weight", (h, s), "linear_row"


def parameter_specs(c: DeepseekConfig) -> Iterator[Spec]:
    yield "model.embed_tokens.weight", (c.vocab_size, c.hidden_size), "embed"
    if c.is_v4:  # no MTP module in the model (the converter keeps the release's `mtp.*` tensors)
        for i in range(c.num_hidden_layers):
            yield from v4_layer_params(c, i)
        n = c.hc_mult
        yield "model.hc_head.hc_fn", (n, n * c.hidden_size), "hc"
        yield "model.hc_head.hc_base", (n,), "hc"
        yield "model.hc_head.hc_scale", (1,), "hc"
    else:
        for i in range(c.num_hidden_layers + c.mtp_depth):
            yield from layer_params(c, i)
    yield "model.norm.weight", (c.hidden_size,), "norm"
    if not c.tie_word_embeddings:
        yield "lm_head.weight", (c.vocab_size, c.hidden_size), "head"


def parameter_count(c: DeepseekConfig, include_mtp: bool = True) -> int:
    total = 0
    for name, shape, _ in parameter_specs(c):
        if not include_mtp and name.startswith("model.layers.") and int(name.split(".")[2]) >= c.num_hidden_layers:
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
