"""DeepSeek model hyper-parameters, with HuggingFace field names.

`DeepseekConfig` is one frozen dataclass made of parts: the common fields (here: V2, V2-Lite and
V3/R1 are only these and differ in values: router scoring, top-k method, q LoRA on/off, MTP
depth), V3.2's indexer part (config_v32.py), V4's part (config_v4.py) and the training knobs
(config_common.py). The YAML keys and attribute names stay flat. `from_hf_dict` reads a
`config.json` in either the transformers 4.x form (`rope_theta` + `rope_scaling`) or the
5.x form (`rope_parameters`); `to_hf_dict` writes one transformers 5.23 loads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .config_common import (FUSED_OPS, MODEL_TYPES, SCORING_FUNCS, TOPK_METHODS, TRAINING_FIELDS,  # noqa: F401
                            V4_ATTENTION_TYPES, V4_MLP_TYPES, Problems, RopeScaling, TrainingFields, moe_problems,
                            rope_scaling_from, yarn_mscale)
from .config_v32 import V32Fields
from .config_v4 import V4_FIELDS, V4Fields, v4_from_hf, v4_to_hf

log = logging.getLogger(__name__)

# Keys HF configs carry that say nothing about the math (or that we derive ourselves).
_HF_BOOKKEEPING = {
    "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "pretraining_tp", "quantization_config", "ep_size", "attention_dropout", "output_router_logits",
    "head_dim", "qk_head_dim", "_name_or_path", "num_key_value_heads", "model_type",
    "mlp_layer_types", "layer_types",
    "rope_scaling", "rope_parameters", "rope_theta", "mlp_bias", "num_mtp_layers",
}


@dataclass(frozen=True)
class CommonFields:
    """What every family reads (V2/V3/R1 are only this part): HF's field names and defaults (V3's)."""
    model_type: str = "deepseek_v3"
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    q_lora_rank: Optional[int] = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    first_k_dense_replace: int = 3
    moe_layer_freq: int = 1
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 163840
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    rope_interleave: bool = True
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    num_nextn_predict_layers: int = 0
    bos_token_id: Optional[int] = 0
    eos_token_id: Optional[int] = 1
    pad_token_id: Optional[int] = None
    initializer_range: float = 0.02


@dataclass(frozen=True)
class DeepseekConfig(TrainingFields, V4Fields, V32Fields, CommonFields):
    """The model config: the common part, V3.2's (config_v32.py) and V4's (config_v4.py) parts, and
    the training knobs (config_common.py), in that field order (dataclasses collect base fields in
    reverse MRO). Each part validates its own fields; `problems` asks the parts the model type uses."""

    # ---- derived -------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def is_v4(self) -> bool:
        return self.model_type == "deepseek_v4"

    @property
    def mtp_depth(self) -> int:
        """MTP depths the model builds: V4's release ships one, which the model (as transformers) does not."""
        return 0 if self.is_v4 else self.num_nextn_predict_layers

    def is_moe_layer(self, layer_idx: int) -> bool:
        if self.is_v4:  # every V4 layer is MoE (hash-routed or learned); MTP depths are learned
            return True
        return (self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace
                and layer_idx % self.moe_layer_freq == 0)

    @property
    def uses_correction_bias(self) -> bool:
        return self.topk_method == "noaux_tc"

    def is_hash_layer(self, layer_idx: int) -> bool:
        return self.is_v4 and layer_idx < len(self.mlp_layer_types) and self.mlp_layer_types[layer_idx] == "hash_moe"

    def layer_has_correction_bias(self, layer_idx: int) -> bool:
        return self.uses_correction_bias and not self.is_hash_layer(layer_idx)

    def softmax_scale(self) -> float:
        """1/sqrt(d_qk), times mscale(factor, mscale_all_dim)^2 under YaRN (the V2/V3 correction)."""
        scale = self.qk_head_dim ** -0.5
        rs = self.rope_scaling
        if rs is not None and rs.type == "yarn" and rs.mscale_all_dim:
            m = yarn_mscale(rs.factor, rs.mscale_all_dim)
            scale = scale * m * m
        return scale

    # ---- validation ----------------------------------------------------------------
    def problems(self) -> List[Tuple[str, str]]:
        """(field, message) for every inconsistent value; empty when the config is usable."""
        out = Problems()
        p = "{p}"  # stands for the dotted prefix of the section (e.g. "model."), filled in by the caller
        need = out.need

        need(self.model_type in MODEL_TYPES, "model_type",
             f"{p}model_type={self.model_type!r} must be one of {list(MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
                     "intermediate_size", "moe_layer_freq", "moe_block_size"):
            need(getattr(self, name) > 0, name, f"{p}{name}={getattr(self, name)} must be > 0")
        need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim",
             f"{p}qk_rope_head_dim={self.qk_rope_head_dim} must be even (RoPE rotates pairs)")
        need(self.q_lora_rank is None or self.q_lora_rank > 0, "q_lora_rank",
             f"{p}q_lora_rank={self.q_lora_rank} must be > 0 or null (V2-Lite has no q LoRA)")
        need(self.topk_method in TOPK_METHODS, "topk_method",
             f"{p}topk_method={self.topk_method!r} must be one of {list(TOPK_METHODS)}")
        need(self.scoring_func in SCORING_FUNCS, "scoring_func",
             f"{p}scoring_func={self.scoring_func!r} must be one of {list(SCORING_FUNCS)}")
        need(self.hidden_act == "silu", "hidden_act", f"{p}hidden_act={self.hidden_act!r} must be 'silu'")
        need(self.first_k_dense_replace >= 0, "first_k_dense_replace",
             f"{p}first_k_dense_replace={self.first_k_dense_replace} must be >= 0")
        need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers",
             f"{p}num_nextn_predict_layers={self.num_nextn_predict_layers} must be >= 0")
        need(self.compute_dtype in ("float32", "float16", "bfloat16"), "compute_dtype",
             f"{p}compute_dtype={self.compute_dtype!r} must be float32, float16 or bfloat16")
        bad_ops = [o for o in self.fused_ops if o not in FUSED_OPS]
        need(not bad_ops, "fused_ops", f"{p}fused_ops={bad_ops} are unknown; known: {list(FUSED_OPS)}")
        out += moe_problems(self, p)
        from .attention_types import attention_problems
        out += attention_problems(self, p)
        if self.is_v4:
            out += self.v4_problems(p)
        elif self.model_type == "deepseek_v32":
            out += self.v32_problems(p)
        else:
            need(self.index_topk == 0, "index_topk",
                 f"{p}index_topk={self.index_topk} needs {p}model_type='deepseek_v32'")
        rs = self.rope_scaling
        if rs is not None:
            need(rs.type in ("yarn", "default"), "rope_scaling.type",
                 f"{p}rope_scaling.type={rs.type!r} must be 'yarn' or 'default'")
            need(rs.factor >= 1.0, "rope_scaling.factor", f"{p}rope_scaling.factor={rs.factor} must be >= 1")
        return out

    # ---- HuggingFace config.json ----------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: Dict[str, Any], source: str = "config.json") -> "DeepseekConfig":
        from ...errors import ConfigError  # local import: config.py imports this module
        mt = d.get("model_type", "deepseek_v3")
        if mt not in MODEL_TYPES:
            raise ConfigError(source, "model_type", f"model_type={mt!r} is not a DeepSeek V2/V3/V3.2/V4 model "
                              f"(expected one of {list(MODEL_TYPES)})")
        if mt == "deepseek_v4":
            return cls(**v4_from_hf(d, {f.name for f in dataclasses.fields(cls)}, source))
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: Dict[str, Any] = {}
        unknown = []
        for k, v in d.items():
            if k in names and k != "rope_scaling" and k not in V4_FIELDS:
                kwargs[k] = v
            elif k not in _HF_BOOKKEEPING:
                unknown.append(k)
        if unknown:
            log.info("%s: ignoring HF fields with no effect on the model: %s", source, sorted(unknown))
        if d.get("num_key_value_heads") not in (None, d.get("num_attention_heads")):
            # MLA has no KV grouping; a different value means a config we would silently misread.
            raise ConfigError(source, "num_key_value_heads",
                              f"num_key_value_heads={d['num_key_value_heads']} must equal num_attention_heads="
                              f"{d.get('num_attention_heads')} (MLA)")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or None
        theta = d.get("rope_theta")
        if isinstance(rope, dict):
            rope = dict(rope)
            theta = rope.pop("rope_theta", theta)
            scaling = rope_scaling_from(rope, source, "rope_scaling")
            if scaling is not None:
                kwargs["rope_scaling"] = scaling
        if theta is not None:
            kwargs["rope_theta"] = float(theta)
        _check_layer_types(d, kwargs, source)
        if kwargs.get("n_group") is None:
            kwargs["n_group"] = 1
        if kwargs.get("topk_group") is None:
            kwargs["topk_group"] = 1
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        if "scoring_func" not in d:
            kwargs["scoring_func"] = "softmax" if mt == "deepseek_v2" else "sigmoid"
        if "topk_method" not in d:
            kwargs["topk_method"] = "greedy" if mt == "deepseek_v2" else "noaux_tc"
        if mt == "deepseek_v2":
            kwargs.setdefault("norm_topk_prob", False)
            kwargs.setdefault("rope_interleave", True)  # V2 rotates interleaved pairs (complex form)
            kwargs.setdefault("routed_scaling_factor", 1.0)
            kwargs.setdefault("first_k_dense_replace", 0)
        return cls(**kwargs)

    @classmethod
    def from_hf_file(cls, path: str) -> "DeepseekConfig":
        from ...errors import ConfigError
        try:
            with open(path, "r", encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ConfigError(path, "", "file not found") from None
        except json.JSONDecodeError as e:
            raise ConfigError(path, "", f"not valid JSON (line {e.lineno}: {e.msg})") from None
        return cls.from_hf_dict(d, source=path)

    def to_hf_dict(self) -> Dict[str, Any]:
        if self.is_v4:
            return v4_to_hf(self)
        arch = {"deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v32": "DeepseekV32ForCausalLM"}.get(
            self.model_type, "DeepseekV3ForCausalLM")
        hf_only = set(TRAINING_FIELDS) | {"rope_scaling", "rope_theta"}  # the balance-loss two are written below
        d: Dict[str, Any] = {"architectures": [arch]}
        for f in dataclasses.fields(self):
            if f.name not in hf_only and f.name not in V4_FIELDS:
                d[f.name] = getattr(self, f.name)
        if self.attention_types:  # not an HF field: written only when a layer is not MLA
            d["attention_types"] = list(self.attention_types)
        d["aux_loss_alpha"] = self.aux_loss_alpha
        d["seq_aux"] = self.seq_aux
        d["num_key_value_heads"] = self.num_attention_heads
        rope: Dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None and self.rope_scaling.type != "default":
            rope = {"rope_type": self.rope_scaling.type, "rope_theta": self.rope_theta,
                    **{k: v for k, v in dataclasses.asdict(self.rope_scaling).items() if k != "type"}}
        d["rope_parameters"] = rope
        if self.model_type != "deepseek_v32":
            for k in ("index_topk", "index_n_heads", "index_head_dim"):
                d.pop(k)
        return d


def _check_layer_types(d: Dict[str, Any], kwargs: Dict[str, Any], source: str) -> None:
    """V3.2 configs list per-layer types; they must be what first_k_dense_replace implies."""
    from ...errors import ConfigError
    n = d.get("num_hidden_layers", 0)
    mlp = d.get("mlp_layer_types")
    if mlp is not None:
        k = d.get("first_k_dense_replace", 0)
        want = ["dense" if i < k else "sparse" for i in range(n)]
        if list(mlp) != want:
            raise ConfigError(source, "mlp_layer_types", f"mlp_layer_types={mlp} must be {k} 'dense' then 'sparse' "
                              f"(first_k_dense_replace={k}); other patterns are not supported")
    attn = d.get("layer_types")
    if attn is not None and d.get("model_type") == "deepseek_v32" and set(attn) != {"indexed_attention"}:
        raise ConfigError(source, "layer_types", f"layer_types={sorted(set(attn))} must all be 'indexed_attention'")
