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


def attention_flops(c: DeepseekConfig, seq: int) -> Dict[str, float]:
    """Forward FLOPs per token of one MLA layer: projections and the quadratic term."""
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
        add(attention_flops(c, seq))
        add(mlp_flops(c, i))
    head = float(2 * c.hidden_size * c.vocab_size)
    parts["lm_head"] = head
    if include_mtp:
        for d in range(c.num_nextn_predict_layers):
            i = c.num_hidden_layers + d
            mtp = {"mtp_proj": float(2 * 2 * c.hidden_size * c.hidden_size), "mtp_head": head}
            for k, x in {**attention_flops(c, seq), **mlp_flops(c, i)}.items():
                mtp["mtp_" + k] = x
            add(mtp)
    parts["total"] = sum(parts.values())
    return parts


def train_flops_per_token(c: DeepseekConfig, seq: int) -> float:
    """3x the forward, except V3.2's indexer, which has no backward (it runs without gradient)."""
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
