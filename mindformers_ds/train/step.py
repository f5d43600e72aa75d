"""The jit-compiled training step.

Losses are token sums scaled by 1/(tokens in the whole global batch), passed in from the
host, so summing the gradients of micro-batches (and of data-parallel ranks) gives exactly
the gradient of the global token-mean loss. The step then clips by global norm, applies
AdamW, and moves each router's correction bias toward balance:
    bias += rate * sign(mean(load) - load)
from the expert load counted during the step (no gradient involved). A step whose loss or
gradient norm is not finite changes nothing.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import mindspore as ms
from mindspore import nn, ops, Parameter

from ..models.deepseek import results as R
from ..ops import choice

_square_sum = ops.MultitypeFuncGraph("square_sum")


@_square_sum.register("Tensor")
def _sq(g):
    g = g.astype(ms.float32)
    return (g * g).sum()


_scale = ops.MultitypeFuncGraph("scale")


@_scale.register("Tensor", "Tensor", "Tensor")
def _scale_grad(finite, coef, g):
    # a skipped step zeroes its gradients: the fused AdamW kernel must read finite values
    return ops.select(ops.broadcast_to(finite, g.shape), g * coef.astype(g.dtype), ops.zeros_like(g))


@_scale.register("Function", "Tensor", "Tensor", "Tensor")
def _scale_grad_kernel(kernel, finite, coef, g):
    return kernel(g, coef, finite)


_move_bias = ops.MultitypeFuncGraph("move_bias")


@_move_bias.register("Number", "Tensor", "Tensor", "Tensor", "Number")
def _move_one_bias(rate, finite, load, bias, row):
    """bias += rate * sign(mean(load) - load) for this bias's row of the stacked expert load."""
    counts = load[row]
    new = bias + rate * ops.sign(counts.mean() - counts)
    return ops.assign(bias, ops.select(finite, new, bias))


_add = ops.MultitypeFuncGraph("add")


@_add.register("Tensor", "Tensor")
def _add_grad(a, b):
    return a + b


class LossCell(nn.Cell):
    """Scaled loss of one micro-batch (differentiated) and the forward's named parts
    (models/deepseek/results.py) for logging and the bias update: (loss, {LOSS, LM_SUM, ...})."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model
        self.has_mtp = model.mtp_depth > 0
        self.mtp_factor = model.mtp_factor

    def construct(self, input_ids, labels, position_ids, segment_ids, inv_lm_tokens, inv_mtp_tokens, aux_scale):
        parts = self.model.forward_train(input_ids, labels, position_ids, segment_ids)
        return scaled_loss(parts, inv_lm_tokens, inv_mtp_tokens, aux_scale, self.has_mtp, self.mtp_factor,
                           self.model.index_weight)


def scaled_loss(parts, inv_lm_tokens, inv_mtp_tokens, aux_scale, has_mtp: bool, mtp_factor: float,
                index_weight: float = 0.0):
    """The loss one micro-batch contributes to the global token-mean (graph code; a pipeline's
    last stage uses it too): (loss, parts with LOSS added). The balance loss and the indexers'
    KL (a mean per micro-batch) enter as the mean over the global batch's micro-batches."""
    loss = parts[R.LM_SUM] * inv_lm_tokens + (parts[R.AUX] + index_weight * parts[R.INDEX_KL]) * aux_scale
    if has_mtp:
        loss = loss + mtp_factor * parts[R.MTP_SUM] * inv_mtp_tokens
    parts[R.LOSS] = loss
    return loss, parts


class GradStep(nn.Cell):
    """Forward + backward of one micro-batch -> (parts in results.STEP_PARTS order, grads)."""

    def __init__(self, loss_cell: LossCell, weights: Sequence[Parameter]):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.weights = ms.ParameterTuple(list(weights))
        self.grad_fn = ms.value_and_grad(loss_cell, None, self.weights, has_aux=True)

    def construct(self, input_ids, labels, position_ids, segment_ids, inv_lm_tokens, inv_mtp_tokens, aux_scale):
        (_, parts), grads = self.grad_fn(input_ids, labels, position_ids, segment_ids, inv_lm_tokens,
                                         inv_mtp_tokens, aux_scale)
        return R.step_tuple(parts), grads


