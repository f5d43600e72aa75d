"""Per-device memory of a training layout: weights, gradients, optimizer states, activations.

Precision model (MindFormers' on Ascend, ours on CPU): parameters, gradients and AdamW's two
moments are fp32 (4 + 4 + 8 bytes per parameter); activations are kept in the compute dtype,
the attention probabilities, router scores and the logits/softmax of the head in fp32.
`optimizer_shard` shards the optimizer states (ZeRO-1) over each parameter's data-parallel
replicas: dp for dense parameters, dp*tp/ep for routed experts (expert data parallelism).

Activations are the tensors the backward pass reads, counted per layer (Korthikanti et al.'s
method applied to MLA and DeepSeekMoE; each block lists its terms in models/deepseek/facts/).
Tensor parallelism splits the per-head and FFN terms; sequence parallelism also the
per-token hidden-size terms. With full recompute a layer keeps only its input, plus one
layer's activations live while it is recomputed. Under 1F1B the first stage holds `pp`
micro-batches in flight, the worst case. The device's fixed cost (framework runtime,
compiled graphs, workspace) is the preset's `runtime_overhead_gb`, plus `layer_graph_gb` per
distinct layer graph the stage compiles (layers with equal reuse keys share one), and its
`activation_factor` scales the ideal count to what the executor really keeps: 1 where
memory is reused (Ascend), measured on CPU, where MindSpore's graph executor keeps every
unfused intermediate of the step (parallel/cpu_single.yaml says how it was measured).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from ..models.deepseek.config import DeepseekConfig
from ..models.deepseek.facts.base import ActivationShape
from ..models.deepseek.facts.model import HeadFacts, layer_facts, layer_graph_key
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
    """Bytes one layer keeps for its backward, per micro-batch of `tokens` = batch*seq, by block
    (each block states its own terms: facts/)."""
    shape = ActivationShape(float(tokens), batch, seq, tp, tp if sequence_parallel else 1, act_bytes)
    return layer_facts(c, layer).activations(shape)


def head_activation_bytes(c: DeepseekConfig, tokens: int, tp: int, vocab_parallel: bool, act_bytes: int) -> float:
    """Final norm, then the fp32 logits and softmax the loss backward reads (per head: main + MTP)."""
    shape = ActivationShape(float(tokens), 1, tokens, tp, 1, act_bytes)
    return HeadFacts(c).head_activations(shape, tp if vocab_parallel else 1)


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
                    activation_factor: float = 1.0,
                    recompute_activation_factor: Optional[float] = None,
                    layer_graph_gb: float = 0.0) -> List[MemoryEstimate]:
    """Per-device memory of every pipeline stage. With LoRA the frozen base is held in the
    compute dtype and only the adapters have fp32 weights, gradients and AdamW moments.
    `recompute_activation_factor` (the preset's): where recompute frees nothing (MindSpore's CPU
    executor keeps every intermediate), a recomputed stage keeps all its activations times it."""
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
        if _recompute_of(par, s) and recompute_activation_factor is not None:   # nothing freed, more kept
            kept = sum(per_layer) * recompute_activation_factor
        elif _recompute_of(par, s):  # keep layer inputs; one layer's activations live while recomputed
            kept = len(layers) * act_bytes * tokens * model.hidden_size / (par.tp if par.sequence_parallel else 1)
            transient = max(per_layer, default=0.0)
        else:
            kept = sum(per_layer)
        if s == par.pp - 1:
            kept += head_activation_bytes(model, tokens, par.tp, par.vocab_parallel, act_bytes)
        in_flight = par.pp - s   # 1F1B: stage s holds pp - s micro-batches (1 without pipelining)
        out.append(MemoryEstimate(s, sp.total + sp.lora, weights, grads, opt, (kept * in_flight + transient) * activation_factor,
                                  (runtime_overhead_gb + layer_graph_gb * len({layer_graph_key(model, i) for i in layers}))
                                  * GB))
    return out
