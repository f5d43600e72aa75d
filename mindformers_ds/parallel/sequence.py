"""Sequence parallelism on the explicit executor (`parallel.sequence_parallel`, tensor-parallel
ranks only): between the blocks, the residual stream and what works on it token by token (the
norms, V4's mHC mixing) hold 1/tp of the sequence, S/tp consecutive positions per tp rank,
instead of a copy of all of it on every tp rank.

The model marks the blocks' edges (layers.SequenceGather / SequenceShard); `apply` turns them,
from outside, into these cells over the `tp` group (T = tp, x_r = rank r's part of the sequence):

    SequenceGather       -> AllGatherSequence      forward  all-gather [B, S/T, ..] -> [B, S, ..]
                                                   backward keep x_r's rows of the gradient
    SequenceShard        -> ReduceScatterSequence  forward  reduce-scatter of the row-parallel
      (partial_from set)   (the linear's all-reduce        linear's partial sums along S
                            is removed)            backward all-gather of the gradient
    SequenceShard        -> SliceSequence          forward  keep x_r (the block's output arrives
      (whole output)                                        whole: MoE, the embeddings)
                                                   backward all-gather of the gradient

So in the forward pass each block costs one all-gather and one reduce-scatter over tp instead of
one all-reduce (Megatron's sequence parallelism). The backward differs from Megatron's by one
choice: Megatron drops the column-parallel linears' gradient all-reduce (f) and reduce-scatters
at the gather instead; here f stays, so the gradient reaching a gathered input is already the
whole sum on every rank and the gather's backward keeps this rank's rows (one all-reduce where
Megatron has a reduce-scatter: the same result, a little more backward traffic, and no change to
the linears, MLA's shared rope key or the replicated latent projections).

Parameters used inside the sharded region see 1/tp of the tokens: their gradients are partial
sums, added over tp before anything else (`partial_parameters`, explicit.GradReducer).

The sequence is cut along axis 1 of [B, S, ...] (V3's hidden [B, S, H], V4's streams
[B, S, n, H]); the collectives gather along axis 0, so the cells move S to the front and back.
"""
from __future__ import annotations

from typing import Tuple

from mindspore import nn

from ..models.deepseek.layers import Identity, SequenceGather, SequenceShard
from ..utils.cells import find_cells, replace_cell
from .comm import GroupAllGather, GroupReduceScatter, make


def _to_front(x):
    return x.swapaxes(0, 1)


class _Sequence(nn.Cell):
    def __init__(self, ctx, axis: str):
        super().__init__()
        self.size, self.index = ctx.size(axis), ctx.index(axis)
        self.gather = GroupAllGather(ctx, axis)

    def gather_sequence(self, x):
        return _to_front(self.gather(_to_front(x)))

    def my_part(self, x):
        n = x.shape[1] // self.size
        return x[:, self.index * n:(self.index + 1) * n]


class AllGatherSequence(_Sequence):
    def construct(self, x):
        return self.gather_sequence(x)

    def bprop(self, x, out, dout):
        return (self.my_part(dout),)


class ReduceScatterSequence(_Sequence):
    def __init__(self, ctx, axis: str):
        super().__init__(ctx, axis)
        self.scatter = GroupReduceScatter(ctx, axis)

    def construct(self, x):
        return _to_front(self.scatter(_to_front(x)))

    def bprop(self, x, out, dout):
        return (self.gather_sequence(dout),)


class SliceSequence(_Sequence):
    def construct(self, x):
        return self.my_part(x)

    def bprop(self, x, out, dout):
        return (self.gather_sequence(dout),)


def apply(model, ctx) -> dict:
    """Turn the model's sequence marks into the collectives above (after parallelize's tp split,
    which put an all-reduce at every row-parallel linear's output); returns {what: how many}."""
    done = {"sequence gathers": 0, "sequence reduce-scatters": 0, "sequence slices": 0}
    for name in sorted(find_cells(model, lambda n, c: isinstance(c, SequenceGather))):
        replace_cell(model, name, make(AllGatherSequence, ctx, "tp"))
        done["sequence gathers"] += 1
    cells = dict(model.cells_and_names())
    for name, cell in sorted(find_cells(model, lambda n, c: isinstance(c, SequenceShard)).items()):
        owner = name.rpartition(".")[0]
        source = cells.get(f"{owner}.{cell.partial_from}") if cell.partial_from else None
        if source is not None and not isinstance(source.leave, Identity):   # row-parallel: partial sums
            source.leave = Identity()
            replace_cell(model, name, make(ReduceScatterSequence, ctx, "tp"))
            done["sequence reduce-scatters"] += 1
        else:
            replace_cell(model, name, make(SliceSequence, ctx, "tp"))
            done["sequence slices"] += 1
    return done


def partial_parameters(model) -> Tuple[str, ...]:
    """Names of the parameters the sharded region uses (the cells a layer lists in its
    `sequence_region`): under sequence parallelism their gradients are summed over tp."""
    names = []
    for name, cell in model.cells_and_names():
        for child in getattr(cell, "sequence_region", ()):
            names += [p.name for p in getattr(cell, child).get_parameters()]
    return tuple(sorted(set(names)))
