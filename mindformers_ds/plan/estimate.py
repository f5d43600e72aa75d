"""Communication volume and step time of a layout on a preset cluster.

Volumes are bytes one device sends per optimizer step (ring collectives: an all-reduce of S
bytes over n ranks sends 2(n-1)/n*S, an all-gather or reduce-scatter (n-1)/n*S, an all-to-all
(n-1)/n*S):
* dp: the fp32 gradient all-reduce, once per step (dense grads over dp, experts over dp*tp/ep;
  with optimizer_shard a reduce-scatter + all-gather, the same volume);
* tp: Megatron's two all-reduces per layer in forward and two in backward (two more when
  recompute repeats the forward), per micro-batch;
* ep: token dispatch and combine all-to-alls per MoE layer, forward and backward;
* pp: the hidden state sent forward and its gradient sent back, per micro-batch.
A group whose ranks stay in one node uses the intra-node bandwidth, else the inter-node one
(ranks are numbered tp fastest, then dp, then pp, as MindSpore and Megatron do).

Step time = compute at `compute_efficiency` x peak (recompute adds a forward) + the 1F1B
bubble (pp-1)/micro_batches of it + communication, assumed not overlapped: an upper bound.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from ..observe.flops import forward_flops_per_token, train_flops_per_token
from .memory import DTYPE_BYTES, GB, MemoryEstimate, estimate_memory, params_per_device


@dataclass(frozen=True)
class Plan:
    layout: Dict[str, object]
    memory: List[MemoryEstimate]
    comm_bytes: Dict[str, float]
    comm_s: Dict[str, float]
    compute_s: float
    bubble_s: float
    step_s: float
    mfu: float
    fits: bool

    @property
    def peak_memory_gb(self) -> float:
        return max(m.total for m in self.memory) / GB

    def as_dict(self) -> Dict[str, object]:
        return {"layout": self.layout, "memory_per_stage": [m.as_dict() for m in self.memory],
                "peak_memory_gb": self.peak_memory_gb, "fits": self.fits,
                "comm_gb_per_step": {k: v / GB for k, v in self.comm_bytes.items()}, "comm_s": self.comm_s,
                "compute_s": self.compute_s, "bubble_s": self.bubble_s, "step_s": self.step_s, "mfu": self.mfu}


def _spans_nodes(stride: int, size: int, devices_per_node: int) -> bool:
    return size > 1 and stride * size > devices_per_node


def plan_layout(model, par, cluster, micro_batch: int, seq: int, global_batch: int, lora=None) -> Plan:
    cluster = cluster.for_model(model)
    memory = estimate_memory(model, par, micro_batch, seq, cluster.runtime_overhead_gb, lora,
                             cluster.activation_factor, cluster.recompute_activation_factor, cluster.layer_graph_gb)
    act = DTYPE_BYTES.get(model.compute_dtype, 4)
    micro = global_batch // (micro_batch * par.dp)
    tokens = micro_batch * seq
    stage = max(params_per_device(model, par, lora), key=lambda sp: sp.total)
    # gradients all-reduced over dp (dense) and over dp*tp/ep (experts); with LoRA only the adapters have any
    grad_dense, grad_experts = (stage.lora, 0) if stage.lora else (stage.dense, stage.experts)
    expert_dp = max(1, par.dp * par.tp // par.ep)
    layers = model.num_hidden_layers + model.mtp_depth
    layers_per_stage = -(-layers // par.pp)
    moe_per_stage = -(-sum(model.is_moe_layer(i) for i in range(layers)) // par.pp)
    ring = lambda n: (n - 1) / n if n > 1 else 0.0  # noqa: E731
    vol = {
        "dp": 4.0 * 2 * (ring(par.dp) * grad_dense + ring(expert_dp) * grad_experts),
        "tp": micro * layers_per_stage * (6 if par.recompute else 4) * 2 * ring(par.tp) * act * tokens
        * model.hidden_size,
        # with sequence parallelism each tp rank dispatches only its 1/tp of the tokens
        "ep": micro * moe_per_stage * 4 * ring(par.ep) * act * tokens / (par.tp if par.sequence_parallel else 1)
        * model.num_experts_per_tok * model.hidden_size,
        "pp": micro * 2 * act * tokens * model.hidden_size if par.pp > 1 else 0.0,
    }
    dpn = cluster.devices_per_node
    bw = lambda inter: (cluster.inter_node_gbps if inter else cluster.intra_node_gbps) * 1e9  # noqa: E731
    comm_s = {
        "dp": vol["dp"] / bw(_spans_nodes(par.tp, par.dp, dpn)),
        "tp": vol["tp"] / bw(_spans_nodes(1, par.tp, dpn)),
        "ep": vol["ep"] / bw(_spans_nodes(1, par.ep, dpn)),
        "pp": vol["pp"] / bw(par.pp > 1 and par.dp * par.tp >= dpn),
    }
    per_device_tokens = global_batch * seq / (par.dp * par.tp * par.pp)
    # 3x forward as MFU conventions count it (LoRA skips the frozen weights' gradients: ~2x)
    model_flops = train_flops_per_token(model, seq) * per_device_tokens
    done_flops = model_flops + (forward_flops_per_token(model, seq)["total"] * per_device_tokens
                                if par.recompute else 0.0)  # recompute repeats the forward
    peak = cluster.peak_tflops_bf16 * 1e12
    compute_s = done_flops / (peak * cluster.compute_efficiency)
    bubble_s = compute_s * (par.pp - 1) / micro if par.pp > 1 else 0.0
    step_s = compute_s + bubble_s + sum(comm_s.values())
    layout = {"dp": par.dp, "tp": par.tp, "ep": par.ep, "pp": par.pp, "micro_batches": micro,
              "pp_offset": par.pp_offset, "recompute": par.recompute, "optimizer_shard": par.optimizer_shard,
              "sequence_parallel": par.sequence_parallel}
    fits = max(m.total for m in memory) <= cluster.device_memory_gb * GB
    return Plan(layout, memory, vol, comm_s, compute_s, bubble_s, step_s, model_flops / (step_s * peak), fits)
