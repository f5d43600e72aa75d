"""DeepSeekMoE: shared experts plus routed experts stored stacked ([E, 2I, H] and [E, H, I]).

The router (`gate`) picks top-k experts per token (V2 softmax / V3 sigmoid + correction
bias, group-limited); tokens are permuted into per-expert blocks, run through a grouped
matmul, and combined back with the routing weights. The layer also returns the per-expert
load of the step (for aux-loss-free balancing, which updates `e_score_correction_bias`
outside of autograd) and the optional sequence-wise balance loss.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from ...ops import choice, composite
from .config import DeepseekConfig
from .layers import DTYPES, MLP, Identity, zeros_param


class TopkRouter(nn.Cell):
    """Learned top-k routing; V4's `hash_moe` layers instead look the experts up in a frozen
    token-id -> experts table (`tid2eid`) and take only the weights from the learned scores."""

    def __init__(self, config: DeepseekConfig, layer_idx: int = -1):
        super().__init__()
        c = config
        self.weight = zeros_param((c.n_routed_experts, c.hidden_size), "weight")
        self.is_hash = c.is_hash_layer(layer_idx)
        self.has_bias = c.layer_has_correction_bias(layer_idx)
        if self.has_bias:
            # Steers the choice only; updated by the trainer from the expert load, never by gradients.
            self.e_score_correction_bias = zeros_param((c.n_routed_experts,), "e_score_correction_bias",
                                                       requires_grad=False)
        if self.is_hash:
            self.tid2eid = Parameter(Tensor(np.zeros((c.vocab_size, c.num_experts_per_tok), np.int32)),
                                     name="tid2eid", requires_grad=False)
        self.args = (c.num_experts_per_tok, c.n_group, c.topk_group, c.scoring_func, c.topk_method,
                     c.norm_topk_prob, c.routed_scaling_factor)
        self.matmul = ops.MatMul(transpose_b=True)
        self.topk = choice.operator("router_topk", c.fused_ops, top_k=c.num_experts_per_tok, n_group=c.n_group,
                                    topk_group=c.topk_group, scoring=c.scoring_func, method=c.topk_method,
                                    norm_topk_prob=c.norm_topk_prob, routed_scaling_factor=c.routed_scaling_factor,
                                    num_experts=c.n_routed_experts, has_bias=self.has_bias)

    def construct(self, x2d, token_ids=None):
        logits = self.matmul(x2d.astype(ms.float32), self.weight.astype(ms.float32))
        if self.is_hash:
            k, _, _, scoring, _, norm, scale = self.args
            scores = composite.router_scores(logits, scoring)
            idx = ops.gather(self.tid2eid, token_ids.reshape(-1), 0)
            return composite.chosen_weights(scores, idx, scoring, norm, k, scale), idx, scores
        bias = self.e_score_correction_bias if self.has_bias else None
        return self.topk(logits, bias, *self.args)


class Experts(nn.Cell):
    """Routed experts; `gate_up_proj` rows are [gate; up] per expert, as in transformers v5.

    The cell holds experts [first_expert, first_expert + num_experts) (all of them unless an
    executor splits them: parallel/parallelize.py rebuilds it with a range and puts its
    dispatch/combine collectives in `dispatch` / `combine`). Holding a range, it routes the
    tokens `dispatch` brings (its group's) to its own experts (choices of other experts get
    weight 0), and `combine` sums the group's contributions back per token."""

    def __init__(self, config: DeepseekConfig, first_expert: int = 0, num_experts: int = 0):
        super().__init__()
        c = config
        self.num_experts = num_experts or c.n_routed_experts
        self.first_expert = first_expert
        self.expert_parallel = self.num_experts < c.n_routed_experts  # holds a range of the experts
        self.dispatch = Identity()   # where tokens travel to the ranks holding their experts
        self.combine = Identity()    # and their outputs back
        self.gate_up_proj = zeros_param((self.num_experts, 2 * c.moe_intermediate_size, c.hidden_size),
                                        "gate_up_proj")
        self.down_proj = zeros_param((self.num_experts, c.hidden_size, c.moe_intermediate_size), "down_proj")
        self.block = c.moe_block_size
        self.compute_dtype = DTYPES[c.compute_dtype]
        self.permute, self.unpermute = composite.moe_permute, composite.moe_unpermute
        fused_permute = choice.operator("moe_permute", c.fused_ops, num_experts=self.num_experts)
        if fused_permute is not None:
            self.permute, self.unpermute, self.block = fused_permute
        self.gmm = choice.operator("grouped_matmul", c.fused_ops)
        self.act = choice.operator("swiglu", c.fused_ops)
        self.limit = c.swiglu_limit

    def construct(self, x2d, topk_idx, topk_weight):
        """x2d [N, H] -> combined expert output [N, H]."""
        if self.expert_parallel:
            # expert ids travel as float32 (exact for these small integers): mccl reduces floats only
            x2d, topk_weight = self.dispatch(x2d), self.dispatch(topk_weight)
            topk_idx = self.dispatch(topk_idx.astype(ms.float32)).astype(ms.int32)
            local = ops.logical_and(topk_idx >= self.first_expert, topk_idx < self.first_expert + self.num_experts)
            topk_weight = ops.where(local, topk_weight, ops.zeros_like(topk_weight))
            topk_idx = ops.where(local, topk_idx - self.first_expert, ops.zeros_like(topk_idx))
        n = x2d.shape[0]
        x_perm, slot_of_row, block_expert, _ = self.permute(
            x2d.astype(self.compute_dtype), topk_idx, self.num_experts, self.block)
        w_gu = self.gate_up_proj.astype(self.compute_dtype)
        w_down = self.down_proj.astype(self.compute_dtype)
        gate_up = self.gmm(x_perm, w_gu, block_expert, self.block)
        if self.limit > 0:
            gate_up = composite.clamp_gate_up(gate_up, self.limit)
        h = self.act(gate_up)
        y = self.gmm(h, w_down, block_expert, self.block)
        return self.combine(self.unpermute(y, slot_of_row, topk_weight, n))


