"""Model FLOPs and parameter counts from the config alone (no model is built).

Conventions (those of PaLM / Megatron / torchtitan, so MFU figures compare):
* a multiply-add is 2 FLOPs; only matrix products count (norms, softmax, RoPE, routing
  top-k and the embedding lookup are ignored);
* attention's quadratic term counts every query against all `seq` keys, as a dense kernel
  computes it (causal masking is not discounted);
* MoE layers count the router, the shared experts and `num_experts_per_tok` routed experts
  per token: the FLOPs actually done, not those of all experts;
* a training step costs 3x the forward (backward = 2x forward); recomputation is not model
  FLOPs and is not counted (MFU, not HFU).
"""
from __future__ import annotations

from typing import Dict

from ..models.deepseek.config import DeepseekConfig
from ..models.deepseek.shapes import parameter_specs


def v4_attention_flops(c: DeepseekConfig, seq: int, layer: int) -> Dict[str, float]:
    """Forward FLOPs per token of one V4 layer's attention and hyper-connections. Queries score all
    `seq` tokens plus the layer's compressed entries (seq // rate), as the dense kernel does."""
    h, nh, d, q, n = c.hidden_size, c.num_attention_heads, c.head_dim, c.q_lora_rank, c.hc_mult
    proj = 2 * h * q + 2 * q * nh * d + 2 * h * d + 2 * nh * d * c.o_lora_rank + 2 * c.o_groups * c.o_lora_rank * h
    kind = c.layer_types[layer]
    entries = 0
    parts: Dict[str, float] = {}
    if kind == "compressed_sparse_attention":
        entries = seq // c.compress_rate_csa
        proj += 2 * 2 * h * 2 * d                                      # kv_proj and gate_proj, two series
        hi, di = c.index_n_heads, c.index_head_dim
        parts["indexer"] = float(2 * 2 * h * 2 * di + 2 * q * hi * di + 2 * h * hi + 2 * hi * di * entries
                                 + 2 * hi * entries)
    elif kind == "heavily_compressed_attention":
        entries = seq // c.compress_rate_hca
        proj += 2 * 2 * h * d
    parts["attn_proj"] = float(proj)
    parts["attn_scores"] = float(2 * 2 * nh * d * (seq + entries))   # q.k and p @ kv
    parts["hyper_connections"] = float(2 * (2 * n * h * (2 + n) * n + 2 * n * n * h))
    return parts


def attention_flops(c: DeepseekConfig, seq: int, layer: int = 0) -> Dict[str, float]:
    """Forward FLOPs per token of one attention layer: projections and the quadratic term."""
    if c.is_v4:
        return v4_attention_flops(c, seq, layer)
    h, nh = c.hidden_size, c.num_attention_heads
    qk, v = c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim
    if c.q_lora_rank is None:
        q = 2 * h * nh * qk
    else:
        q = 2 * h * c.q_lora_rank + 2 * c.q_lora_rank * nh * qk
    kv = 2 * h * (c.kv_lora_rank + c.qk_rope_head_dim) + 2 * c.kv_lora_rank * nh * (c.qk_nope_head_dim + v)
    out = 2 * nh * v * h
    scores = 2 * nh * qk * seq + 2 * nh * v * seq  # QK^T and the weighted sum of V
    parts = {"attn_proj": float(q + kv + out), "attn_scores": float(scores)}
    if c.index_topk > 0:  # V3.2's Lightning Indexer: wq_b, wk, weights_proj, q.k and the head-weighted sum
        hi, di = c.index_n_heads, c.index_head_dim
        parts["indexer"] = float(2 * c.q_lora_rank * hi * di + 2 * h * di + 2 * h * hi + 2 * hi * di * seq
                                 + 2 * hi * seq)
    return parts


def mlp_flops(c: DeepseekConfig, layer: int) -> Dict[str, float]:
    """Forward FLOPs per token of layer `layer`'s feed-forward block (dense or MoE)."""
    h = c.hidden_size
    if not c.is_moe_layer(layer):
        return {"dense_mlp": float(2 * 3 * h * c.intermediate_size)}
    inter = c.moe_intermediate_size
    return {"router": float(2 * h * c.n_routed_experts),
            "shared_experts": float(2 * 3 * h * inter * c.n_shared_experts),
            "routed_experts": float(2 * 3 * h * inter * c.num_experts_per_tok)}


def forward_flops_per_token(c: DeepseekConfig, seq: int, include_mtp: bool = True) -> Dict[str, float]:
    """Forward FLOPs per token by component (summed over layers), plus "total"."""
    parts: Dict[str, float] = {}

    def add(d: Dict[str, float]) -> None:
        for k, x in d.items():
            parts[k] = parts.get(k, 0.0) + x

    for i in range(c.num_hidden_layers):
        add(attention_flops(c, seq, i))
        add(mlp_flops(c, i))
    head = float(2 * c.hidden_size * c.vocab_size)
    parts["lm_head"] = head
    if c.is_v4:
        parts["hyper_connections"] += float(2 * c.hc_mult * c.hidden_size * c.hc_mult)  # the hyper head
    if include_mtp and not c.is_v4:
        for d in range(c.mtp_depth):
            i = c.num_hidden_layers + d
            mtp = {"mtp_proj": float(2 * 2 * c.hidden_size * c.hidden_size), "mtp_head": head}
            for k, x in {**attention_flops(c, seq), **mlp_flops(c, i)}.items():
                mtp["mtp_" + k] = x
            add(mtp)
    parts["total"] = sum(parts.values())
    return parts


def train_flops_per_token(c: DeepseekConfig, seq: int) -> float:
    """3x the forward, except the V3.2 / V4 indexers, which have no backward (no gradient reaches them)."""
    fwd = forward_flops_per_token(c, seq)
    indexer = fwd.get("indexer", 0.0) + fwd.get("mtp_indexer", 0.0)
    return 3.0 * (fwd["total"] - indexer) + indexer


def parameter_counts(c: DeepseekConfig, include_mtp: bool = False) -> Dict[str, int]:
    """Total parameters and the parameters one token activates: all but the routed experts it
    does not use and the input embedding table (a lookup reads one row). DeepSeek quotes both
    without the MTP module; this reading reproduces V3's 671B / 37B, V2's 236B / 21B and
    V2-Lite's 15.7B / 2.4B."""
    total = active = 0
    for name, shape, role in parameter_specs(c):
        parts = name.split(".")
        if not include_mtp and parts[1] == "layers" and int(parts[2]) >= c.num_hidden_layers:
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
        if role == "embed":
            continue
        if role in ("experts_gate_up", "experts_down"):
            n = n // c.n_routed_experts * c.num_experts_per_tok
        active += n
    return {"total": total, "active": active}
