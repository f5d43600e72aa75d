"""Basic layers with HuggingFace parameter names and layouts (Linear weight is [out, in]).

Parameters are created as zeros; `model.init_weights` fills them deterministically from a
seed, so every process (and every parallel rank) builds the same model.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from ...ops import choice

DTYPES = {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}


class Identity(nn.Cell):
    def construct(self, x):
        return x


class SharedAcrossHeads(Identity):
    """Marks an activation every attention head reads (MLA's k_pe). The model computes it whole;
    when an executor splits the heads over ranks (parallel/parallelize.py) it puts Megatron's f
    here, so the activation's gradient sums the heads of every rank."""


class SummedOverHeads(Identity):
    """Marks a sum over a layer's attention heads (the indexer's training target,
    indexer_loss.py). When an executor splits the heads over ranks it becomes the all-reduce of
    the ranks' partial sums (forward only: the target is detached)."""


class SequenceGather(Identity):
    """Marks where the residual stream enters a block that reads the whole sequence (attention,
    the feed-forward block, the head). The model computes everything whole; under sequence
    parallelism (parallel/sequence.py) the residual between blocks holds 1/tp of the sequence and
    this becomes the all-gather along it."""


class SequenceShard(Identity):
    """Marks where a block's output returns to the residual stream; under sequence parallelism it
    keeps this rank's part of the sequence. `partial_from`: the linear (path from the layer that
    owns this cell) whose tensor-parallel partial sums arrive here, so the executor can
    reduce-scatter them instead of all-reducing them first; empty when the output arrives whole."""

    def __init__(self, partial_from: str = ""):
        super().__init__()
        self.partial_from = partial_from


def zeros_param(shape, name: str, requires_grad: bool = True) -> Parameter:
    return Parameter(Tensor(np.zeros(shape, np.float32)), name=name, requires_grad=requires_grad)


class Linear(nn.Cell):
    """y = x W^T (+ b). LoRA replaces a Linear by its subclass `lora_linear.LoraLinear`, which
    adds an adapter to `product` and keeps this cell's parameters (same objects, same names).

    `enter` and `leave` are where activations cross a split of this linear: identities in the
    model, which knows no parallelism. An executor that splits the weight over tensor-parallel
    ranks (parallel/parallelize.py, from the layout table's role of the weight) rebuilds the
    cell with its slice's shape and puts Megatron's f (column-parallel) or g (row-parallel) there."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, compute_dtype=ms.float32):
        super().__init__()
        self.init_args = (in_features, out_features, bias, compute_dtype)  # see `rebuilt`
        self.enter = Identity()
        self.leave = Identity()
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
        new.enter, new.leave = self.enter, self.leave
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

    def __init__(self, hidden: int, intermediate: int, compute_dtype=ms.float32, fused_ops=(), limit: float = 0.0):
        """`limit` > 0: V4's clipping of the gate (above) and up (both sides) pre-activations."""
        super().__init__()
        self.limit = limit
        self.gate_proj = Linear(hidden, intermediate, compute_dtype=compute_dtype)
        self.up_proj = Linear(hidden, intermediate, compute_dtype=compute_dtype)
        self.down_proj = Linear(intermediate, hidden, compute_dtype=compute_dtype)
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
