"""What every DeepSeek config part shares (V2/V3, V3.2 and V4): the value sets fields are checked
against, the YaRN RoPE parameters and their readers, the MoE checks every family shares. A leaf of
the config modules: config.py, config_v32.py and config_v4.py import it, none imports another at
module level."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid", "sqrtsoftplus")
V4_ATTENTION_TYPES = ("sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention")
V4_MLP_TYPES = ("hash_moe", "moe")
FUSED_OPS = ("rms_norm", "swiglu", "rope", "moe_permute", "grouped_matmul", "router_topk", "mla_attention",
             "sparse_mla_attention", "lm_head_nll", "grad_clip",  # grad_clip: the optimizer step's norm and scaling
             "hc_sinkhorn",  # V4 mHC
             "index_topk")  # V3.2's Lightning Indexer: scoring and top-k


@dataclass(frozen=True)
class RopeScaling:
    """YaRN parameters (`type: yarn`); `default` means plain RoPE."""
    type: str = "yarn"
    factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0


def rope_scaling_from(rope: Dict[str, Any], source: str, fld: str) -> Optional[RopeScaling]:
    """RopeScaling from HF rope parameters without `rope_theta` (`rope_type` / `type` + YaRN keys);
    None for plain RoPE. Unknown keys are refused, naming the field."""
    from ...errors import ConfigError
    rope = dict(rope)
    rtype = rope.pop("rope_type", None) or rope.pop("type", "default")
    rope.pop("type", None)
    if rtype == "default":
        return None
    extra = set(rope) - {f.name for f in dataclasses.fields(RopeScaling)}
    if extra:
        raise ConfigError(source, fld, f"{fld} has unknown keys {sorted(extra)}")
    return RopeScaling(type=rtype, **rope)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True)
class TrainingFields:
    """The model section's training-side knobs (not part of HF's config.json, except the balance
    loss's two, which transformers' configs carry)."""
    aux_loss_alpha: float = 0.0          # sequence-wise balance loss coefficient; 0 disables it
    seq_aux: bool = True
    bias_update_rate: float = 0.001      # aux-loss-free balancing speed (gamma in the V3 paper)
    mtp_loss_factor: float = 0.3         # lambda in the V3 paper
    compute_dtype: str = "float32"       # bfloat16 on Ascend; CPU kernels need float32
    moe_block_size: int = 32             # rows per expert block in the blocked grouped matmul
    fused_ops: List[str] = field(default_factory=list)
    cell_reuse: bool = True              # repeated decoder layers compiled once (models/deepseek/reuse.py)
    attention_types: List[str] = field(default_factory=list)  # per V2/V3 layer (attention_types.py); []: MLA


TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingFields))


class Problems(list):
    """The (field, one-line message) pairs a config part finds; `need(cond, field, msg)` adds one."""

    def need(self, cond: bool, fld: str, msg: str) -> None:
        if not cond:
            self.append((fld, msg))


def moe_problems(c, p: str) -> List[Tuple[str, str]]:
    """The MoE part every family shares: groups, the reachable top-k, the router's scoring."""
    out = Problems()
    if c.n_routed_experts <= 0:
        return out
    need = out.need

    e, g = c.n_routed_experts, c.n_group
    need(g > 0 and e % g == 0, "n_group", f"{p}n_group={g} must divide {p}n_routed_experts={e}")
    need(0 < c.topk_group <= max(g, 1), "topk_group", f"{p}topk_group={c.topk_group} must be in [1, {p}n_group={g}]")
    need(c.moe_intermediate_size > 0, "moe_intermediate_size",
         f"{p}moe_intermediate_size={c.moe_intermediate_size} must be > 0")
    if g > 0 and e % g == 0 and 0 < c.topk_group <= g:
        reachable = c.topk_group * (e // g)
        need(0 < c.num_experts_per_tok <= reachable, "num_experts_per_tok",
             f"{p}num_experts_per_tok={c.num_experts_per_tok} must be in [1, {reachable}] (the experts"
             f" of {p}topk_group={c.topk_group} groups)")
    if c.topk_method == "noaux_tc" and g > 1:
        need(e // g >= 2, "n_group", f"{p}n_group={g} leaves {e // g} expert per group; noaux_tc scores groups by their top-2")
    need(c.topk_method != "noaux_tc" or c.scoring_func == ("sqrtsoftplus" if c.is_v4 else "sigmoid"),
         "scoring_func", f"{p}scoring_func={c.scoring_func!r} must be 'sigmoid' with {p}topk_method="
         "'noaux_tc' (the V3 router; V4's is 'sqrtsoftplus')")
    return out
