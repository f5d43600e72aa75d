"""The layout table: how every parameter and every activation boundary is split over the
named mesh axes (`dp`, `tp`, `ep`, `pp`). Everything parallel derives from it: the local
shapes the explicit executor builds, the `.shard()` strategies of the Ascend executor, the
checkpoint split/merge, and the planner's per-device memory.

A parameter's split is derived from its role (models/deepseek/shapes.py), never listed per
layer: column-parallel linears split their output dim over tp, row-parallel ones their input
dim, routed experts split the expert dim over ep, V4's grouped output projection and per-head
sinks split whole groups of heads over tp; latent projections (q_a, kv_a, eh_proj, V4's
single shared-KV head), compressors, indexers, mHC, norms and routers are replicated; embedding and head split the vocabulary when
`vocab_parallel`. Pipeline stages own whole layers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..models.deepseek.config import DeepseekConfig
from ..models.deepseek.shapes import parameter_specs
from .config import virtual_stage_ranges

ROLE_SPLIT = {  # role -> {mesh axis: tensor dim}
    "linear_col": {"tp": 0},
    "linear_row": {"tp": 1},
    "grouped_col": {"tp": 0},     # V4's grouped o_a_proj: whole groups of heads over tp
    "head_vector": {"tp": 0},     # one value per attention head (V4's sinks)
    "experts_gate_up": {"ep": 0},
    "experts_down": {"ep": 0},
    "mla_latent": {}, "norm": {}, "router": {}, "router_bias": {}, "indexer": {},
}


@dataclass(frozen=True)
class ParamLayout:
    name: str
    shape: Tuple[int, ...]
    role: str
    split: Dict[str, int] = field(default_factory=dict)   # axis -> dim
    stage: int = 0                                       # pipeline stage owning it

    def local_shape(self, sizes: Dict[str, int]) -> Tuple[int, ...]:
        shape = list(self.shape)
        for axis, dim in self.split.items():
            shape[dim] //= sizes.get(axis, 1)
        return tuple(shape)

    def shard(self, full: np.ndarray, sizes: Dict[str, int], coords: Dict[str, int]) -> np.ndarray:
        """The piece of `full` a rank at `coords` holds."""
        out = full
        for axis, dim in self.split.items():
            n = sizes.get(axis, 1)
            if n > 1:
                step = out.shape[dim] // n
                index = [slice(None)] * out.ndim
                index[dim] = slice(coords[axis] * step, (coords[axis] + 1) * step)
                out = out[tuple(index)]
        return np.ascontiguousarray(out)

    def unshard(self, pieces: Dict[Tuple[int, ...], np.ndarray], sizes: Dict[str, int]) -> np.ndarray:
        """Reassemble from {(coord per split axis, in split order): piece}."""
        axes = list(self.split.items())

        def build(level: int, prefix: Tuple[int, ...]) -> np.ndarray:
            if level == len(axes):
                return pieces[prefix]
            axis, dim = axes[level]
            parts = [build(level + 1, prefix + (i,)) for i in range(sizes.get(axis, 1))]
            return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=dim)
        return build(0, ())


@dataclass(frozen=True)
class ActivationBoundary:
    where: str          # e.g. "self_attn.o_proj output"
    axis: str           # mesh axis the collective runs over
    forward: str        # collective in the forward pass
    backward: str       # collective in the backward pass


# Where activations cross a split (the explicit executor inserts these; on Ascend the
# strategies imply them): Megatron's f/g pair for tensor parallelism and the token
# dispatch/combine of expert parallelism.
BOUNDARIES = (
    ActivationBoundary("input of every column-parallel linear (q_b, kv_b, gate/up), and k_pe", "tp",
                       "identity", "all-reduce"),
    ActivationBoundary("output of every row-parallel linear (o_proj, down_proj)", "tp", "all-reduce", "identity"),
    ActivationBoundary("MoE dispatch: tokens to the ranks owning their experts", "ep", "all-to-all (all-gather on CPU)",
                       "reduce-scatter"),
    ActivationBoundary("MoE combine: expert outputs back to the token's rank", "ep",
                       "reduce-scatter (all-reduce + slice on CPU)", "all-gather"),
    ActivationBoundary("gradients of replicated parameters", "dp", "none", "all-reduce (sum)"),
    ActivationBoundary("gradients of routed experts", "dp/ep (expert data parallel)", "none", "all-reduce (sum)"),
    ActivationBoundary("vocab-parallel embedding output / logits", "tp", "all-reduce / parallel softmax",
                       "identity / all-reduce"),
    ActivationBoundary("hidden state between pipeline stages", "pp", "send", "receive"),
)


def _layer_virtual_stage(model: DeepseekConfig, par) -> List[int]:
    """Virtual stage of every decoder layer, then of the MTP modules (the last one)."""
    ranges = virtual_stage_ranges(model.num_hidden_layers, par.pp, par.pp_offset, par.virtual_stages)
    return [k for k, (a, b) in enumerate(ranges) for _ in range(a, b)] + [len(ranges) - 1] * model.mtp_depth


def layer_stage(model: DeepseekConfig, par) -> List[int]:
    """Pipeline stage of every decoder layer (MTP modules sit on the last stage); with
    interleaving, virtual stage k's layers sit on stage k % pp."""
    return [k % par.pp for k in _layer_virtual_stage(model, par)]


