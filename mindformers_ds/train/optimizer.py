"""AdamW with `torch.optim.AdamW` semantics, as one graph-mode update over all parameters.

MindSpore's `nn.AdamWeightDecay` has no bias correction, and `mint.optim.AdamW` has no CPU
kernel, so this is written out: decoupled decay p *= 1 - lr*wd, then
p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). Norms, biases and the router
correction bias are not decayed. The update is skipped inside the graph (every state
kept as it was) when `apply` is False, which is how a NaN/Inf step is dropped.
"""
from __future__ import annotations

from typing import Iterable, List

import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

_adamw = ops.MultitypeFuncGraph("adamw")


@_adamw.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                 "Tensor", "Tensor", "Tensor", "Tensor")
def _adamw_update(lr, beta1, beta2, eps, bc1, bc2, apply, decay, param, m, v, grad):
    g = grad.astype(ms.float32)
    p = param.astype(ms.float32)
    m_new = beta1 * m + (1.0 - beta1) * g
    v_new = beta2 * v + (1.0 - beta2) * g * g
    p_new = p * (1.0 - lr * decay)
    p_new = p_new - (lr / bc1) * m_new / (ops.sqrt(v_new) / ops.sqrt(bc2) + eps)
    ops.assign(m, ops.select(apply, m_new, m))
    ops.assign(v, ops.select(apply, v_new, v))
    ops.assign(param, ops.select(apply, p_new.astype(param.dtype), param))
    return True


def no_decay(name: str) -> bool:
    """Norm weights, biases and the router correction bias are excluded from weight decay."""
    return "norm" in name or name.endswith(".bias") or name.endswith("e_score_correction_bias")


class AdamW(nn.Cell):
    def __init__(self, params: Iterable[Parameter], betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__()
        self.params = ParameterTuple(list(params))
        self.exp_avg = self.params.clone(prefix="optimizer.exp_avg", init="zeros")
        self.exp_avg_sq = self.params.clone(prefix="optimizer.exp_avg_sq", init="zeros")
        self.step = Parameter(Tensor(0.0, ms.float32), name="optimizer.step", requires_grad=False)
        self.decay = tuple(Tensor(0.0 if no_decay(p.name) else weight_decay, ms.float32) for p in self.params)
        self.beta1 = Tensor(betas[0], ms.float32)
        self.beta2 = Tensor(betas[1], ms.float32)
        self.eps = Tensor(eps, ms.float32)
        self.hyper_map = ops.HyperMap()

    def state_parameters(self) -> List[Parameter]:
        return [self.step] + list(self.exp_avg) + list(self.exp_avg_sq)

    def construct(self, grads, lr, apply):
        step = self.step + apply.astype(ms.float32)
        ops.assign(self.step, step)
        t = ops.maximum(step, 1.0)
        bc1 = 1.0 - ops.pow(self.beta1, t)
        bc2 = 1.0 - ops.pow(self.beta2, t)
        applied = ops.broadcast_to(apply, ())
        return self.hyper_map(ops.partial(_adamw, lr, self.beta1, self.beta2, self.eps, bc1, bc2, applied),
                              self.decay, self.params, self.exp_avg, self.exp_avg_sq, grads)
