"""The explicit executor: runs under msrun on CPU (mccl) and on Ascend as a fallback.

Each rank builds the model with a ParallelContext, so it holds only its slices; the layout
table says how to cut the deterministic full initialisation (or a checkpoint) into them.
After the backward pass, gradients are summed over their data-parallel replicas (routed
experts over the expert-data-parallel group, everything else over the dp group); the global
gradient norm adds each sharded parameter's contribution once over the ranks sharing it, so
clipping is identical on every rank. Losses are token sums scaled by the global token count,
so the sum over ranks is exactly the single-process gradient.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from .comm import GroupReduceScatter, Identity, ParallelContext, _all_reduce
from .layout import ParamLayout, layout_table
from .zero import GROUPS

_square_sum = ops.MultitypeFuncGraph("sq")


@_square_sum.register("Tensor")
def _sq(g):
    g = g.astype(ms.float32)
    return (g * g).sum()


class ExplicitError(ValueError):
    pass


def distributed_world() -> int:
    """Workers started by msrun carry MS_WORKER_NUM; 1 otherwise."""
    from .config import launched_workers
    return launched_workers()


def check_explicit_layout(par, world: int, origin_of: Union[str, Callable[[str], str]] = "parallel") -> None:
    """Layouts the explicit executor runs (one-line errors before anything starts). `origin_of`
    names the file (or `--set`) that set a field: a RunConfig's `origin`, or one name for all."""
    from ..errors import ConfigError
    where = origin_of if callable(origin_of) else (lambda dotted: origin_of)

    def blame(*fields: str) -> str:
        origins = [where(f) for f in fields]
        return "--set" if "--set" in origins else origins[0]
    if par.dp * par.tp * par.pp != world:
        raise ConfigError(blame("parallel.dp", "parallel.tp", "parallel.pp"), "parallel.dp",
                          f"parallel.dp*tp*pp={par.dp * par.tp * par.pp} must equal the number of workers ({world})")
    if par.dp % par.ep:
        raise ConfigError(blame("parallel.ep", "parallel.dp"), "parallel.ep", f"parallel.ep={par.ep} must divide "
                          f"parallel.dp={par.dp}: the explicit executor carves expert parallelism out of data parallelism")
    if par.vocab_parallel:
        raise ConfigError(blame("parallel.vocab_parallel"), "parallel.vocab_parallel",
                          "parallel.vocab_parallel is not supported by the explicit executor")


def init_context(par, device: str = "CPU") -> ParallelContext:
    from mindspore.communication import get_group_size, get_rank, init
    init()
    world, rank = get_group_size(), get_rank()
    check_explicit_layout(par, world)
    ctx = ParallelContext(world, rank, par.dp, par.tp, par.ep, device, par.pp,
                          sequence_parallel=par.sequence_parallel and par.tp > 1)
    ctx.create_groups()
    return ctx


def layout_init(table: Dict[str, ParamLayout], ctx: ParallelContext):
    """For model.init_weights / loading: name -> (full shape, this rank's slicer)."""
    sizes, coords = ctx.sizes(), ctx.coords()

    def fn(name: str):
        p = table[name]
        return p.shape, (lambda full: p.shard(full, sizes, coords))
    return fn


def _split_of(table: Dict[str, ParamLayout], name: str) -> Dict[str, int]:
    """How a trainable parameter is split; LoRA adapters (not in the table) are replicated."""
    return table[name].split if name in table else {}


_KIND = {"rep": 0, "dp": 1, "edp": 2, "ends": 3, "ends+dp": 4}
_reduce_grad = ops.MultitypeFuncGraph("reduce_grad")


@_reduce_grad.register("Function", "Function", "Function", "Number", "Tensor")
def _reduce_one(dp_sum, edp_sum, ends_sum, kind, g):
    if kind == 1:
        return dp_sum(g)
    if kind == 2:
        return edp_sum(g)
    if kind == 3:
        return ends_sum(g)
    if kind == 4:
        return dp_sum(ends_sum(g))
    return g


_sum_partial = ops.MultitypeFuncGraph("sum_partial")


