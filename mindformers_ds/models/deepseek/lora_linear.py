"""LoRA: a Linear whose product carries a low-rank adapter.

    y = x W^T + (alpha / r) * dropout(x) A^T B^T        A [r, in], B [out, r]

`LoraLinear` is a `Linear` (same parameters, same names) that replaces
the one it adapts (`train/lora.py` does the replacing); `merge_adapters` folds W += (alpha/r)
B A in float64 and puts plain Linears back. The adapter math lives here and nowhere else.
"""
from __future__ import annotations

import numpy as np
from mindspore import nn, ops, Parameter, Tensor

from ...utils.cells import find_cells, replace_cell
from .layers import Identity, Linear


class LoraLinear(Linear):
    has_adapter = True

    def __init__(self, in_features, out_features, bias, compute_dtype, rank: int, alpha: float, dropout: float):
        super().__init__(in_features, out_features, bias, compute_dtype)
        self.rank = rank
        self.scale = float(alpha) / rank
        # A: PEFT's kaiming-uniform bound; set by the caller from its seed (`init_adapter`)
        self.lora_a = Parameter(Tensor(np.zeros((rank, self.in_features), np.float32)), name="lora_a")
        self.lora_b = Parameter(Tensor(np.zeros((self.out_features, rank), np.float32)), name="lora_b")
        self.matmul_a = ops.MatMul(transpose_b=True)
        self.matmul_b = ops.MatMul(transpose_b=True)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else Identity()

    def init_adapter(self, rng: np.random.Generator) -> None:
        """A uniform in +-1/sqrt(in) (PEFT's kaiming init); B stays zeros: the adapted model starts as the base."""
        bound = 1.0 / np.sqrt(self.in_features)
        self.lora_a.set_data(Tensor(rng.uniform(-bound, bound, (self.rank, self.in_features)).astype(np.float32)))

    def product(self, x2):
        y = super().product(x2)
        if self.cast_needed:
            x2 = x2.astype(self.compute_dtype)
        h = self.matmul_a(self.dropout(x2), self.lora_a.astype(x2.dtype))
        return y + self.matmul_b(h, self.lora_b.astype(x2.dtype)) * self.scale

    def merged(self) -> Linear:
        """A plain Linear holding W + (alpha/r) B A (summed in float64), this cell's weight object."""
        w = self.weight.asnumpy().astype(np.float64)
        delta = self.lora_b.asnumpy().astype(np.float64) @ self.lora_a.asnumpy().astype(np.float64)
        self.weight.set_data(Tensor((w + self.scale * delta).astype(np.float32)))
        return self.rebuilt(Linear)


def merge_adapters(model: nn.Cell) -> int:
    """Fold every adapter of `model` into its base weight, put plain Linears back; returns how many.

    MindSpore caches a compiled graph per top-level cell and does not notice the changed
    structure: call this before compiling, or run the merged model through a new cell."""
    adapted = find_cells(model, lambda name, cell: isinstance(cell, LoraLinear))
    for name, cell in sorted(adapted.items()):
        replace_cell(model, name, cell.merged())
    return len(adapted)
