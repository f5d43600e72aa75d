"""One table of every custom operator's interface: kernel names per target and the inputs /
outputs (name, dtype). The CPU faces, the Ascend registration (`CustomRegOp`) and the
consistency check (tools/check_ops.py, against ops/ascendc/<op>/<op>.json and op_host) all
read it, so the three cannot drift apart silently.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

IO = List[Tuple[str, str]]

SIGNATURES: Dict[str, Dict] = {
    "rms_norm": dict(cpu="RmsNorm", cpu_grad="RmsNormGrad", ascend="MfdsRmsNorm", ascend_grad="MfdsRmsNormGrad",
                     inputs=[("x", "float"), ("gamma", "float"), ("eps", "float32")],
                     outputs=[("y", "float"), ("rstd", "float32")],
                     grad_inputs=[("dy", "float"), ("x", "float"), ("gamma", "float"), ("rstd", "float32")],
                     grad_outputs=[("dx", "float"), ("dgamma", "float")]),
    "swiglu": dict(cpu="Swiglu", cpu_grad="SwigluGrad", ascend="MfdsSwiglu", ascend_grad="MfdsSwigluGrad",
                   inputs=[("gate_up", "float")], outputs=[("y", "float")],
                   grad_inputs=[("gate_up", "float"), ("dy", "float")], grad_outputs=[("dgate_up", "float")]),
    "rope": dict(cpu="Rope", cpu_grad="RopeGrad", ascend="MfdsRope", ascend_grad="MfdsRopeGrad",
                 inputs=[("x", "float"), ("cos", "float"), ("sin", "float"), ("mode", "float32")],
                 outputs=[("y", "float")],
                 grad_inputs=[("dy", "float"), ("cos", "float"), ("sin", "float"), ("mode", "float32")],
                 grad_outputs=[("dx", "float")]),
    "moe_permute": dict(cpu="MoePermute", cpu_grad="MoePermuteGrad", ascend="MfdsMoePermute",
                        ascend_grad="MfdsMoePermuteGrad",
                        inputs=[("x", "float"), ("expert_idx", "int32")],
                        outputs=[("x_perm", "float"), ("slot", "int32"), ("row_expert", "int32"), ("counts", "int32")],
                        grad_inputs=[("dx_perm", "float"), ("slot", "int32"), ("expert_idx", "int32")],
                        grad_outputs=[("dx", "float")]),
    "moe_unpermute": dict(cpu="MoeUnpermute", cpu_grad="MoeUnpermuteGrad", ascend="MfdsMoeUnpermute",
                          ascend_grad="MfdsMoeUnpermuteGrad",
                          inputs=[("y_perm", "float"), ("slot", "int32"), ("weight", "float32")],
                          outputs=[("out", "float")],
                          grad_inputs=[("dout", "float"), ("y_perm", "float"), ("slot", "int32"), ("weight", "float32")],
                          grad_outputs=[("dy_perm", "float"), ("dweight", "float32")]),
    "grouped_matmul": dict(cpu="GroupedMatmul", cpu_grad="GroupedMatmulGradX|GroupedMatmulGradW",
                           ascend="MfdsGroupedMatmul", ascend_grad="MfdsGroupedMatmulGrad",
                           inputs=[("x", "float"), ("weight", "float"), ("block_expert", "int32")],
                           outputs=[("y", "float")],
                           grad_inputs=[("dy", "float"), ("x", "float"), ("weight", "float"), ("block_expert", "int32")],
                           grad_outputs=[("dx", "float"), ("dweight", "float")],
                           # the CPU backward is two kernels, one oneDNN GEMM per group each
                           cpu_grad_io={"GroupedMatmulGradX": ([("dy", "float"), ("weight", "float"),
                                                                ("block_expert", "int32")], [("dx", "float")]),
                                        "GroupedMatmulGradW": ([("dy", "float"), ("x", "float"),
                                                                ("block_expert", "int32"), ("weight", "float")],
                                                               [("dweight", "float")])}),
    "router_topk": dict(cpu="RouterTopk", cpu_grad="RouterTopkGrad", ascend="MfdsRouterTopk",
                        ascend_grad="MfdsRouterTopkGrad",
                        inputs=[("logits", "float32"), ("bias", "float32"), ("params", "float32")],
                        outputs=[("weights", "float32"), ("indices", "int32"), ("scores", "float32")],
                        grad_inputs=[("logits", "float32"), ("scores", "float32"), ("indices", "int32"),
                                     ("dweights", "float32"), ("dscores", "float32"), ("params", "float32")],
                        grad_outputs=[("dlogits", "float32"), ("dbias", "float32")]),
    # On Ascend the fused attention is CANN's own FlashAttentionScore (MindSpore's
    # ops.flash_attention_score), not an AscendC kernel of ours: `ascend_builtin` names it.
    "mla_attention": dict(cpu="MlaAttention", cpu_grad="MlaAttentionGrad", ascend=None, ascend_grad=None,
                          ascend_builtin="flash_attention_score",
                          inputs=[("q", "float"), ("q_pe", "float"), ("kv", "float"), ("k_pe", "float"),
                                  ("bias", "float32"), ("scale", "float32")],
                          outputs=[("out", "float"), ("stats", "float32")],
                          grad_inputs=[("dout", "float"), ("q", "float"), ("q_pe", "float"), ("kv", "float"),
                                       ("k_pe", "float"), ("bias", "float32"), ("scale", "float32"),
                                       ("out", "float"), ("stats", "float32")],
                          grad_outputs=[("dq", "float"), ("dq_pe", "float"), ("dkv", "float"), ("dk_pe", "float")]),
    # V3.2's attention over each query's top-k keys (index [B, Sq, K], their additive bias [B, Sq, K]):
    # cost O(Sq * K), on CPU and in AscendC (ops/ascendc/sparse_mla_attention: vector unit, online softmax).
    "sparse_mla_attention": dict(cpu="SparseMlaAttention", cpu_grad="SparseMlaAttentionGrad",
                                 ascend="MfdsSparseMlaAttention", ascend_grad="MfdsSparseMlaAttentionGrad",
                                 inputs=[("q", "float"), ("q_pe", "float"), ("kv", "float"), ("k_pe", "float"),
                                         ("index", "int32"), ("bias", "float32"), ("scale", "float32")],
                                 outputs=[("out", "float"), ("stats", "float32")],
                                 grad_inputs=[("dout", "float"), ("q", "float"), ("q_pe", "float"), ("kv", "float"),
                                              ("k_pe", "float"), ("index", "int32"), ("bias", "float32"),
                                              ("scale", "float32"), ("out", "float"), ("stats", "float32")],
                                 grad_outputs=[("dq", "float"), ("dq_pe", "float"), ("dkv", "float"),
                                               ("dk_pe", "float")]),
    # CPU only: on Ascend the head and LogSoftmax stay composite (CANN fuses those itself).
    "lm_head_nll": dict(cpu="LmHeadNll", cpu_grad=None, ascend=None, ascend_grad=None,
                        ascend_note="composite MatMul + LogSoftmax on Ascend",
                        inputs=[("h", "float32"), ("weight", "float32"), ("target", "int32")],
                        outputs=[("loss", "float32"), ("dh", "float32"), ("dweight", "float32")],
                        grad_inputs=[], grad_outputs=[]),
    # The optimizer step's clip by global norm (CPU only: memory-bound passes that CANN's own
    # ReduceSum/Mul already run at bandwidth on Ascend). `variadic`: the one input repeats, one
    # tensor per gradient, so the kernel checks nparam >= 2 instead of a fixed count.
    "grad_sum_squares": dict(cpu="GradSumSquares", cpu_grad=None, ascend=None, ascend_grad=None, variadic=True,
                             ascend_note="composite per-gradient (g * g).sum() on Ascend",
                             inputs=[("grads", "float32")], outputs=[("sum_squares", "float32")],
                             grad_inputs=[], grad_outputs=[]),
    "grad_scale": dict(cpu="GradScale", cpu_grad=None, ascend=None, ascend_grad=None,
                       ascend_note="composite Mul + Select on Ascend",
                       inputs=[("grad", "float32"), ("coef", "float32"), ("finite", "float32")],
                       outputs=[("out", "float32")], grad_inputs=[], grad_outputs=[]),
    # V4's mHC Sinkhorn over [R, n, n] (params: iters, eps); on Ascend the matrices run lane-major
    # on the vector unit (ops/ascendc/hc_sinkhorn), up to ops/kernels.py's ASCEND_SINKHORN_MAX_ITERS.
    "hc_sinkhorn": dict(cpu="HcSinkhorn", cpu_grad="HcSinkhornGrad", ascend="MfdsHcSinkhorn",
                        ascend_grad="MfdsHcSinkhornGrad",
                        inputs=[("comb", "float32"), ("params", "float32")], outputs=[("out", "float32")],
                        grad_inputs=[("comb", "float32"), ("dout", "float32"), ("params", "float32")],
                        grad_outputs=[("dcomb", "float32")]),
    # V3.2's Lightning Indexer (frozen): scores and top-k in one pass, no [B, Hi, S, T] tensor. CPU only
    # for now; outputs are indices and their scores, which nothing differentiates (no backward).
    "index_topk": dict(cpu="IndexTopk", cpu_grad=None, ascend=None, ascend_grad=None,
                       ascend_note="the composite scores (BatchMatMul, relu, head sum) and TopK on Ascend",
                       inputs=[("q", "float32"), ("keys", "float32"), ("w", "float32"), ("mask", "bool"),
                               ("scale", "float32")],
                       outputs=[("top", "float32"), ("chosen", "int32")], grad_inputs=[], grad_outputs=[]),
    "fp8_block_dequant": dict(cpu="Fp8BlockDequant", cpu_grad=None, ascend="MfdsFp8BlockDequant", ascend_grad=None,
                              inputs=[("codes", "uint8"), ("scale", "float32")], outputs=[("out", "float32")],
                              grad_inputs=[], grad_outputs=[]),
}

# "float": the op's compute dtype (float32 on CPU; float16/bfloat16/float32 on Ascend)
ASCEND_FLOAT = ("float16", "bfloat16", "float32")
