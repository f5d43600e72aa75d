"""What every DeepSeek config part shares (V2/V3, V3.2 and V4): the value sets fields are checked
against, the YaRN RoPE parameters and their readers. A leaf of the config modules: config.py
and config_v4.py both import it, neither imports the other at module level."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "deepseek_v4")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid", "sqrtsoftplus")
V4_ATTENTION_TYPES = ("sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention")
V4_MLP_TYPES = ("hash_moe", "moe")
V4_FIELDS = ("head_dim", "layer_types", "mlp_layer_types", "compress_rate_csa", "compress_rate_hca",
             "compress_rope_theta", "compress_rope_scaling", "sliding_window", "o_groups", "o_lora_rank",
             "hc_mult", "hc_sinkhorn_iters", "hc_eps", "swiglu_limit")
FUSED_OPS = ("rms_norm", "swiglu", "rope", "moe_permute", "grouped_matmul", "router_topk", "mla_attention",
             "lm_head_nll", "grad_clip")  # grad_clip: the optimizer step's norm and scaling


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
