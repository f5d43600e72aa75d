"""Process groups and the collective cells of the explicit executor.

Ranks are laid out stage-major, then tp-fastest (MindSpore's order): rank = stage * dp * tp +
dp_rank * tp + tp_rank; each pipeline stage is a block of dp * tp ranks with its own dp/tp/ep
groups, and the `pp` group joins the ranks of the same place in every stage. Expert parallelism is carved
out of data parallelism: an EP group is `ep` consecutive dp ranks with the same tp rank, so
each holds E/ep experts; ranks with the same experts form the expert-data-parallel group.

The cells carry their collectives in custom bprops (Megatron's f/g pair, and the
dispatch/combine pair of MoE), and are identities when their group has one member. Which
collective is native and which is emulated is decided by the backend's capabilities
(collectives.py): on CPU, mccl only all-gathers over the world group and has no
reduce-scatter, so a group all-gather is an all-reduce of zero-padded buffers and a
reduce-scatter an all-reduce and a slice; on Ascend they are HCCL's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import mindspore as ms
from mindspore import nn, ops

from ..models.deepseek.layers import Identity
from .collectives import native


@dataclass
class ParallelContext:
    world: int
    rank: int
    dp: int
    tp: int
    ep: int
    device: str = "CPU"
    pp: int = 1
    groups: Dict[str, str] = field(default_factory=dict)        # axis -> group name
    members: Dict[str, List[int]] = field(default_factory=dict)  # axis -> ranks
    sequence_parallel: bool = False   # the residual between blocks split over tp (sequence.py)
    # parameters whose gradient on this rank is a partial sum over tp (sequence.partial_parameters)
    partial_over_tp: Tuple[str, ...] = ()

    @property
    def stage(self) -> int:
        return self.rank // (self.dp * self.tp)

    @property
    def dp_rank(self) -> int:
        return (self.rank % (self.dp * self.tp)) // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def ep_rank(self) -> int:
        return self.dp_rank % self.ep

    def coords(self) -> Dict[str, int]:
        """Place on each mesh axis; `edp` is the place among the ranks holding the same experts
        (the axis ZeRO shards the experts' optimizer state over)."""
        return {"dp": self.dp_rank, "tp": self.tp_rank, "ep": self.ep_rank, "pp": self.stage,
                "edp": self.dp_rank // self.ep}

    def sizes(self) -> Dict[str, int]:
        return {"dp": self.dp, "tp": self.tp, "ep": self.ep, "pp": self.pp, "edp": self.dp // self.ep}

    def size(self, axis: str) -> int:
        return len(self.members.get(axis, [self.rank]))

    def index(self, axis: str) -> int:
        return self.members.get(axis, [self.rank]).index(self.rank)

    @staticmethod
    def layout_members(world: int, rank: int, dp: int, tp: int, ep: int, pp: int = 1) -> Dict[str, List[int]]:
        per_stage = dp * tp
        base, local = (rank // per_stage) * per_stage, rank % per_stage
        d, t = local // tp, local % tp
        block = d // ep
        stage = rank // per_stage
        ends = sorted({local, (pp - 1) * per_stage + local}) if stage in (0, pp - 1) else [rank]
        return {
            "tp": [base + d * tp + i for i in range(tp)],
            "dp": [base + i * tp + t for i in range(dp)],
            "ep": [base + (block * ep + i) * tp + t for i in range(ep)],
            "edp": [base + (b * ep + d % ep) * tp + t for b in range(dp // ep)],   # same experts
            "pp": [s * per_stage + local for s in range(pp)],                     # same place, every stage
            "ends": ends,        # the first and the last stage (both hold the embedding when MTP needs it)
        }

    def collective(self, kind: str, axis: str) -> nn.Cell:
        """The cell a model places where its activations cross `axis`: `kind` is "copy_to"
        (Megatron's f), "reduce_from" (g), "gather_from" (MoE dispatch) or "scatter_sum_to"
        (MoE combine); an identity when the axis has one member. The models reach the
        collectives only through this, so they import nothing of the executor."""
        cls = {"copy_to": CopyToGroup, "reduce_from": ReduceFromGroup, "gather_from": GatherFromGroup,
               "scatter_sum_to": ScatterSumToGroup}[kind]
        return make(cls, self, axis)

    def create_groups(self) -> None:
        """Create the communication groups this rank belongs to (mccl/HCCL want exactly those)."""
        from mindspore.communication import create_group
        self.members = self.layout_members(self.world, self.rank, self.dp, self.tp, self.ep, self.pp)
        created = {}
        for axis, ranks in self.members.items():
            if len(ranks) > 1 and tuple(ranks) in created:  # pp=2: `ends` is the `pp` group
                self.groups[axis] = created[tuple(ranks)]
            elif len(ranks) > 1:
                name = f"{axis}_" + "_".join(map(str, ranks))
                if len(ranks) == self.world:
                    name = "__world__"
                else:
                    create_group(name, ranks)
                self.groups[axis] = created[tuple(ranks)] = name


def _all_reduce(ctx: ParallelContext, axis: str):
    group = ctx.groups[axis]
    return ops.AllReduce(ops.ReduceOp.SUM) if group == "__world__" else ops.AllReduce(ops.ReduceOp.SUM, group)


class GroupAllGather(nn.Cell):
    """Concatenate x [n, ...] of every member along axis 0 -> [size * n, ...]."""

    def __init__(self, ctx: ParallelContext, axis: str):
        super().__init__()
        self.size, self.index = ctx.size(axis), ctx.index(axis)
        self.native = native(ctx.device, "all_gather", ctx.groups[axis] == "__world__")
        if self.native:
            group = ctx.groups[axis]
            self.gather = ops.AllGather() if group == "__world__" else ops.AllGather(group)
        else:
            self.reduce = _all_reduce(ctx, axis)

    def construct(self, x):
        if self.native:
            return self.gather(x)
        # this member's rows padded with zeros where the others' go, summed over the group; one pad,
        # not a loop of `x if i == index else zeros` pieces: inside ZeRO's update (a graph with
        # side effects) that became a switch auto-monad could not compile ("The pointer[cnode_abs]
        # is null")
        n = x.shape[0]
        pads = (0, 0) * (len(x.shape) - 1) + (self.index * n, (self.size - self.index - 1) * n)
        return self.reduce(ops.pad(x, pads))


class GroupReduceScatter(nn.Cell):
    """Sum x [size * n, ...] over the members and keep this member's n rows."""

    def __init__(self, ctx: ParallelContext, axis: str):
        super().__init__()
        self.size, self.index = ctx.size(axis), ctx.index(axis)
        group = ctx.groups[axis]
        self.native = native(ctx.device, "reduce_scatter", group == "__world__")
        if self.native:
            self.scatter = (ops.ReduceScatter(ops.ReduceOp.SUM) if group == "__world__"
                            else ops.ReduceScatter(ops.ReduceOp.SUM, group))
        else:
            self.reduce = _all_reduce(ctx, axis)

    def construct(self, x):
        if self.native:
            return self.scatter(x)
        n = x.shape[0] // self.size
        return self.reduce(x)[self.index * n:(self.index + 1) * n]


class CopyToGroup(nn.Cell):
    """f: identity forward, all-reduce of the gradient backward (before a column-parallel op)."""

    def __init__(self, ctx: ParallelContext, axis: str):
        super().__init__()
        self.reduce = _all_reduce(ctx, axis)

    def construct(self, x):
        return x

    def bprop(self, x, out, dout):
        return (self.reduce(dout),)


class ReduceFromGroup(nn.Cell):
    """g: all-reduce forward, identity backward (after a row-parallel op)."""

    def __init__(self, ctx: ParallelContext, axis: str):
        super().__init__()
        self.reduce = _all_reduce(ctx, axis)

    def construct(self, x):
        return self.reduce(x)

    def bprop(self, x, out, dout):
        return (dout,)


class GatherFromGroup(nn.Cell):
    """MoE dispatch: every member's tokens [n, ...] -> [size * n, ...]; backward sums the
    gradient over members and keeps this member's slice (a reduce-scatter)."""

    def __init__(self, ctx: ParallelContext, axis: str):
        super().__init__()
        self.gather = GroupAllGather(ctx, axis)
        self.scatter = GroupReduceScatter(ctx, axis)

    def construct(self, x):
        return self.gather(x)

    def bprop(self, x, out, dout):
        return (self.scatter(dout),)


class ScatterSumToGroup(nn.Cell):
    """MoE combine: sum the members' [size * n, ...] contributions and keep this member's n rows
    (a reduce-scatter); backward all-gathers the gradient."""

    def __init__(self, ctx: ParallelContext, axis: str):
        super().__init__()
        self.gather = GroupAllGather(ctx, axis)
        self.scatter = GroupReduceScatter(ctx, axis)

    def construct(self, x):
        return self.scatter(x)

    def bprop(self, x, out, dout):
        return (self.gather(dout),)


def make(cls, ctx, axis: str):
    """`cls(ctx, axis)`, or an identity when there is no context or the axis has one member."""
    if ctx is None or axis not in ctx.groups:
        return Identity()
    return cls(ctx, axis)
