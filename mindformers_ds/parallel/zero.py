"""ZeRO-1 in the explicit executor (`parallel.optimizer_shard`).

Each data-parallel rank keeps AdamW's moments for 1/k of every parameter, k the size of the
group its gradient is summed over: `dp`, or for routed experts `edp` (the dp/ep ranks holding
the same experts). Per step and parameter:

    gradient   reduce-scattered along dim 0 over the group (mccl: all-reduce + slice; HCCL: native)
    update     the fused AdamW kernel on this rank's rows only (a scratch copy of the parameter's
               rows, the moments' rows, the gradient's rows)
    parameter  the updated rows all-gathered over the group and written back whole

Rows along dim 0, as MindSpore's own optimizer parallelism cuts them; a parameter whose local
dim 0 the group does not divide keeps whole moments (logged). The update is elementwise, so
every row gets exactly the unsharded update; only the global norm's sum runs in another order
(each slice's squares, summed over the group). In a checkpoint a moment's rows are one more
split of the layout table ({axis: 0} after the parameter's own splits), so shards.py
reassembles and re-cuts them for any other layout, sharded or not.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Sequence

from mindspore import Parameter, ParameterTuple, Tensor, ops
import numpy as np

from ..train.optimizer import AdamW, _adamw
from .comm import GroupAllGather, ParallelContext
from .layout import ParamLayout

log = logging.getLogger("mindformers_ds.parallel")


def zero_axes(params: Sequence, table: Dict[str, ParamLayout], ctx: ParallelContext,
              shared: Sequence[str] = ()) -> Dict[str, str]:
    """Parameter name -> the group its optimizer state is sharded over (absent: kept whole). The
    embedding both pipeline ends hold (`shared`) keeps whole moments: its gradient is summed over
    the two copies first, and one reduction path per group keeps the graph free of branches."""
    axes, whole = {}, []
    for p in params:
        if p.name in shared:
            whole.append(p.name)
            continue
        split = table[p.name].split if p.name in table else {}
        axis = "edp" if "ep" in split else "dp"
        if axis not in ctx.groups:
            continue
        if len(p.shape) and p.shape[0] % ctx.size(axis) == 0:
            axes[p.name] = axis
        else:
            whole.append(p.name)
    if whole:
        log.info("optimizer_shard: %d parameter(s) keep whole moments: %s", len(whole),
                 ", ".join(whole[:5]))
    return axes


def optimizer_table(table: Dict[str, ParamLayout], axes: Dict[str, str]) -> Dict[str, ParamLayout]:
    """The layout of the optimizer's moments: the parameter's, with the ZeRO rows as one more split."""
    return {n: dataclasses.replace(p, split={**p.split, axes[n]: 0}) if n in axes else p for n, p in table.items()}


GROUPS = (None, "dp", "edp")   # the optimizer's parameter order: whole state first, then by group
_zero_adamw = ops.MultitypeFuncGraph("zero_adamw")


@_zero_adamw.register("Function", "Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                      "Number", "Number", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _zero_update(kernel, gather, lr, beta1, beta2, eps, decay_scale, start, rows, decay, param, m, v, work, grad):
    ops.assign(work, param[start:start + rows])
    # the kernel updates `work` in place; its first output is the value it read (measured on CPU),
    # so the updated rows are `work` read after it
    updated = ops.depend(work, kernel(work, m, v, lr, beta1, beta2, eps, decay * decay_scale,
                                      grad.astype(param.dtype)))
    return ops.assign(param, gather(updated))


def order_by_group(params: Sequence[Parameter], axes: Dict[str, str]) -> List[Parameter]:
    """The parameters with whole state first, then those sharded over dp, then over edp: each
    group a contiguous slice of every tuple, so each is mapped with its own collective. (A
    collective cell chosen per parameter by an `if` inside the mapped function did not compile:
    "The pointer[cnode_abs] is null", "The pointer[func_graph->get_return()] is null".)"""
    return [p for g in GROUPS for p in params if axes.get(p.name) == g]


class ShardedAdamW(AdamW):
    """AdamW (train/optimizer.py, same coefficients) over this rank's rows of each parameter.
    Its `params` are in `order_by_group` order, which the step's gradients must follow (the
    trainer takes its trainable list from here); `construct` takes the gradients as GradReducer
    leaves them: this rank's rows where sharded."""

    def __init__(self, params: Sequence[Parameter], axes: Dict[str, str], ctx: ParallelContext,
                 betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
        params = order_by_group(params, axes)
        rows = [p.shape[0] // ctx.size(axes[p.name]) if p.name in axes else 0 for p in params]
        shapes = [(r, *p.shape[1:]) if p.name in axes else tuple(p.shape) for p, r in zip(params, rows)]
        super().__init__(params, betas, eps, weight_decay, moment_shapes=shapes)
        self.zero_axes = dict(axes)
        counts = [sum(axes.get(p.name) == g for p in params) for g in GROUPS]
        self.a, self.b = counts[0], counts[0] + counts[1]    # [0, a) whole, [a, b) dp, [b, n) edp
        self.has_whole, self.has_dp, self.has_edp = (c > 0 for c in counts)
        self.rows = tuple(rows)
        self.starts = tuple(ctx.index(axes[p.name]) * r if p.name in axes else 0 for p, r in zip(params, rows))
        # scratch rows the kernel updates in place (refreshed from the parameter every step, so not state)
        self.work = ParameterTuple([Parameter(Tensor(np.zeros(s, np.float32)), name=f"optimizer.work.{p.name}",
                                              requires_grad=False) for p, s in zip(params, shapes) if p.name in axes])
        stand_in = ops.AllGather()
        self.dp_gather = GroupAllGather(ctx, "dp") if "dp" in ctx.groups else stand_in
        self.edp_gather = GroupAllGather(ctx, "edp") if "edp" in ctx.groups else stand_in

    def construct(self, grads, lr, apply):
        lr_k, beta1, beta2, eps, decay_scale = self.coefficients(lr, apply)
        a, b = self.a, self.b
        out = ()
        if self.has_whole:   # constants: resolved when the graph is built
            out = out + self.hyper_map(ops.partial(_adamw, self.kernel, lr_k, beta1, beta2, eps, decay_scale),
                                       self.decay[:a], self.params[:a], self.exp_avg[:a], self.exp_avg_sq[:a],
                                       grads[:a])
        if self.has_dp:
            out = out + self.hyper_map(ops.partial(_zero_update, self.kernel, self.dp_gather, lr_k, beta1, beta2, eps,
                                                   decay_scale),
                                       self.starts[a:b], self.rows[a:b], self.decay[a:b], self.params[a:b],
                                       self.exp_avg[a:b], self.exp_avg_sq[a:b], self.work[:b - a], grads[a:b])
        if self.has_edp:
            out = out + self.hyper_map(ops.partial(_zero_update, self.kernel, self.edp_gather, lr_k, beta1, beta2, eps,
                                                   decay_scale),
                                       self.starts[b:], self.rows[b:], self.decay[b:], self.params[b:],
                                       self.exp_avg[b:], self.exp_avg_sq[b:], self.work[b - a:], grads[b:])
        return out
