"""The fused faces of MLA's attention core: dense (`mla_attention`: our CPU kernel, CANN's
FlashAttentionScore on Ascend) and over each query's top-k keys (`sparse_mla_attention`, V3.2:
our CPU kernel; on Ascend its composite until an AscendC kernel exists), and the Lightning
Indexer's choice of those keys (`index_topk`: CPU kernel, composite on Ascend). Each has the call signature of its composite
(composite.MlaAttentionCore, composite.SparseMlaAttentionCore) and falls back to it, with one
warning, where no kernel can run. Its own module because kernels.py holds the rest and both
attention faces share the layouts (ops/cpu/mla_layout.h)."""
from __future__ import annotations

import mindspore as ms
from mindspore import ops, Tensor

from . import composite
from .kernels import _Fused, _custom, _fallback, _names, _target


class FusedMlaAttention(_Fused):
    """composite.MlaAttentionCore as one CPU kernel and its backward (no [B, H, Sq, Sk] tensor is
    kept: the backward recomputes the probabilities from each row's saved max and log-sum)."""

    def __init__(self, scale: float, fwd, bwd):
        super().__init__()
        self.scale = Tensor([scale], ms.float32)

        def bprop(q, q_pe, kv, k_pe, bias, sc, out, dout):
            dq, dq_pe, dkv, dk_pe = bwd(dout[0], q, q_pe, kv, k_pe, bias, sc, out[0], out[1])
            return dq, dq_pe, dkv, dk_pe, ops.zeros_like(bias), ops.zeros_like(sc)
        self.op = fwd(bprop)

    def construct(self, q, q_pe, kv, k_pe, bias, scale):
        return self.op(q, q_pe, kv, k_pe, bias, self.scale)[0]


class AscendMlaAttention(_Fused):
    """composite.MlaAttentionCore through CANN's FlashAttentionScore (float16/bfloat16 only): the
    shared rope key is broadcast to every head and v zero-padded to the q/k head size, as the
    op wants one head size. Written and statically checked here; not run without Ascend."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def construct(self, q, q_pe, kv, k_pe, bias, scale):
        b, sq, h, dq = q.shape
        dr = q_pe.shape[-1]
        dn, sk = dq - dr, kv.shape[1]
        dv = kv.shape[-1] - dn
        query = ops.concat((q[..., :dn], q_pe.transpose(0, 2, 1, 3)), -1)
        key = ops.concat((kv[..., :dn], ops.broadcast_to(k_pe.expand_dims(2), (b, sk, h, dr))), -1)
        value = ops.pad(kv[..., dn:], (0, dq - dv))
        masked = ops.broadcast_to(bias < -1e29, (b, 1, sq, sk)).astype(ms.uint8)  # the op's mask: 1 = drop
        out = ops.flash_attention_score(query, key, value, h, attn_mask=masked, scalar_value=self.scale,
                                        input_layout="BSND")
        return out[..., :dv]


def mla_attention_op(scale: float, dtype=ms.float32):
    if _target() == "Ascend":
        if dtype in (ms.float16, ms.bfloat16):
            return AscendMlaAttention(scale)
        _fallback("mla_attention", "FlashAttentionScore takes float16/bfloat16 only")
        return composite.MlaAttentionCore()
    if dtype != ms.float32:
        _fallback("mla_attention", "the CPU kernel is float32 only")
        return composite.MlaAttentionCore()
    g = _custom("mla_attention", _names("mla_attention", "grad")[0],
                lambda do, q, qp, kv, kp, b, s, o, l: (q, qp, kv, kp), lambda do, q, qp, kv, kp, b, s, o, l: (q, q, q, q))
    if g is None:
        _fallback("mla_attention", "no kernel")
        return composite.MlaAttentionCore()
    fwd = lambda bprop: _custom("mla_attention", _names("mla_attention", "fwd")[0],
                                lambda q, qp, kv, kp, b, s: ([q[0], q[1], q[2], kv[3] - (q[3] - qp[3])], [q[0], q[2], q[1], 2]),
                                lambda q, qp, kv, kp, b, s: (q, ms.float32), bprop)
    return FusedMlaAttention(scale, fwd, g)


class FusedSparseMlaAttention(_Fused):
    """composite.SparseMlaAttentionCore as one kernel and its backward (ops/cpu/sparse_attention.cc;
    on Ascend ops/ascendc/sparse_mla_attention): each query gathers its K chosen keys, and the
    backward scatters into them; no [Sq, Sk] tensor is built. The backward recomputes the probabilities from
    each row's saved max and log-sum."""

    def __init__(self, scale: float, fwd, bwd):
        super().__init__()
        self.scale = Tensor([scale], ms.float32)

        def bprop(q, q_pe, kv, k_pe, index, bias, sc, out, dout):
            dq, dq_pe, dkv, dk_pe = bwd(dout[0], q, q_pe, kv, k_pe, index, bias, sc, out[0], out[1])
            return dq, dq_pe, dkv, dk_pe, ops.zeros_like(index), ops.zeros_like(bias), ops.zeros_like(sc)
        self.op = fwd(bprop)

    def construct(self, q, q_pe, kv, k_pe, index, bias, scale):
        return self.op(q, q_pe, kv, k_pe, index, bias, self.scale)[0]