def virtual_chunk(model: DeepseekConfig, par) -> List[int]:
    """Which of its stage's chunks every decoder layer (then MTP module) is in (0 without interleaving)."""
    return [k // par.pp for k in _layer_virtual_stage(model, par)]


def layout_table(model: DeepseekConfig, par) -> Dict[str, ParamLayout]:
    stages = layer_stage(model, par)
    table: Dict[str, ParamLayout] = {}
    for name, shape, role in parameter_specs(model):
        split = dict(ROLE_SPLIT.get(role, {}))
        if role in ("embed", "head") and par.vocab_parallel:
            split = {"tp": 0}
        if par.tp == 1:
            split.pop("tp", None)
        if par.ep == 1:
            split.pop("ep", None)
        if name.startswith("model.layers."):
            stage = stages[int(name.split(".")[2])]
        else:
            stage = 0 if role == "embed" else par.pp - 1
        table[name] = ParamLayout(name, tuple(shape), role, split, stage)
    return table


def shared_parameters(model: DeepseekConfig, table: Dict[str, ParamLayout], pp: int) -> Tuple[str, ...]:
    """Parameters the first and the last pipeline stage both hold: the embedding, when the last
    stage's MTP modules (or a tied head) read it; their gradients are summed over the two copies."""
    if pp == 1 or not (model.mtp_depth > 0 or model.tie_word_embeddings):
        return ()
    return tuple(n for n, p in table.items() if p.role == "embed")


def stage_keeps(table: Dict[str, ParamLayout], stage: int, shared: Tuple[str, ...]):
    """name -> whether pipeline stage `stage` holds the parameter (names outside the table, such as
    LoRA adapters, stay where their base is built)."""
    last = max((p.stage for p in table.values()), default=0)

    def keep(name: str) -> bool:
        p = table.get(name)
        return p is None or p.stage == stage or (name in shared and stage == last)
    return keep


def mesh_sizes(par) -> Dict[str, int]:
    return {"dp": par.dp, "tp": par.tp, "ep": par.ep, "pp": par.pp}


def check_divisible(table: Dict[str, ParamLayout], par) -> List[str]:
    """Parameters whose split dims do not divide: empty for a valid layout."""
    sizes = mesh_sizes(par)
    bad = []
    for p in table.values():
        for axis, dim in p.split.items():
            if p.shape[dim] % sizes[axis]:
                bad.append(f"{p.name}: dim {dim} of size {p.shape[dim]} is not divisible by {axis}={sizes[axis]}")
    return bad