class MoE(nn.Cell):
    def __init__(self, config: DeepseekConfig, layer_idx: int = -1):
        super().__init__()
        c = config
        self.gate = TopkRouter(c, layer_idx)
        self.experts = Experts(c)
        self.has_shared = c.n_shared_experts > 0
        if self.has_shared:
            self.shared_experts = MLP(c.hidden_size, c.moe_intermediate_size * c.n_shared_experts,
                                      DTYPES[c.compute_dtype], c.fused_ops, c.swiglu_limit)
        self.top_k = c.num_experts_per_tok
        self.num_experts = c.n_routed_experts
        self.aux_alpha = c.aux_loss_alpha
        self.normalise_scores = c.scoring_func != "softmax"

    def balance_loss(self, scores, topk_idx, batch: int):
        """Sequence-wise balance loss of DeepSeek-V3: alpha * mean_b sum_e f_be * P_be with
        f = E/(k*S) * tokens routed to e in sequence b, P = mean over the sequence of the
        token's normalised affinity for e."""
        seq = scores.shape[0] // batch
        probs = scores / scores.sum(-1, keepdims=True) if self.normalise_scores else scores
        probs = probs.reshape(batch, seq, self.num_experts).mean(1)
        chosen = ops.one_hot(topk_idx.reshape(batch, seq * self.top_k), self.num_experts,
                             ops.ones((), ms.float32), ops.zeros((), ms.float32)).sum(1)
        f = ops.stop_gradient(chosen * (self.num_experts / (self.top_k * seq)))
        return (f * probs).sum(-1).mean() * self.aux_alpha

    def construct(self, x, token_ids=None):
        """`token_ids` [B, S]: only hash-routed (V4) layers read them."""
        b, s, hdim = x.shape
        x2d = x.reshape(b * s, hdim)
        weights, idx, scores = self.gate(x2d, token_ids)
        # the load of this rank's own tokens (data-parallel ranks sum theirs for the bias update)
        counts = ops.one_hot(idx.reshape(-1), self.num_experts, ops.ones((), ms.int32),
                             ops.zeros((), ms.int32)).sum(0)
        routed = self.experts(x2d, idx, weights)
        out = routed.reshape(b, s, hdim).astype(x.dtype)
        if self.has_shared:
            out = out + self.shared_experts(x)
        aux = self.balance_loss(scores, idx, b) if self.aux_alpha > 0 else ops.zeros((), ms.float32)
        return out, counts, aux
