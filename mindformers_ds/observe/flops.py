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
from ..models.deepseek.facts.base import add_into
from ..models.deepseek.facts.model import layer_facts, model_facts
from ..models.deepseek.shapes import parameter_specs


def layer_flops(c: DeepseekConfig, seq: int, layer: int) -> Dict[str, float]:
    """Forward FLOPs per token of decoder layer `layer` by component, as its blocks state them."""
    return layer_facts(c, layer).flops(seq)


def forward_flops_per_token(c: DeepseekConfig, seq: int, include_mtp: bool = True) -> Dict[str, float]:
    """Forward FLOPs per token by component (summed over the model's blocks), plus "total"."""
    parts: Dict[str, float] = {}
    for block in model_facts(c, include_mtp):
        add_into(parts, block.flops(seq))
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