def sparse_mla_attention_op(scale: float, dtype=ms.float32):
    """The CPU kernel (float32), or on Ascend the AscendC kernel (float16/bfloat16/float32, from the
    mfds OPP package); otherwise the masked dense composite."""
    if _target() == "CPU" and dtype != ms.float32:
        _fallback("sparse_mla_attention", "the CPU kernel is float32 only")
        return composite.SparseMlaAttentionCore()
    g = _custom("sparse_mla_attention", _names("sparse_mla_attention", "grad")[0],
                lambda do, q, qp, kv, kp, i, b, s, o, l: (q, qp, kv, kp),
                lambda do, q, qp, kv, kp, i, b, s, o, l: (q, q, q, q))
    if g is None:
        _fallback("sparse_mla_attention", "no kernel")
        return composite.SparseMlaAttentionCore()
    fwd = lambda bprop: _custom("sparse_mla_attention", _names("sparse_mla_attention", "fwd")[0],
                                lambda q, qp, kv, kp, i, b, s: ([q[0], q[1], q[2], kv[3] - (q[3] - qp[3])],
                                                                [q[0], q[2], q[1], 2]),
                                lambda q, qp, kv, kp, i, b, s: (q, ms.float32), bprop)
    return FusedSparseMlaAttention(scale, fwd, g)


def _index_topk_bprop(q, keys, w, mask, scale, out, dout):
    """No gradient: the outputs are indices and the scores they were picked by (see FusedIndexTopk)."""
    return ops.zeros_like(q), ops.zeros_like(keys), ops.zeros_like(w), ops.zeros_like(mask), ops.zeros_like(scale)


class FusedIndexTopk(_Fused):
    """composite.index_topk as one CPU kernel (ops/cpu/index_topk.cc): the scores are made and
    ranked block by block, no [B, Hi, S, T] or [B, S, T] tensor exists. Its outputs are indices
    and the scores they were picked by, which the model only compares with -inf: no gradient
    flows (the indexer's inputs are detached and its parameters frozen where it runs)."""

    def __init__(self, scale: float, op):
        super().__init__()
        self.scale = Tensor([scale], ms.float32)
        self.op = op

    def construct(self, q, keys, w, mask, scale, k):
        return self.op(q, keys, w, mask, self.scale)


def index_topk_op(topk: int, scale: float):
    """The kernel keeps min(topk, T) keys per query (T: the keys of the call)."""
    if _target() != "CPU":  # no AscendC kernel yet: signatures.py's ascend_note
        return composite.index_topk
    shape = lambda q, keys, w, m, s: ([q[0], q[1], min(topk, keys[1])], [q[0], q[1], min(topk, keys[1])])
    op = _custom("index_topk", _names("index_topk", "fwd")[0], shape,
                 lambda q, keys, w, m, s: (ms.float32, ms.int32), _index_topk_bprop)
    if op is None:
        _fallback("index_topk", "no kernel")
        return composite.index_topk
    return FusedIndexTopk(scale, op)
