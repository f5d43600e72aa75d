"""The explicit executor's `parallelize(model, table, ctx)`: a whole model, built by model code
that knows no parallelism, becomes this rank's part of it (torchtitan's `parallelize` shape,
in MindSpore terms: cells are rebuilt with their slice's shape and the collectives set at the
boundaries the cells leave for them).

What each cell becomes is read off the layout table's split of its weight (the role its block's
facts state, models/deepseek/facts/), never from the cell:

    Linear, weight split {tp: 0}   column parallel: out/tp rows; `enter` = Megatron's f
                                   (identity forward, gradient all-reduced over tp)
    Linear, weight split {tp: 1}   row parallel: in/tp columns; `leave` = g (output all-reduced)
    Experts, weight split {ep: 0}  E/ep experts from ep_rank * E/ep; `dispatch` gathers the EP
                                   group's tokens, `combine` sums the group's outputs back
    GroupedLinear, weight {tp: 0}  whole groups of heads: groups/tp groups (V4's o_a_proj)
    any other parameter split      a zero parameter of its slice's shape (V4's per-head sinks)
    SharedAcrossHeads              f over tp, in a block whose linears are split over tp (MLA's
                                   k_pe, V4's shared-KV keys feed only this rank's heads)
    SummedOverHeads                g over tp in such a block (the indexer's training target sums
                                   the probabilities of every head)

Parameters keep their names (utils/cells.replace_cell) and are zeros: values come afterwards
from `init_weights` / loading with the table's slicer, so it is applied to a freshly built model.
The whole model exists for a moment before the split (fine at the sizes the explicit executor
runs here; at scale the Ascend executor builds it whole anyway and MindSpore slices it).
"""
from __future__ import annotations

from collections import Counter
from typing import Dict

from ..models.deepseek.layers import Linear, SharedAcrossHeads, SummedOverHeads, zeros_param
from ..models.deepseek.moe import Experts
from ..models.deepseek.v4_attention import GroupedLinear
from ..utils.cells import find_cells, replace_cell
from .layout import ParamLayout


def _split(table: Dict[str, ParamLayout], name: str) -> Dict[str, int]:
    layout = table.get(name)
    return dict(layout.split) if layout is not None else {}


def _linear(cell: Linear, split: Dict[str, int], ctx) -> Linear:
    in_f, out_f, bias, dtype = cell.init_args
    if split.get("tp") == 0:
        new = Linear(in_f, out_f // ctx.tp, bias, dtype)
        new.enter = ctx.collective("copy_to", "tp")
    else:
        new = Linear(in_f // ctx.tp, out_f, bias, dtype)
        new.leave = ctx.collective("reduce_from", "tp")
    return new


def _experts(cell: Experts, config, ctx) -> Experts:
    per_rank = config.n_routed_experts // ctx.ep
    new = Experts(config, ctx.ep_rank * per_rank, per_rank)
    new.dispatch = ctx.collective("gather_from", "ep")
    new.combine = ctx.collective("scatter_sum_to", "ep")
    return new


def parallelize(model, table: Dict[str, ParamLayout], ctx) -> Dict[str, int]:
    """Split `model` (built whole, not yet initialised) for this rank; returns {what: how many}."""
    done: Counter = Counter()
    tp_split_blocks = []
    for name, cell in sorted(find_cells(model, lambda n, c: type(c) is Linear).items()):
        split = _split(table, f"{name}.weight")
        if "tp" in split and ctx.tp > 1:
            replace_cell(model, name, _linear(cell, split, ctx))
            done["column-parallel linear" if split["tp"] == 0 else "row-parallel linear"] += 1
            tp_split_blocks.append(name.rpartition(".")[0] + ".")
    for name, cell in sorted(find_cells(model, lambda n, c: isinstance(c, Experts)).items()):
        if "ep" in _split(table, f"{name}.gate_up_proj") and ctx.ep > 1:
            replace_cell(model, name, _experts(cell, model.config, ctx))
            done["expert-parallel experts"] += 1
    for name, cell in sorted(find_cells(model, lambda n, c: isinstance(c, GroupedLinear)).items()):
        if "tp" in _split(table, f"{name}.weight") and ctx.tp > 1:
            replace_cell(model, name, GroupedLinear(cell.in_per_group, cell.groups * cell.out_per_group // ctx.tp,
                                                    cell.groups // ctx.tp))
            done["grouped linear by head groups"] += 1
            tp_split_blocks.append(name.rpartition(".")[0] + ".")
    done.update(_split_remaining_parameters(model, table, ctx))
    for mark, collective, what in ((SharedAcrossHeads, "copy_to", "shared activation of split heads"),
                                   (SummedOverHeads, "reduce_from", "sum over split heads")):
        for name in sorted(find_cells(model, lambda n, c: isinstance(c, mark))):
            block = name.rpartition(".")[0] + "."
            if any(linear.startswith(block) for linear in tp_split_blocks):
                replace_cell(model, name, ctx.collective(collective, "tp"))
                done[what] += 1
    return dict(done)


def _split_remaining_parameters(model, table: Dict[str, ParamLayout], ctx) -> Counter:
    """Parameters split by the table that no rebuilt cell holds (V4's sinks): replaced in place
    by zeros of this rank's shape, under the same name."""
    done: Counter = Counter()
    sizes = ctx.sizes()
    owners = {f"{cell_name}.{attr}" if cell_name else attr: (cell, attr)
              for cell_name, cell in model.cells_and_names() for attr in cell._params}
    for param in list(model.get_parameters()):
        layout = table.get(param.name)
        if layout is None or not layout.split:
            continue
        local = layout.local_shape(sizes)
        if tuple(param.shape) != local:
            cell, attr = owners[param.name]
            new = zeros_param(local, attr, param.requires_grad)
            setattr(cell, attr, new)
            new.name = param.name
            done["split parameter"] += 1
    return done
