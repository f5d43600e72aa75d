"""The one place where a block's operator is chosen: the fused kernel or the composite.

    operator(name, fused_ops, **consts) -> the callable the block keeps

`name` is one of `model.fused_ops`' names (config_common.FUSED_OPS names the same set: the
config is validated without MindSpore, so the names live there too; a test keeps them equal); `consts` are the values
the kernel bakes in at construction (eps, the expert count, ...). The answer is the kernel
cell when `name` is in `fused_ops` and the kernel can compute this case (`supports`), else
the composite; `ops/kernels.py` itself falls back to the composite (one warning) when this
device has no kernel. Every block asks here, so what "fused" means is decided once.
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Dict, NamedTuple

from . import composite


def _kernels():
    from . import kernels  # MindSpore Custom primitives: built only when a kernel is asked for
    return kernels


def _attention_kernels():
    from . import attention_kernels  # imports kernels: built only when a kernel is asked for
    return attention_kernels


def _always(**_consts) -> bool:
    return True


class OpChoice(NamedTuple):
    composite: Callable[..., Any]   # consts -> what runs without the kernel
    kernel: Callable[..., Any]      # consts -> the kernel (or, when absent, the composite)
    supports: Callable[..., bool] = _always  # consts -> can the kernel compute this case?


def _moe_permute_kernels(num_experts: int):
    """(permute, unpermute, block): the kernels keep expert groups contiguous without padding,
    so the block is 1; both kernels or neither."""
    k = _kernels()
    permute, unpermute = k.moe_permute_op(num_experts), k.moe_unpermute_op()
    if permute is None or unpermute is None:
        return None
    return permute, unpermute, 1


def _grad_clip_kernels():
    k = _kernels()
    return k.grad_sum_squares_op(), k.grad_scale_op()


OPS: Dict[str, OpChoice] = {
    "rms_norm": OpChoice(lambda eps: composite.rms_norm, lambda eps: _kernels().rms_norm_op(eps)),
    "swiglu": OpChoice(lambda: composite.swiglu, lambda: _kernels().swiglu_op()),
    "rope": OpChoice(lambda interleave: composite.apply_rope, lambda interleave: _kernels().rope_op(interleave)),
    # None: the caller keeps its padded composite pair and block size
    "moe_permute": OpChoice(lambda num_experts: None, _moe_permute_kernels),
    "grouped_matmul": OpChoice(lambda: composite.GroupedMatmul(), lambda: _kernels().grouped_matmul_op()),
    # the kernel knows V2/V3 scoring (softmax, sigmoid), not V4's sqrt-softplus
    "router_topk": OpChoice(lambda **a: composite.router_topk, lambda **a: _kernels().router_topk_op(**a),
                            lambda scoring, **_: scoring != "sqrtsoftplus"),
    "mla_attention": OpChoice(lambda scale, dtype: composite.MlaAttentionCore(),
                              lambda scale, dtype: _attention_kernels().mla_attention_op(scale, dtype)),
    # V3.2's attention over the indexer's top-k keys; the composite is the masked dense one
    "sparse_mla_attention": OpChoice(lambda scale, dtype: composite.SparseMlaAttentionCore(),
                                     lambda scale, dtype: _attention_kernels().sparse_mla_attention_op(scale, dtype)),
    # None: the head's logits and token_nll run instead
    "lm_head_nll": OpChoice(lambda dtype: None, lambda dtype: _kernels().lm_head_nll_op(dtype)),
    # None: the composite norm and scaling in train/step.py
    "grad_clip": OpChoice(lambda: None, _grad_clip_kernels),
    # V4 mHC's Sinkhorn (hyper_connection.py)
    "hc_sinkhorn": OpChoice(lambda iters, eps: composite.sinkhorn,
                            lambda iters, eps: _kernels().hc_sinkhorn_op(iters, eps)),
    # V3.2's frozen Lightning Indexer (indexer.py): its scores and top-k in one pass
    "index_topk": OpChoice(lambda topk, scale: composite.index_topk,
                           lambda topk, scale: _attention_kernels().index_topk_op(topk, scale)),
}


def uses_kernel(name: str, fused_ops: Collection[str], **consts) -> bool:
    """Whether a block asking for `name` with `consts` is given the kernel (when it exists)."""
    return name in fused_ops and OPS[name].supports(**consts)


def operator(name: str, fused_ops: Collection[str], **consts):
    choice = OPS[name]
    return choice.kernel(**consts) if uses_kernel(name, fused_ops, **consts) else choice.composite(**consts)
