"""Basic layers with HuggingFace parameter names and layouts (Linear weight is [out, in]).

Parameters are created as zeros; `model.init_weights` fills them deterministically from a
seed, so every process (and every parallel rank) builds the same model.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from ...ops import choice

DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}


class Identity(nn.Cell):
    def construct(self, x):
        return x


def collective(ctx, kind: str, axis: str) -> nn.Cell:
    """Where activations cross a split: the cell the executor's context gives for `kind` over
    `axis` (parallel/comm.py ParallelContext.collective), an identity without a context."""
    return Identity() if ctx is None else ctx.collective(kind, axis)


def tp_size(ctx) -> int:
    return 1 if ctx is None else ctx.tp


def ep_info(ctx):
    """(ep size, ep rank) of a context (1, 0 without one)."""
    return (1, 0) if ctx is None else (ctx.ep, ctx.ep_rank)


def zeros_param(shape, name: str, requires_grad: bool = True) -> Parameter:
    return Parameter(Tensor(np.zeros(shape, np.float32)), name=name, requires_grad=requires_grad)


class Linear(nn.Cell):
    """y = x W^T (+ b). LoRA replaces a Linear by its subclass `lora_linear.LoraLinear`, which
    adds an adapter to `product` and keeps this cell's parameters (same objects, same names).

    With a parallel context of tp > 1, `parallel="col"` keeps out/tp output rows (its input
    passes Megatron's f: gradient all-reduced) and `parallel="row"` keeps in/tp input columns
    (its output passes g: all-reduced), so the same code runs split or whole."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, compute_dtype=ms.float32,
                 parallel: Optional[str] = None, ctx=None):
        super().__init__()
        self.init_args = (in_features, out_features, bias, compute_dtype, parallel, ctx)  # see `rebuilt`
        tp = tp_size(ctx) if parallel else 1
        if parallel == "col":
            out_features //= tp
        elif parallel == "row":
            in_features //= tp
        self.enter = collective(ctx, "copy_to", "tp") if parallel == "col" else Identity()
        self.leave = collective(ctx, "reduce_from", "tp") if parallel == "row" else Identity()
        self.in_features, self.out_features = in_features, out_features
        self.weight = zeros_param((out_features, in_features), "weight")
        self.has_bias = bias
        if bias:
            self.bias = zeros_param((out_features,), "bias")
        self.compute_dtype = compute_dtype
        self.cast_needed = compute_dtype != ms.float32
        self.matmul = ops.MatMul(transpose_b=True)

    has_adapter = False  # LoraLinear: True (a fused head + loss kernel knows no adapters)

    def rebuilt(self, cls, *extra):
        """A `cls` (Linear or a subclass) of this one's shape holding this one's Parameters, so
        replacing this cell by it keeps every weight and its name (see utils/cells.py)."""
        new = cls(*self.init_args, *extra)
        new.weight = self.weight
        if self.has_bias:
            new.bias = self.bias
        return new

    def product(self, x2):
        """x2 [N, in] -> x2 W^T [N, out] in the compute dtype."""
        w = self.weight
        if self.cast_needed:
            x2 = x2.astype(self.compute_dtype)
            w = w.astype(self.compute_dtype)
        return self.matmul(x2, w)

    def construct(self, x):
        shape = x.shape
        x2 = self.enter(x.reshape(-1, shape[-1]))
        y = self.leave(self.product(x2))
        if self.has_bias:
            y = y + self.bias.astype(y.dtype)
        return y.reshape(shape[:-1] + (self.out_features,))


class RMSNorm(nn.Cell):
    def __init__(self, dim: int, eps: float = 1e-6, fused_ops=()):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones((dim,), np.float32)), name="weight")
        self.eps = eps
        self.norm = choice.operator("rms_norm", fused_ops, eps=eps)

    def construct(self, x):
        return self.norm(x, self.weight, self.eps)


class MLP(nn.Cell):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)); used dense and as the shared experts."""

    def __init__(self, hidden: int, intermediate: int, compute_dtype=ms.float32, fused_ops=(), ctx=None,
                 limit: float = 0.0):
        """`limit` > 0: V4's clipping of the gate (above) and up (both sides) pre-activations."""
        super().__init__()
        self.limit = limit
        self.gate_proj = Linear(hidden, intermediate, compute_dtype=compute_dtype, parallel="col", ctx=ctx)
        self.up_proj = Linear(hidden, intermediate, compute_dtype=compute_dtype, parallel="col", ctx=ctx)
        self.down_proj = Linear(intermediate, hidden, compute_dtype=compute_dtype, parallel="row", ctx=ctx)
        self.fused = choice.uses_kernel("swiglu", fused_ops)
        self.act = choice.operator("swiglu", fused_ops)

    def construct(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self.limit > 0:
            gate, up = ops.minimum(gate, self.limit), ops.clamp(up, -self.limit, self.limit)
        if self.fused:  # the kernel reads one [.., 2I] buffer, as the routed experts produce it
            return self.down_proj(self.act(ops.concat((gate, up), -1)))
        return self.down_proj(ops.silu(gate) * up)


class Embedding(nn.Cell):
    def __init__(self, vocab: int, hidden: int):
        super().__init__()
        self.weight = zeros_param((vocab, hidden), "weight")

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)
