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

from typing import Callable, Dict, Sequence, Union

import mindspore as ms
from mindspore import nn, ops

from .comm import Identity, ParallelContext, _all_reduce
from .layout import ParamLayout, layout_table

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
    from ..config import ConfigError
    where = origin_of if callable(origin_of) else (lambda dotted: origin_of)

    def blame(*fields: str) -> str:
        origins = [where(f) for f in fields]
        return "--set" if "--set" in origins else origins[0]
    if par.pp != 1:
        raise ConfigError(blame("parallel.pp"), "parallel.pp", f"parallel.pp={par.pp}: the explicit executor has no "
                          f"pipeline parallelism (the Ascend executor does); use pp=1")
    if par.dp * par.tp != world:
        raise ConfigError(blame("parallel.dp", "parallel.tp"), "parallel.dp",
                          f"parallel.dp*parallel.tp={par.dp * par.tp} must equal the number of workers ({world})")
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
    ctx = ParallelContext(world, rank, par.dp, par.tp, par.ep, device)
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


def _reducer_for(ctx: ParallelContext, split: Dict[str, int]):
    axis = "edp" if "ep" in split else "dp"
    return Identity() if axis not in ctx.groups else _AllReduceCell(ctx, axis)


class _AllReduceCell(nn.Cell):
    def __init__(self, ctx, axis):
        super().__init__()
        self.op = _all_reduce(ctx, axis)

    def construct(self, x):
        return self.op(x)


class GradReducer(nn.Cell):
    """Sum gradients over data-parallel replicas and the expert load over the dp group."""

    def __init__(self, params: Sequence, table: Dict[str, ParamLayout], ctx: ParallelContext):
        super().__init__(auto_prefix=False)
        self.reduce_ops = nn.CellList([_reducer_for(ctx, _split_of(table, p.name)) for p in params])
        self.load = Identity() if "dp" not in ctx.groups else _AllReduceCell(ctx, "dp")
        self.n = len(params)

    def construct(self, grads, load):
        out = ()
        for i in range(self.n):
            out = out + (self.reduce_ops[i](grads[i]),)
        return out, self.load(load)


class GlobalNorm(nn.Cell):
    """sqrt of the sum of squared gradients of the whole (unsplit) model, on every rank."""

    def __init__(self, params: Sequence, table: Dict[str, ParamLayout], ctx: ParallelContext):
        super().__init__(auto_prefix=False)
        kinds = []
        for p in params:
            split = _split_of(table, p.name)
            kinds.append("tp" if "tp" in split else "ep" if "ep" in split else "rep")
        self.kinds = tuple(kinds)
        self.tp = _AllReduceCell(ctx, "tp") if "tp" in ctx.groups else Identity()
        self.ep = _AllReduceCell(ctx, "ep") if "ep" in ctx.groups else Identity()
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        sq = self.hyper_map(_square_sum, grads)
        rep = ops.zeros((), ms.float32)
        tp = ops.zeros((), ms.float32)
        ep = ops.zeros((), ms.float32)
        for i in range(len(self.kinds)):
            if self.kinds[i] == "tp":
                tp = tp + sq[i]
            elif self.kinds[i] == "ep":
                ep = ep + sq[i]
            else:
                rep = rep + sq[i]
        return ops.sqrt(rep + self.tp(tp) + self.ep(ep))


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


def barrier() -> None:
    Barrier()(ms.Tensor([1.0], ms.float32)).asnumpy()


def build_table(model_cfg, par) -> Dict[str, ParamLayout]:
    return layout_table(model_cfg, par)
