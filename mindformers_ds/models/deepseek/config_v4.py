"""DeepSeek-V4's part of DeepseekConfig: its fields, reading and writing V4 `config.json`, and checks.

V4 reuses the V3 fields where the meaning is the same (q_lora_rank, n_routed_experts, index_*,
...) and adds its own (head_dim, layer_types, compressors, mHC). `qk_rope_head_dim` holds
head_dim * partial_rotary_factor: the trailing channels of each head that get RoPE.
`rope_theta` is the "main" rope (sliding layers), `compress_rope_theta` + `compress_rope_scaling`
the "compress" rope (CSA/HCA layers and their compressors), whose YaRN cos/sin are not scaled
(transformers forces attention_factor 1.0, as the release does). The legacy keys of the release
(`compress_ratios`, `compress_rate_csa/hca`, `num_hash_layers`, `qk_rope_head_dim`) are folded in
the way transformers' DeepseekV4Config does.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Set, Tuple

from .config_common import V4_ATTENTION_TYPES, V4_MLP_TYPES, Problems, RopeScaling, rope_scaling_from

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class V4Fields:
    """Shared-KV MQA of head_dim with partial RoPE (qk_rope_head_dim trailing channels), per-layer
    attention / MoE types, the compressors' rates and rope, the output projection's groups, mHC."""
    head_dim: int = 0
    layer_types: List[str] = field(default_factory=list)
    mlp_layer_types: List[str] = field(default_factory=list)
    compress_rate_csa: int = 4
    compress_rate_hca: int = 128
    compress_rope_theta: float = 160000.0
    compress_rope_scaling: Optional[RopeScaling] = None
    sliding_window: int = 128
    o_groups: int = 8
    o_lora_rank: int = 1024
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    swiglu_limit: float = 0.0            # 0: no clipping of expert pre-activations

    def v4_problems(self, p: str) -> List[Tuple[str, str]]:
        c = self
        out = Problems()
        need = out.need

        n = c.num_hidden_layers
        need(c.head_dim > 0, "head_dim", f"{p}head_dim={c.head_dim} must be > 0 for deepseek_v4")
        need(0 < c.qk_rope_head_dim <= c.head_dim, "qk_rope_head_dim",
             f"{p}qk_rope_head_dim={c.qk_rope_head_dim} must be in [2, {p}head_dim={c.head_dim}]")
        need(c.q_lora_rank is not None, "q_lora_rank", f"{p}q_lora_rank must be set for deepseek_v4")
        need(len(c.layer_types) == n, "layer_types",
             f"{p}layer_types has {len(c.layer_types)} entries; {p}num_hidden_layers={n} needs one per layer")
        bad = sorted(set(c.layer_types) - set(V4_ATTENTION_TYPES))
        need(not bad, "layer_types", f"{p}layer_types has {bad}; allowed: {list(V4_ATTENTION_TYPES)}")
        need(len(c.mlp_layer_types) == n, "mlp_layer_types",
             f"{p}mlp_layer_types has {len(c.mlp_layer_types)} entries; {p}num_hidden_layers={n} needs one per layer")
        bad = sorted(set(c.mlp_layer_types) - set(V4_MLP_TYPES))
        need(not bad, "mlp_layer_types", f"{p}mlp_layer_types has {bad}; allowed: {list(V4_MLP_TYPES)}")
        need(c.n_routed_experts > 0, "n_routed_experts", f"{p}n_routed_experts must be > 0 (every V4 layer is MoE)")
        heads_dim = c.num_attention_heads * c.head_dim
        need(c.o_groups > 0 and heads_dim % c.o_groups == 0, "o_groups",
             f"{p}o_groups={c.o_groups} must divide num_attention_heads*head_dim={heads_dim}")
        need(c.o_lora_rank > 0, "o_lora_rank", f"{p}o_lora_rank={c.o_lora_rank} must be > 0")
        for name in ("compress_rate_csa", "compress_rate_hca", "sliding_window", "hc_mult", "hc_sinkhorn_iters"):
            need(getattr(c, name) > 0, name, f"{p}{name}={getattr(c, name)} must be > 0")
        if "compressed_sparse_attention" in c.layer_types:
            need(c.index_topk > 0 and c.index_n_heads > 0, "index_topk",
                 f"{p}index_topk={c.index_topk} and index_n_heads={c.index_n_heads} must be > 0 (CSA layers index)")
            need(c.index_head_dim >= c.qk_rope_head_dim, "index_head_dim",
                 f"{p}index_head_dim={c.index_head_dim} must be >= {p}qk_rope_head_dim={c.qk_rope_head_dim}")
        need(c.swiglu_limit >= 0, "swiglu_limit", f"{p}swiglu_limit={c.swiglu_limit} must be >= 0")
        return out


V4_FIELDS = tuple(f.name for f in dataclasses.fields(V4Fields))   # not read or written for V2/V3

_RATIO_TO_TYPE = {0: "sliding_attention", 4: "compressed_sparse_attention", 128: "heavily_compressed_attention"}
# read here, or derived, or with no effect on the math
_HANDLED = {"model_type", "compress_rates", "compress_ratios", "compress_rate_csa", "compress_rate_hca",
            "num_hash_layers", "qk_rope_head_dim", "partial_rotary_factor", "rope_parameters", "rope_scaling",
            "num_key_value_heads", "architectures", "transformers_version", "dtype", "torch_dtype", "use_cache",
            "quantization_config", "attention_dropout", "output_router_logits", "router_aux_loss_coef",
            "router_jitter_noise", "hidden_act", "mlp_bias", "attention_bias", "_name_or_path", "expert_dtype"}


def v4_from_hf(d: Dict[str, Any], names: Set[str], source: str) -> Dict[str, Any]:
    """DeepseekConfig keyword arguments from a V4 config.json (dict)."""
    from ...errors import ConfigError
    kw: Dict[str, Any] = {"model_type": "deepseek_v4", "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1,
                          "first_k_dense_replace": 0, "scoring_func": "sqrtsoftplus", "rope_interleave": True,
                          "swiglu_limit": 10.0, "intermediate_size": d.get("moe_intermediate_size", 2048)}
    unknown = []
    for k, v in d.items():
        if k in names and k not in ("rope_scaling", "compress_rope_scaling", "qk_rope_head_dim"):
            kw[k] = v
        elif k not in _HANDLED:
            unknown.append(k)
    if unknown:
        log.info("%s: ignoring HF fields with no effect on the model: %s", source, sorted(unknown))
    if d.get("num_key_value_heads", 1) != 1:
        raise ConfigError(source, "num_key_value_heads",
                          f"num_key_value_heads={d['num_key_value_heads']} must be 1 (V4 shares one KV head)")
    n = int(d.get("num_hidden_layers", 43))
    rates = dict(d.get("compress_rates") or {})
    for legacy, key in (("compress_rate_csa", "compressed_sparse_attention"),
                        ("compress_rate_hca", "heavily_compressed_attention")):
        if d.get(legacy) is not None:
            rates[key] = d[legacy]
    kw["compress_rate_csa"] = int(rates.get("compressed_sparse_attention", 4))
    kw["compress_rate_hca"] = int(rates.get("heavily_compressed_attention", 128))
    layer_types = d.get("layer_types")
    if layer_types is None and d.get("compress_ratios") is not None:
        try:
            layer_types = [_RATIO_TO_TYPE[int(r)] for r in d["compress_ratios"]]
        except KeyError as e:
            raise ConfigError(source, "compress_ratios", f"compress_ratios has {e.args[0]}; expected 0, 4 or 128") from None
    if layer_types is None:  # transformers' default: 2 x HCA, then CSA/HCA interleaved
        layer_types = ["heavily_compressed_attention"] * min(n, 2) + [
            "compressed_sparse_attention" if i % 2 else "heavily_compressed_attention" for i in range(max(n - 2, 0))]
    kw["layer_types"] = list(layer_types)[:n]
    mlp = d.get("mlp_layer_types")
    if mlp is None:
        n_hash = int(d.get("num_hash_layers", 3))
        mlp = ["hash_moe"] * min(n, n_hash) + ["moe"] * max(0, n - n_hash)
    kw["mlp_layer_types"] = list(mlp)[:n]
    head_dim = int(d.get("head_dim", 512))
    prf = d.get("partial_rotary_factor")
    if prf is None:
        prf = d["qk_rope_head_dim"] / head_dim if d.get("qk_rope_head_dim") is not None else 64 / 512
    kw["qk_rope_head_dim"] = int(head_dim * prf)
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if isinstance(rope.get("main"), dict):
        kw["rope_theta"] = float(rope["main"].get("rope_theta", d.get("rope_theta", 10000.0)))
        comp = dict(rope.get("compress") or {})
    else:
        comp = {k: v for k, v in rope.items() if k not in ("main", "compress")}
    kw["compress_rope_theta"] = float(comp.pop("rope_theta", d.get("compress_rope_theta", 160000.0)))
    for k in ("partial_rotary_factor", "attention_factor", "truncate"):  # derived, or fixed by V4
        comp.pop(k, None)
    scaling = rope_scaling_from(comp, source, "rope_parameters.compress")
    if scaling is not None:
        kw["compress_rope_scaling"] = scaling
    if isinstance(kw.get("eos_token_id"), list):
        kw["eos_token_id"] = kw["eos_token_id"][0]
    return kw


def v4_to_hf(c) -> Dict[str, Any]:
    """A config.json transformers 5.23's DeepseekV4Config reads back to the same model."""
    keys = ("vocab_size", "hidden_size", "moe_intermediate_size", "num_hidden_layers", "num_attention_heads",
            "head_dim", "q_lora_rank", "num_experts_per_tok", "n_routed_experts", "n_shared_experts",
            "scoring_func", "norm_topk_prob", "routed_scaling_factor", "max_position_embeddings", "rope_theta",
            "layer_types", "compress_rope_theta", "hc_mult", "hc_sinkhorn_iters", "hc_eps", "mlp_layer_types",
            "swiglu_limit", "sliding_window", "o_groups", "o_lora_rank", "index_n_heads", "index_head_dim",
            "index_topk", "num_nextn_predict_layers", "initializer_range", "rms_norm_eps", "bos_token_id",
            "eos_token_id", "pad_token_id", "tie_word_embeddings")
    d: Dict[str, Any] = {"architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
                         "num_key_value_heads": 1}
    for k in keys:
        v = getattr(c, k)
        d[k] = list(v) if isinstance(v, list) else v
    d["compress_rates"] = {"compressed_sparse_attention": c.compress_rate_csa,
                           "heavily_compressed_attention": c.compress_rate_hca}
    prf = c.qk_rope_head_dim / c.head_dim
    d["partial_rotary_factor"] = prf
    compress: Dict[str, Any] = {"rope_type": "default", "rope_theta": c.compress_rope_theta, "partial_rotary_factor": prf}
    rs = c.compress_rope_scaling
    if rs is not None and rs.type != "default":
        compress = {"rope_type": rs.type, **{k: v for k, v in dataclasses.asdict(rs).items() if k != "type"},
                    "rope_theta": c.compress_rope_theta, "partial_rotary_factor": prf, "attention_factor": 1.0}
    d["rope_parameters"] = {"main": {"rope_type": "default", "rope_theta": c.rope_theta, "partial_rotary_factor": prf},
                            "compress": compress}
    d["aux_loss_alpha"] = c.aux_loss_alpha
    return d