@_sum_partial.register("Function", "Number", "Tensor")
def _sum_partial_one(tp_sum, partial, g):
    return tp_sum(g) if partial else g


_scatter = ops.MultitypeFuncGraph("scatter")


@_scatter.register("Function", "Tensor")
def _scatter_one(reduce_scatter, g):
    return reduce_scatter(g)


_weighted = ops.MultitypeFuncGraph("weighted")


@_weighted.register("Number", "Tensor")
def _weight_one(w, x):
    return x * w


class _AllReduceCell(nn.Cell):
    def __init__(self, ctx, axis):
        super().__init__()
        self.op = _all_reduce(ctx, axis)

    def construct(self, x):
        return self.op(x)


class GradReducer(nn.Cell):
    """Sum gradients over data-parallel replicas (experts over their expert-data-parallel group)
    and the expert load over the dp group. One HyperMap over the gradient tuple: a Python loop
    building a tuple per parameter nests one call per parameter and stops compilation of deep
    models ("Exceed function call depth limit")."""

    def __init__(self, params: Sequence, table: Dict[str, ParamLayout], ctx: ParallelContext,
                 shared: Sequence[str] = (), zero: Optional[Dict[str, str]] = None):
        """`shared`: parameters both ends of the pipeline hold (the embedding when the last stage
        needs it): summed over the two copies, then over dp. `zero`: parameters whose optimizer
        state is sharded (zero.py), name -> group, in the optimizer's order (after all others,
        dp's then edp's): their gradient is reduce-scattered instead, so this rank keeps the sum
        of its rows only."""
        super().__init__(auto_prefix=False)
        zero = zero or {}
        groups = [zero.get(p.name) for p in params]
        if groups != sorted(groups, key=GROUPS.index):   # the optimizer's order (zero.py)
            raise ValueError("GradReducer: ZeRO-sharded parameters must follow the others, dp's before edp's")
        self.a = groups.count(None)
        self.b = self.a + groups.count("dp")
        self.has_whole, self.has_dp, self.has_edp = None in groups, "dp" in groups, "edp" in groups
        kinds = []
        for p in params[:self.a]:
            axis = "edp" if "ep" in _split_of(table, p.name) else "dp"
            kind = axis if axis in ctx.groups else "rep"
            if p.name in shared and "ends" in ctx.groups:
                kind = "ends+dp" if "dp" in ctx.groups else "ends"
            kinds.append(_KIND[kind])
        self.kinds = tuple(kinds)
        # a group this layout lacks is never selected by its kind; the world-group op stands in
        stand_in = ops.AllReduce(ops.ReduceOp.SUM)
        self.dp_sum = _all_reduce(ctx, "dp") if "dp" in ctx.groups else stand_in
        self.edp_sum = _all_reduce(ctx, "edp") if "edp" in ctx.groups else self.dp_sum
        self.ends_sum = _all_reduce(ctx, "ends") if "ends" in ctx.groups else stand_in
        self.dp_scatter = GroupReduceScatter(ctx, "dp") if self.has_dp else stand_in
        self.edp_scatter = GroupReduceScatter(ctx, "edp") if self.has_edp else stand_in
        self.load = Identity() if "dp" not in ctx.groups else _AllReduceCell(ctx, "dp")
        # sequence parallelism: the norms' (and V4's mHC) gradients are partial sums over tp first
        self.partial = tuple(int(p.name in ctx.partial_over_tp) for p in params)
        self.has_partial = any(self.partial)
        self.tp_sum = _all_reduce(ctx, "tp") if self.has_partial else stand_in
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, load):
        a, b = self.a, self.b
        if self.has_partial:
            grads = self.hyper_map(ops.partial(_sum_partial, self.tp_sum), self.partial, grads)
        out = ()
        if self.has_whole:   # constants: resolved when the graph is built
            out = self.hyper_map(ops.partial(_reduce_grad, self.dp_sum, self.edp_sum, self.ends_sum), self.kinds,
                                 grads[:a])
        if self.has_dp:
            out = out + self.hyper_map(ops.partial(_scatter, self.dp_scatter), grads[a:b])
        if self.has_edp:
            out = out + self.hyper_map(ops.partial(_scatter, self.edp_scatter), grads[b:])
        return out, self.load(load)


