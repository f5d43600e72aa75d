"""AdamW with `torch.optim.AdamW` semantics, as one fused in-place update per parameter.

torch's step is  p <- p*(1 - lr*wd) - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)  with bc_i = 1 - beta_i^t.
MindSpore's fused `AdamWeightDecay` kernel (CPU and Ascend) has no bias correction:
    p <- p - lr' * (m / (sqrt(v) + eps') + wd' * p)
and the two are the same update with  lr' = lr*sqrt(bc2)/bc1,  eps' = eps*sqrt(bc2),
wd' = wd*bc1/sqrt(bc2)  (multiply torch's denominator through by sqrt(bc2)), computed per step
as scalars. Why the kernel and not the formula written out: written out, every elementwise
temporary of every parameter was alive at once in the compiled graph (~114 bytes per parameter
on CPU, 5.8 GB for a 51M-parameter model, and +26 s of compilation); the kernel updates p, m
and v in place and needs none (measured in tools/bench/README.md).

A skipped step (non-finite loss or gradient, `apply` False) must change nothing: lr' = 0 and
beta1 = beta2 = 1 make the kernel an identity, provided the gradient it reads is finite, which
ApplyStep guarantees by zeroing the gradients of a skipped step. Norms, biases and the router
correction bias are not decayed.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

_adamw = ops.MultitypeFuncGraph("adamw")


@_adamw.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                 "Tensor", "Tensor")
def _adamw_update(kernel, lr, beta1, beta2, eps, decay_scale, decay, param, m, v, grad):
    return kernel(param, m, v, lr, beta1, beta2, eps, decay * decay_scale, grad.astype(param.dtype))[0]


def no_decay(name: str) -> bool:
    """Norm weights, biases and the router correction bias are excluded from weight decay."""
    return "norm" in name or name.endswith(".bias") or name.endswith("e_score_correction_bias")


class AdamW(nn.Cell):
    zero_axes: dict = {}   # parameters whose state holds some rows only (ZeRO, parallel/zero.py): none

    def __init__(self, params: Iterable[Parameter], betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, moment_shapes: Optional[Sequence[Tuple[int, ...]]] = None):
        """`moment_shapes`: the moments' shape per parameter when they hold part of it (ZeRO,
        parallel/zero.py); the parameter's own shape by default."""
        super().__init__()
        self.params = ParameterTuple(list(params))
        self.exp_avg, self.exp_avg_sq = self.make_moments(moment_shapes)
        self.step = Parameter(Tensor(0.0, ms.float32), name="optimizer.step", requires_grad=False)
        self.decay = tuple(Tensor(0.0 if no_decay(p.name) else weight_decay, ms.float32) for p in self.params)
        self.beta1 = Tensor(betas[0], ms.float32)
        self.beta2 = Tensor(betas[1], ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.one = Tensor(1.0, ms.float32)
        self.zero = Tensor(0.0, ms.float32)
        self.kernel = ops.AdamWeightDecay()
        self.hyper_map = ops.HyperMap()

    def make_moments(self, shapes):
        """(exp_avg, exp_avg_sq): one zero tensor per parameter, named optimizer.exp_avg.<name>."""
        if shapes is None:
            return (self.params.clone(prefix="optimizer.exp_avg", init="zeros"),
                    self.params.clone(prefix="optimizer.exp_avg_sq", init="zeros"))
        return tuple(ParameterTuple([Parameter(Tensor(np.zeros(shape, np.float32)), name=f"{prefix}.{p.name}",
                                               requires_grad=False) for p, shape in zip(self.params, shapes)])
                     for prefix in ("optimizer.exp_avg", "optimizer.exp_avg_sq"))

    def state_parameters(self) -> List[Parameter]:
        return [self.step] + list(self.exp_avg) + list(self.exp_avg_sq)

    def coefficients(self, lr, apply):
        """The kernel's scalars of this step: (lr', beta1, beta2, eps', wd scale); an identity
        update when `apply` is False."""
        step = self.step + apply.astype(ms.float32)
        ops.assign(self.step, step)
        t = ops.maximum(step, 1.0)
        bc1 = 1.0 - ops.pow(self.beta1, t)
        sqrt_bc2 = ops.sqrt(1.0 - ops.pow(self.beta2, t))
        applied = ops.broadcast_to(apply, ())
        lr_k = ops.select(applied, lr * sqrt_bc2 / bc1, self.zero)
        beta1 = ops.select(applied, self.beta1, self.one)
        beta2 = ops.select(applied, self.beta2, self.one)
        return lr_k, beta1, beta2, self.eps * sqrt_bc2, bc1 / sqrt_bc2

    def construct(self, grads, lr, apply):
        # the per-parameter decay is scaled inside the mapped function: a Python tuple built over
        # every parameter here was unrolled into nested calls, and at 32 layers compilation stopped
        # with "Exceed function call depth limit 1000"; HyperMap maps a tuple without nesting
        lr_k, beta1, beta2, eps, decay_scale = self.coefficients(lr, apply)
        return self.hyper_map(ops.partial(_adamw, self.kernel, lr_k, beta1, beta2, eps, decay_scale),
                              self.decay, self.params, self.exp_avg, self.exp_avg_sq, grads)
