"""Facts of the feed-forward blocks (cells: layers.MLP, moe.MoE): the dense SwiGLU MLP and
DeepSeekMoE (router, shared experts, routed experts; V4's hash-routed layers read a frozen
token -> experts table instead of a correction bias). MoE FLOPs are those done: the router,
the shared experts and `num_experts_per_tok` routed experts per token."""
from __future__ import annotations

from typing import Dict, Iterator

from .base import FP32, ActivationShape, BlockFacts, Spec


class MlpFacts(BlockFacts):
    """down(silu(gate x) * up x): gate/up column-, down row-parallel."""

    def __init__(self, prefix: str, hidden: int, intermediate: int, key: str = "dense_mlp"):
        self.prefix, self.hidden, self.intermediate, self.key = prefix, hidden, intermediate, key

    def params(self) -> Iterator[Spec]:
        m, h, i = self.prefix, self.hidden, self.intermediate
        yield m + "gate_proj.weight", (i, h), "linear_col"
        yield m + "up_proj.weight", (i, h), "linear_col"
        yield m + "down_proj.weight", (h, i), "linear_row"

    def flops(self, seq: int) -> Dict[str, float]:
        return {self.key: float(2 * 3 * self.hidden * self.intermediate)}

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        """Its norm's input and output, gate/up/activation."""
        return {"mlp": a.B * a.tokens * 2 * self.hidden / a.sp + a.B * a.tokens * 3 * self.intermediate / a.tp}


class MoeFacts(BlockFacts):
    def __init__(self, c, prefix: str, layer: int):
        self.c, self.prefix = c, prefix
        self.hash_routed = c.is_hash_layer(layer)
        self.has_bias = c.layer_has_correction_bias(layer)
        self.shared = (MlpFacts(prefix + "shared_experts.", c.hidden_size, c.moe_intermediate_size * c.n_shared_experts,
                                "shared_experts") if c.n_shared_experts > 0 or c.is_v4 else None)

    def params(self) -> Iterator[Spec]:
        c, m = self.c, self.prefix
        h, e, inter = c.hidden_size, c.n_routed_experts, c.moe_intermediate_size
        yield m + "gate.weight", (e, h), "router"
        if self.hash_routed:
            yield m + "gate.tid2eid", (c.vocab_size, c.num_experts_per_tok), "hash_table"
        elif self.has_bias:
            yield m + "gate.e_score_correction_bias", (e,), "router_bias"
        yield m + "experts.gate_up_proj", (e, 2 * inter, h), "experts_gate_up"
        yield m + "experts.down_proj", (e, h, inter), "experts_down"
        if self.shared is not None:
            yield from self.shared.params()

    def flops(self, seq: int) -> Dict[str, float]:
        c, h, inter = self.c, self.c.hidden_size, self.c.moe_intermediate_size
        return {"router": float(2 * h * c.n_routed_experts),
                "shared_experts": float(2 * 3 * h * inter * c.n_shared_experts),
                "routed_experts": float(2 * 3 * h * inter * c.num_experts_per_tok)}

    def activations(self, a: ActivationShape) -> Dict[str, float]:
        """Its norm; the fp32 router scores; shared gate/up/act; the permuted rows in, gate/up,
        activation and out for each of the k choices."""
        c, B, t = self.c, a.B, a.tokens
        h, inter, k = c.hidden_size, c.moe_intermediate_size, c.num_experts_per_tok
        moe = B * t * 2 * h / a.sp + FP32 * t * 2 * c.n_routed_experts
        moe += B * t * 3 * inter * c.n_shared_experts / a.tp
        moe += B * t * k * (2 * h + 3 * inter)
        return {"moe": moe}


def ffn_facts(c, prefix: str, layer: int) -> BlockFacts:
    if c.is_moe_layer(layer):
        return MoeFacts(c, prefix, layer)
    return MlpFacts(prefix, c.hidden_size, c.intermediate_size)