class GlobalNorm(nn.Cell):
    """sqrt of the sum of squared gradients of the whole (unsplit) model, on every rank: the
    squares of tp-split and ep-split gradients are summed over their groups, replicated ones not,
    and every stage's sum over the pipeline; the last stage's copy of a shared parameter
    (`shared`, equal to the first stage's after the reduction) is not counted twice. A gradient
    ZeRO left as this rank's rows (`zero`, name -> group) is first summed over that group."""

    def __init__(self, params: Sequence, table: Dict[str, ParamLayout], ctx: ParallelContext,
                 shared: Sequence[str] = (), zero: Optional[Dict[str, str]] = None):
        super().__init__(auto_prefix=False)
        zero = zero or {}
        kinds = []
        for p in params:
            split = _split_of(table, p.name)
            copy = p.name in shared and ctx.stage == ctx.pp - 1
            kind = "copy" if copy else "tp" if "tp" in split else "ep" if "ep" in split else "rep"
            kinds.append(kind + ("/zero" if p.name in zero and kind != "copy" else ""))
        w = {k: tuple(1.0 if x == k else 0.0 for x in kinds) for k in ("rep", "tp", "ep", "rep/zero", "tp/zero", "ep/zero")}
        self.w_rep, self.w_tp, self.w_ep = w["rep"], w["tp"], w["ep"]
        self.w_rep_zero, self.w_tp_zero, self.w_ep_zero = w["rep/zero"], w["tp/zero"], w["ep/zero"]
        self.tp = _AllReduceCell(ctx, "tp") if "tp" in ctx.groups else Identity()
        self.ep = _AllReduceCell(ctx, "ep") if "ep" in ctx.groups else Identity()
        self.pp = _AllReduceCell(ctx, "pp") if "pp" in ctx.groups else Identity()
        self.dp = _AllReduceCell(ctx, "dp") if "dp" in ctx.groups else Identity()
        self.edp = _AllReduceCell(ctx, "edp") if "edp" in ctx.groups else Identity()
        self.zero = bool(zero)
        self.hyper_map = ops.HyperMap()

    def _sum(self, sq, weights):
        return ops.addn(self.hyper_map(_weighted, weights, sq))

    def construct(self, grads):
        sq = self.hyper_map(_square_sum, grads)
        rep, tp, ep = self._sum(sq, self.w_rep), self._sum(sq, self.w_tp), self._sum(sq, self.w_ep)
        if self.zero:  # tp(dp(a) + b): a's squares summed over tp and dp, b's over tp
            rep = rep + self.dp(self._sum(sq, self.w_rep_zero))
            tp = tp + self.dp(self._sum(sq, self.w_tp_zero))
            ep = ep + self.edp(self._sum(sq, self.w_ep_zero))
        return ops.sqrt(self.pp(rep + self.tp(tp) + self.ep(ep)))


class SumOverDP(nn.Cell):
    """Sum a small float vector (loss parts for logging) over the dp group."""

    def __init__(self, ctx: ParallelContext):
        super().__init__(auto_prefix=False)
        self.op = _AllReduceCell(ctx, "dp") if "dp" in ctx.groups else Identity()

    def construct(self, x):
        return self.op(x)


class Barrier(nn.Cell):
    def __init__(self):
        super().__init__(auto_prefix=False)
        self.op = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x):
        return self.op(x)


_WORLD_SUM: Dict[str, Barrier] = {}


def world_sum(x: np.ndarray) -> np.ndarray:
    """`x` summed over every rank (a world all-reduce, as float32). One cell for the process: its
    graph compiles once per shape, not at every call."""
    if "cell" not in _WORLD_SUM:
        _WORLD_SUM["cell"] = Barrier()
    return _WORLD_SUM["cell"](ms.Tensor(np.asarray(x, np.float32))).asnumpy()


def barrier() -> None:
    world_sum(np.ones(1, np.float32))


def build_table(model_cfg, par) -> Dict[str, ParamLayout]:
    return layout_table(model_cfg, par)
