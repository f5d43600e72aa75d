"""Per-device memory of a training layout: weights, gradients, optimizer states, activations.

Precision model (MindFormers' on Ascend, ours on CPU): parameters, gradients and AdamW's two
moments are fp32 (4 + 4 + 8 bytes per parameter); activations are kept in the compute dtype,
the attention probabilities, router scores and the logits/softmax of the head in fp32.
`optimizer_shard` shards the optimizer states (ZeRO-1) over each parameter's data-parallel
replicas: dp for dense parameters, dp*tp/ep for routed experts (expert data parallelism).

Activations are the tensors the backward pass reads, counted per layer (Korthikanti et al.'s
method applied to MLA and DeepSeekMoE; every term is listed in `layer_activation_bytes`).
Tensor parallelism splits the per-head and FFN terms; sequence parallelism also the
per-token hidden-size terms. With full recompute a layer keeps only its input, plus one
layer's activations live while it is recomputed. Under 1F1B the first stage holds `pp`
micro-batches in flight, the worst case. The device's fixed cost (framework runtime,
compiled graphs, workspace) is the preset's `runtime_overhead_gb`, and its
`activation_factor` scales the ideal count to what the executor really keeps: 1 where
memory is reused (Ascend), measured on CPU, where MindSpore's graph executor keeps every
unfused intermediate of the step (parallel/cpu_single.yaml says how it was measured).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from ..models.deepseek.config import DeepseekConfig
from ..parallel.layout import layout_table, mesh_sizes

GB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
EXPERT_ROLES = ("experts_gate_up", "experts_down")


@dataclass(frozen=True)
class StageParams:
    dense: int      # parameters this device holds that are replicated over dp
    experts: int    # routed-expert parameters (replicated over dp*tp/ep)
    lora: int = 0   # LoRA adapter parameters (the only trainable ones when LoRA is on)

    @property
    def total(self) -> int:
        return self.dense + self.experts


def params_per_device(model: DeepseekConfig, par, lora=None) -> List[StageParams]:
    """Parameters one device of each pipeline stage holds (its tp/ep shard of its stage's layers),
    and the LoRA adapters (rank r on a [out, in] weight: r*(in + out), split like the weight)."""
    sizes = mesh_sizes(par)
    dense, experts, adapters = [0] * par.pp, [0] * par.pp, [0] * par.pp
    targets = set(lora.targets) if lora is not None and lora.enabled else set()
    for p in layout_table(model, par).values():
        local = p.local_shape(sizes)
        n = 1
        for d in local:
            n *= d
        if p.role in EXPERT_ROLES:
            experts[p.stage] += n
        else:
            dense[p.stage] += n
        parts = p.name.split(".")
        if len(parts) >= 2 and parts[-2] in targets and parts[-1] == "weight" and len(local) == 2:
            adapters[p.stage] += lora.rank * (local[0] + local[1])
    return [StageParams(d, e, a) for d, e, a in zip(dense, experts, adapters)]


def layer_activation_bytes(c: DeepseekConfig, layer: int, tokens: int, batch: int, seq: int, tp: int,
                           sequence_parallel: bool, act_bytes: int) -> Dict[str, float]:
    """Bytes one layer keeps for its backward, per micro-batch of `tokens` = batch*seq."""
    h, nh = c.hidden_size, c.num_attention_heads / tp
    qk, v = c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim
    sp = tp if sequence_parallel else 1
    B, F = act_bytes, 4
    t = float(tokens)
    if c.is_v4:
        return v4_activation_bytes(c, layer, t, batch, seq, B)
    attn = B * t * 2 * h / sp                                   # norm input and output
    if c.q_lora_rank:
        attn += B * t * 2 * c.q_lora_rank                       # q_a output, its norm output
    attn += B * t * (2 * c.kv_lora_rank + c.qk_rope_head_dim)   # kv_a output, kv norm output
    attn += B * t * nh * (2 * qk + 2 * v)                       # q, k, v and the attention output
    attn += F * batch * nh * seq * seq                          # softmax probabilities
    out = {"attention": attn}
    if c.is_moe_layer(layer):
        inter, k = c.moe_intermediate_size, c.num_experts_per_tok
        moe = B * t * 2 * h / sp + F * t * 2 * c.n_routed_experts          # norm; router scores
        moe += B * t * 3 * inter * c.n_shared_experts / tp                   # shared gate/up/act
        moe += B * t * k * (2 * h + 3 * inter)                               # permuted in, gate/up, act, out
        out["moe"] = moe
    else:
        out["mlp"] = B * t * 2 * h / sp + B * t * 3 * c.intermediate_size / tp
    if layer >= c.num_hidden_layers:                                         # MTP: norms, concat, eh_proj
        out["mtp_inputs"] = B * t * 5 * h
    return out


def v4_activation_bytes(c: DeepseekConfig, layer: int, t: float, batch: int, seq: int, B: int) -> Dict[str, float]:
    """A V4 layer (attention replicated, as in transformers' TP plan): the n residual streams around
    both blocks, q/kv/compressed entries, the [S, S + T] probabilities, the MoE as in V3."""
    h, nh, d, n, F = c.hidden_size, c.num_attention_heads, c.head_dim, c.hc_mult, 4
    kind = c.layer_types[layer]
    rate = {"compressed_sparse_attention": c.compress_rate_csa, "heavily_compressed_attention": c.compress_rate_hca}
    entries = seq // rate[kind] if kind in rate else 0
    hc = F * t * 2 * (2 * n * h + (2 + n) * n)                                 # streams, flat norm, mixes (x2)
    attn = B * t * (2 * h + 2 * c.q_lora_rank + 3 * nh * d + 2 * d)           # norms, q latent, q, out, kv
    attn += F * batch * nh * seq * (seq + entries)                             # probabilities
    if entries:
        attn += B * t * 4 * d * (2 if kind == "compressed_sparse_attention" else 1)  # compressor kv/gate
    inter, k = c.moe_intermediate_size, c.num_experts_per_tok
    moe = B * t * 2 * h + F * t * 2 * c.n_routed_experts + B * t * 3 * inter * c.n_shared_experts
    moe += B * t * k * (2 * h + 3 * inter)
    return {"hyper_connections": hc, "attention": attn, "moe": moe}


def head_activation_bytes(c: DeepseekConfig, tokens: int, tp: int, vocab_parallel: bool, act_bytes: int) -> float:
    """Final norm, then the fp32 logits and softmax the loss backward reads (per head: main + MTP)."""
    v = c.vocab_size / (tp if vocab_parallel else 1)
    return (1 + c.mtp_depth) * (act_bytes * tokens * 2 * c.hidden_size + 4 * tokens * 2 * v)


@dataclass(frozen=True)
class MemoryEstimate:
    stage: int
    params: int
    weights: float
    grads: float
    optimizer: float
    activations: float
    runtime: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.runtime

    def as_dict(self) -> Dict[str, float]:
        return {"stage": self.stage, "params": self.params, "weights_gb": self.weights / GB,
                "grads_gb": self.grads / GB, "optimizer_gb": self.optimizer / GB,
                "activations_gb": self.activations / GB, "runtime_gb": self.runtime / GB,
                "total_gb": self.total / GB}


def _recompute_of(par, stage: int) -> bool:
    rc = par.recompute
    if isinstance(rc, list):
        return bool(rc[stage]) if len(rc) == par.pp else any(rc)
    return bool(rc)


def estimate_memory(model: DeepseekConfig, par, micro_batch: int, seq: int,
                    runtime_overhead_gb: float = 0.0, lora=None,
                    activation_factor: float = 1.0) -> List[MemoryEstimate]:
    """Per-device memory of every pipeline stage. With LoRA the frozen base is held in the
    compute dtype and only the adapters have fp32 weights, gradients and AdamW moments."""
    from ..parallel.layout import layer_stage
    act_bytes = DTYPE_BYTES.get(model.compute_dtype, 4)
    tokens = micro_batch * seq
    expert_dp = max(1, par.dp * par.tp // par.ep)
    stages = layer_stage(model, par)
    out = []
    for s, sp in enumerate(params_per_device(model, par, lora)):
        if sp.lora:
            weights = act_bytes * sp.total + 4.0 * sp.lora
            grads = 4.0 * sp.lora
            opt = 8.0 * sp.lora / (par.dp if par.optimizer_shard else 1)
        else:
            weights = grads = 4.0 * sp.total
            opt = 8.0 * (sp.dense / (par.dp if par.optimizer_shard else 1) +
                         sp.experts / (expert_dp if par.optimizer_shard else 1))
        layers = [i for i, st in enumerate(stages) if st == s]
        per_layer = [sum(layer_activation_bytes(model, i, tokens, micro_batch, seq, par.tp, par.sequence_parallel,
                                                act_bytes).values()) for i in layers]
        transient = 0.0
        if _recompute_of(par, s):  # keep layer inputs; one layer's activations live while recomputed
            kept = len(layers) * act_bytes * tokens * model.hidden_size / (par.tp if par.sequence_parallel else 1)
            transient = max(per_layer, default=0.0)
        else:
            kept = sum(per_layer)
        if s == par.pp - 1:
            kept += head_activation_bytes(model, tokens, par.tp, par.vocab_parallel, act_bytes)
        in_flight = par.pp - s   # 1F1B: stage s holds pp - s micro-batches (1 without pipelining)
        out.append(MemoryEstimate(s, sp.total + sp.lora, weights, grads, opt, (kept * in_flight + transient) * activation_factor,
                                  runtime_overhead_gb * GB))
    return out
