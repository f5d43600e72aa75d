"""Fused operators: one factory per op, used by the model when the op is in `model.fused_ops`.

Each factory returns a cell with exactly the call signature of the composite function it
replaces (constants such as eps or the expert count are accepted and ignored: they are
baked in at construction). The kernel is chosen from the device target when the cell is
built: the AscendC kernel on Ascend (registered with CustomRegOp(...).target("Ascend"),
func_type="aot"), the C++ kernel from ops/cpu on CPU (`lib.so:Func`, func_type="aot"). When
no kernel is available -- CANN absent on Ascend, the CPU library failed to build, or a
compute dtype the CPU kernels do not handle -- the composite implementation is returned,
with one warning. Every kernel has its backward as a kernel, wired in through `bprop`.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Tensor

from . import build, composite
from .signatures import SIGNATURES

log = logging.getLogger(__name__)
_warned = set()


def _fallback(op: str, why: str):
    if op not in _warned:
        log.warning("fused %s unavailable (%s): using the composite implementation", op, why)
        _warned.add(op)


def _target() -> str:
    return ms.get_context("device_target")


def _custom(op: str, func: str, out_shape, out_dtype, bprop=None) -> Optional[ops.Custom]:
    """An aot Custom primitive for `func` of `op` on the current target, or None."""
    target = _target()
    if target == "CPU":
        lib = build.library()
        if lib is None:
            return None
        return ops.Custom(f"{lib}:{func}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot", bprop=bprop)
    if target == "Ascend":
        from .ascend_reg import reg_info
        info = reg_info(op, func)
        if info is None:
            return None
        return ops.Custom(func, out_shape=out_shape, out_dtype=out_dtype, func_type="aot", bprop=bprop,
                          reg_info=info)
    return None


def _names(op: str, key: str):
    target = "ascend" if _target() == "Ascend" else "cpu"
    names = SIGNATURES[op][f"{target}_grad" if key == "grad" else target]
    return names.split("|") if names else []


class _Fused(nn.Cell):
    def __init__(self):
        super().__init__(auto_prefix=False)


# ---------------------------------------------------------------------------------------
class FusedRMSNorm(_Fused):
    def __init__(self, eps: float, fwd, bwd):
        super().__init__()
        self.eps = Tensor([eps], ms.float32)

        def bprop(x, w, e, out, dout):
            dx, dw = bwd(dout[0], x, w, out[1])
            return dx, dw, ops.zeros_like(e)
        self.op = fwd(bprop)

    def construct(self, x, weight, eps):
        return self.op(x, weight, self.eps)[0]


def rms_norm_op(eps: float):
    g = _custom("rms_norm", _names("rms_norm", "grad")[0], lambda dy, x, w, r: (x, w), lambda dy, x, w, r: (x, w))
    if g is None:
        _fallback("rms_norm", "no kernel")
        return composite.rms_norm
    fwd = lambda bprop: _custom("rms_norm", _names("rms_norm", "fwd")[0], lambda x, w, e: (x, x[:-1]),
                                lambda x, w, e: (x, ms.float32), bprop)
    return FusedRMSNorm(eps, fwd, g)


class FusedSwiglu(_Fused):
    def __init__(self, fwd, bwd):
        super().__init__()

        def bprop(gu, out, dout):
            return (bwd(gu, dout),)
        self.op = fwd(bprop)

    def construct(self, gate_up):
        return self.op(gate_up)


def swiglu_op():
    g = _custom("swiglu", _names("swiglu", "grad")[0], lambda gu, dh: gu, lambda gu, dh: gu)
    if g is None:
        _fallback("swiglu", "no kernel")
        return composite.swiglu
    fwd = lambda bprop: _custom("swiglu", _names("swiglu", "fwd")[0], lambda gu: gu[:-1] + [gu[-1] // 2],
                                lambda gu: gu, bprop)
    return FusedSwiglu(fwd, g)


class FusedSinkhorn(_Fused):
    def __init__(self, iters: int, eps: float, fwd, bwd):
        super().__init__()
        self.params = Tensor([float(iters), eps], ms.float32)

        def bprop(comb, p, out, dout):
            return bwd(comb, dout, p), ops.zeros_like(p)
        self.op = fwd(bprop)

    def construct(self, comb, iters, eps):
        return self.op(comb, self.params)


# The AscendC backward keeps every step's matrices in UB, its tiles sized for this many iterations
# (ops/ascendc/common/sinkhorn_limits.h: kSinkhornMaxIters; tools/check_ops.py checks they agree).
ASCEND_SINKHORN_MAX_ITERS = 32


def hc_sinkhorn_op(iters: int, eps: float):
    """V4 mHC's Sinkhorn; the backward recomputes the forward from comb (ops/cpu/sinkhorn.cc; on
    Ascend ops/ascendc/hc_sinkhorn, for at most ASCEND_SINKHORN_MAX_ITERS iterations)."""
    if _target() == "Ascend" and iters > ASCEND_SINKHORN_MAX_ITERS:
        _fallback("hc_sinkhorn", f"hc_sinkhorn_iters={iters}: the AscendC kernel sizes its tiles for at most "
                                 f"{ASCEND_SINKHORN_MAX_ITERS}")
        return composite.sinkhorn
    g = _custom("hc_sinkhorn", _names("hc_sinkhorn", "grad")[0], lambda c, d, p: c, lambda c, d, p: c)
    if g is None:
        _fallback("hc_sinkhorn", "no kernel")
        return composite.sinkhorn
    fwd = lambda bprop: _custom("hc_sinkhorn", _names("hc_sinkhorn", "fwd")[0], lambda c, p: c, lambda c, p: c, bprop)
    return FusedSinkhorn(iters, eps, fwd, g)


class FusedRope(_Fused):
    def __init__(self, interleave: bool, fwd, bwd):
        super().__init__()
        self.mode = Tensor([1.0 if interleave else 0.0], ms.float32)

        def bprop(x, c, s, m, out, dout):
            return bwd(dout, c, s, m), ops.zeros_like(c), ops.zeros_like(s), ops.zeros_like(m)
        self.op = fwd(bprop)

    def construct(self, x, cos, sin, interleave):
        return self.op(x, cos, sin, self.mode)


def rope_op(interleave: bool):
    g = _custom("rope", _names("rope", "grad")[0], lambda dy, c, s, m: dy, lambda dy, c, s, m: dy)
    if g is None:
        _fallback("rope", "no kernel")
        return composite.apply_rope
    fwd = lambda bprop: _custom("rope", _names("rope", "fwd")[0], lambda x, c, s, m: x, lambda x, c, s, m: x, bprop)
    return FusedRope(interleave, fwd, g)


# ---------------------------------------------------------------------------------------
class FusedMoePermute(_Fused):
    """Expert-sorted rows without padding (block 1): same outputs as composite.moe_permute."""

    def __init__(self, fwd, bwd):
        super().__init__()

        def bprop(x, idx, out, dout):
            return bwd(dout[0], out[1], idx), ops.zeros_like(idx)
        self.op = fwd(bprop)

    def construct(self, x, topk_idx, num_experts, block):
        return self.op(x, topk_idx)


def moe_permute_op(num_experts: int):
    g = _custom("moe_permute", _names("moe_permute", "grad")[0], lambda d, s, i: [i[0], d[1]],
                lambda d, s, i: d)
    if g is None:
        _fallback("moe_permute", "no kernel")
        return None
    shape = lambda x, i: ([x[0] * i[1], x[1]], [x[0] * i[1]], [x[0] * i[1]], [num_experts])
    dtype = lambda x, i: (x, ms.int32, ms.int32, ms.int32)
    return FusedMoePermute(lambda bprop: _custom("moe_permute", _names("moe_permute", "fwd")[0], shape, dtype, bprop), g)


class FusedMoeUnpermute(_Fused):
    def __init__(self, fwd, bwd):
        super().__init__()

        def bprop(y, slot, w, out, dout):
            dy, dw = bwd(dout, y, slot, w)
            return dy, ops.zeros_like(slot), dw
        self.op = fwd(bprop)

    def construct(self, y_perm, slot_of_row, topk_weight, num_tokens):
        return self.op(y_perm, slot_of_row, topk_weight.astype(ms.float32))


def moe_unpermute_op():
    g = _custom("moe_unpermute", _names("moe_unpermute", "grad")[0], lambda d, y, s, w: (y, w),
                lambda d, y, s, w: (y, w))
    if g is None:
        _fallback("moe_unpermute", "no kernel")
        return None
    fwd = lambda bprop: _custom("moe_unpermute", _names("moe_unpermute", "fwd")[0],
                                lambda y, s, w: [w[0], y[1]], lambda y, s, w: y, bprop)
    return FusedMoeUnpermute(fwd, g)


class FusedGroupedMatmul(_Fused):
    """`grad` is either one kernel (dy, x, w, block_expert) -> (dx, dw) (Ascend) or a pair of
    kernels for dx and dw (CPU, where each is one oneDNN GEMM per group)."""

    def __init__(self, fwd, grad):
        super().__init__()
        if isinstance(grad, tuple):
            grad_x, grad_w = grad

            def bprop(x, w, be, out, dout):
                return grad_x(dout, w, be), grad_w(dout, x, be, w), ops.zeros_like(be)
        else:
            def bprop(x, w, be, out, dout):
                dx, dw = grad(dout, x, w, be)
                return dx, dw, ops.zeros_like(be)
        self.op = fwd(bprop)

    def construct(self, x_perm, weight, block_expert, block):
        return self.op(x_perm, weight, block_expert)


def grouped_matmul_op():
    names = _names("grouped_matmul", "grad")
    if len(names) == 1:  # Ascend: one backward kernel
        grad = _custom("grouped_matmul", names[0], lambda d, x, w, be: (x, w), lambda d, x, w, be: (x, w))
        ready = grad is not None
    else:
        grad = (_custom("grouped_matmul", names[0], lambda d, w, be: [d[0], w[2]], lambda d, w, be: d),
                _custom("grouped_matmul", names[1], lambda d, x, be, w: w, lambda d, x, be, w: w))
        ready = all(g is not None for g in grad)
    if not ready:
        _fallback("grouped_matmul", "no kernel")
        return composite.grouped_matmul
    fwd = lambda bprop: _custom("grouped_matmul", _names("grouped_matmul", "fwd")[0],
                                lambda x, w, be: [x[0], w[1]], lambda x, w, be: x, bprop)
    return FusedGroupedMatmul(fwd, grad)


# ---------------------------------------------------------------------------------------
class FusedRouterTopk(_Fused):
    def __init__(self, params: np.ndarray, num_experts: int, fwd, bwd):
        super().__init__()
        self.params = Tensor(params, ms.float32)
        self.zero_bias = Tensor(np.zeros(num_experts, np.float32))

        def bprop(logits, bias, prm, out, dout):
            dlogits, dbias = bwd(logits, out[2], out[1], dout[0], dout[2], prm)
            return dlogits, dbias, ops.zeros_like(prm)
        self.op = fwd(bprop)

    def construct(self, logits, bias, top_k, n_group, topk_group, scoring, method, norm, scale):
        b = self.zero_bias if bias is None else bias
        return self.op(logits, b, self.params)


def router_topk_op(top_k, n_group, topk_group, scoring, method, norm_topk_prob, routed_scaling_factor,
                   num_experts: int, has_bias: bool):
    g = _custom("router_topk", _names("router_topk", "grad")[0],
                lambda l, s, i, dw, ds, p: (l, [l[1]]), lambda l, s, i, dw, ds, p: (l, l))
    if g is None:
        _fallback("router_topk", "no kernel")
        return composite.router_topk
    methods = {"greedy": 0, "group_limited_greedy": 1, "noaux_tc": 2}
    params = np.array([top_k, n_group, topk_group, 1.0 if scoring == "sigmoid" else 0.0, methods[method],
                       1.0 if norm_topk_prob else 0.0, routed_scaling_factor, 1.0 if has_bias else 0.0], np.float32)
    fwd = lambda bprop: _custom("router_topk", _names("router_topk", "fwd")[0],
                                lambda l, b, p: ([l[0], top_k], [l[0], top_k], l),
                                lambda l, b, p: (ms.float32, ms.int32, ms.float32), bprop)
    return FusedRouterTopk(params, num_experts, fwd, g)


# ---------------------------------------------------------------------------------------
class FusedLmHeadNll(_Fused):
    """(sum of -log p(target), count) of h [T, D] through the head w [V, D]: the composite
    `token_nll(h w^T, targets)` as one kernel that never holds the [T, V] logits. The kernel
    returns the loss's own gradients with it (the loss is a scalar), so the backward is two
    scalings. Targets outside [0, V) (IGNORE_INDEX) count nothing."""

    def __init__(self, fwd):
        super().__init__()

        def bprop(h, w, target, out, dout):
            return dout[0] * out[1], dout[0] * out[2], ops.zeros_like(target)
        self.op = fwd(bprop)

    def construct(self, h, weight, targets):
        t = targets.reshape(-1)
        loss = self.op(h.reshape(t.shape[0], -1), weight, t)[0]
        valid = ops.logical_and(t >= 0, t < weight.shape[0])
        return loss.reshape(()), valid.astype(ms.float32).sum()


def lm_head_nll_op(dtype=ms.float32):
    """None where the composite head + token_nll must run (Ascend, other dtypes, no kernel)."""
    if _target() != "CPU" or dtype != ms.float32:
        return None
    fwd = lambda bprop: _custom("lm_head_nll", _names("lm_head_nll", "fwd")[0],
                                lambda h, w, t: ([1], h, w), lambda h, w, t: (ms.float32, ms.float32, ms.float32),
                                bprop)
    if build.library() is None:  # what _custom checks on CPU: the op is then built once, with its bprop
        _fallback("lm_head_nll", "no kernel")
        return None
    return FusedLmHeadNll(fwd)


# ---------------------------------------------------------------------------------------
def _cpu_only(op: str, out_shape, out_dtype) -> Optional[ops.Custom]:
    """The CPU kernel of an op that has no kernel of ours elsewhere (its `ascend_note` says what
    runs there): None off CPU, or, with one warning, when the library is missing."""
    if _target() != "CPU":
        return None
    kernel = _custom(op, _names(op, "fwd")[0], out_shape, out_dtype)
    if kernel is None:
        _fallback(op, "no kernel")
    return kernel


def grad_sum_squares_op():
    """sum of g*g over every gradient in one call: op(*grads) -> [1] float32."""
    return _cpu_only("grad_sum_squares", lambda *shapes: [1], lambda *dtypes: ms.float32)


def grad_scale_op():
    """op(g, coef [1], finite [1] float32) -> g * coef, or zeros when finite is 0."""
    return _cpu_only("grad_scale", lambda g, c, f: g, lambda g, c, f: g)


# ---------------------------------------------------------------------------------------
def fp8_block_dequant_op():
    """In-graph FP8 dequant: (codes uint8 [O, I], scale [ceil(O/128), ceil(I/128)]) -> float32 [O, I]."""
    op = _custom("fp8_block_dequant", _names("fp8_block_dequant", "fwd")[0], lambda c, s: c,
                 lambda c, s: ms.float32)
    if op is None:
        _fallback("fp8_block_dequant", "no kernel")
    return op