class ApplyStep(nn.Cell):
    """Clip, AdamW, router-bias update; `reducer` (data parallel) sums grads and loads over ranks,
    `global_norm` measures the gradient norm of the whole model when parameters are split."""

    def __init__(self, optimizer, router_biases: List[Parameter], bias_rate: float, max_grad_norm: float,
                 reducer=None, global_norm=None, bias_rows: Optional[List[int]] = None, fused_ops=()):
        """`bias_rows`: the row of the stacked expert load each bias follows (default: the i-th;
        V4's hash-routed layers report a load but have no bias). With "grad_clip" in `fused_ops`
        (`model.fused_ops`) the norm and the scaling run as the CPU kernels (ops/cpu/grad_clip.cc)."""
        super().__init__(auto_prefix=False)
        self.sum_squares, self.scale_kernel = choice.operator("grad_clip", fused_ops) or (None, None)
        self.optimizer = optimizer
        self.bias_rows = tuple(bias_rows) if bias_rows is not None else tuple(range(len(router_biases)))
        self.global_norm = global_norm  # parallel runs: the norm of the whole model, same on all ranks
        self.biases = ms.ParameterTuple(router_biases) if router_biases else ()
        self.num_biases = len(router_biases)
        self.bias_rate = bias_rate
        self.max_grad_norm = max_grad_norm
        self.reducer = reducer
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, load, loss, lr):
        if self.reducer is not None:
            grads, load = self.reducer(grads, load)
        if self.global_norm is not None:
            norm = self.global_norm(grads)
        elif self.sum_squares is not None:
            norm = ops.sqrt(self.sum_squares(*grads)).reshape(())
        else:
            norm = ops.sqrt(ops.addn(self.hyper_map(_square_sum, grads)))
        finite = ops.logical_and(ops.isfinite(norm), ops.isfinite(loss))
        coef = ops.ones_like(norm)
        if self.max_grad_norm > 0:
            coef = ops.minimum(self.max_grad_norm / (norm + 1e-6), 1.0)
        if self.scale_kernel is not None:
            grads = self.hyper_map(ops.partial(_scale, self.scale_kernel, finite.astype(ms.float32).reshape(1),
                                               coef.reshape(1)), grads)
        else:
            grads = self.hyper_map(ops.partial(_scale, finite, coef), grads)
        self.optimizer(grads, lr, finite)
        if self.num_biases:  # one HyperMap, not a loop per layer (deep models: call depth)
            self.hyper_map(ops.partial(_move_bias, self.bias_rate, finite, load), self.biases, self.bias_rows)
        return norm, finite


class TrainStep(nn.Cell):
    """One whole optimizer step for one micro-batch per step, in one graph."""

    def __init__(self, grad_step: GradStep, apply_step: ApplyStep):
        super().__init__(auto_prefix=False)
        self.grad_step = grad_step
        self.apply_step = apply_step

    def construct(self, input_ids, labels, position_ids, segment_ids, inv_lm_tokens, inv_mtp_tokens, aux_scale, lr):
        parts, grads = self.grad_step(input_ids, labels, position_ids, segment_ids, inv_lm_tokens,
                                      inv_mtp_tokens, aux_scale)
        norm, finite = self.apply_step(grads, parts[R.AT[R.LOAD]], parts[R.AT[R.LOSS]], lr)
        return parts, norm, finite


class AccumulateGrads(nn.Cell):
    """Elementwise sum of two gradient tuples (gradient accumulation over micro-batches)."""

    def __init__(self):
        super().__init__()
        self.hyper_map = ops.HyperMap()

    def construct(self, a, b):
        return self.hyper_map(_add, a, b)


def router_bias_rows(model) -> List[int]:
    """For each of `router_bias_parameters`, its row in the stacked expert load of the whole
    model (a pipeline stage holds some layers only; the config says which layers are MoE)."""
    rows, row = [], 0
    for i, layer in enumerate(model.model.layers):
        if model.config.is_moe_layer(i):
            if getattr(layer, "is_moe", False) and layer.mlp.gate.has_bias:
                rows.append(row)
            row += 1
    return rows


def router_bias_parameters(model) -> List[Parameter]:
    """Correction biases in the order `forward_train` stacks expert loads (main layers, then MTP)."""
    out = []
    for layer in model.model.layers:
        if getattr(layer, "is_moe", False) and layer.mlp.gate.has_bias:
            out.append(layer.mlp.gate.e_score_correction_bias)
    return out
