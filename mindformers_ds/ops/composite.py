"""Composite (plain MindSpore) implementations of the operators the model needs.

These are the reference semantics: the fused kernels in `ops/` must match them, and they
are what runs when no kernel is built. Everything here has static shapes so it compiles
in graph mode on any backend.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

MASK_VALUE = -1e30  # added to masked scores in float32: exp() of it is exactly 0, and it absorbs any score


def additive_mask(keep):
    """0 where `keep` (bool) holds, MASK_VALUE elsewhere, float32; no gradient flows through it."""
    return ops.stop_gradient((1.0 - keep.astype(ms.float32)) * MASK_VALUE)


def rms_norm(x, weight, eps: float):
    """weight * x / sqrt(mean(x^2) + eps), computed in float32 like transformers."""
    xf = x.astype(ms.float32)
    var = (xf * xf).mean(-1, keep_dims=True)
    return weight * (xf * ops.rsqrt(var + eps)).astype(x.dtype)


def swiglu(gate_up):
    """silu(gate) * up on the fused [.., 2I] projection (gate rows first, as transformers stores them)."""
    gate, up = ops.split(gate_up, gate_up.shape[-1] // 2, -1)
    return ops.silu(gate) * up


def sinkhorn(comb, iters: int, eps: float):
    """V4 mHC: alternate column / row normalisation of comb [.., n, n], columns first and last
    (2 iters - 1 steps), each dividing by the sum + eps."""
    comb = comb / (comb.sum(-2, keepdims=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdims=True) + eps)
        comb = comb / (comb.sum(-2, keepdims=True) + eps)
    return comb


def clamp_gate_up(gate_up, limit: float):
    """V4's `swiglu_limit`: gate clipped from above, up to [-limit, limit], before silu(gate) * up."""
    gate, up = ops.split(gate_up, gate_up.shape[-1] // 2, -1)
    return ops.concat((ops.minimum(gate, limit), ops.clamp(up, -limit, limit)), -1)


def rope_cos_sin(position_ids, inv_freq, attention_factor: float):
    """cos/sin of shape [B, 1, S, D/2] for positions [B, S] (float32, as transformers computes them)."""
    freqs = position_ids.astype(ms.float32).expand_dims(-1) * inv_freq
    cos = ops.cos(freqs) * attention_factor
    sin = ops.sin(freqs) * attention_factor
    return cos.expand_dims(1), sin.expand_dims(1)


def apply_rope(x, cos, sin, interleave: bool):
    """Rotate pairs of the last dim of x [B, H, S, D]; pairs are (2i, 2i+1) when interleaved
    (DeepSeek's layout) or (i, i + D/2). The output puts all first elements, then all second
    elements, as transformers' V3 code does: q.k is the same whichever order is used."""
    half = x.shape[-1] // 2
    if interleave:
        pairs = x.reshape(x.shape[:-1] + (half, 2))
        x1, x2 = pairs[..., 0], pairs[..., 1]
    else:
        x1, x2 = x[..., :half], x[..., half:]
    return ops.concat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)


class MlaAttentionCore(nn.Cell):
    """MLA's attention core in the projections' layouts: q [B, Sq, H, Dn+Dr] (its rope channels are
    not read), rotated q_pe [B, H, Sq, Dr], kv [B, Sk, H, Dn+Dv], the rotated key k_pe [B, Sk, Dr]
    shared by all heads, an additive bias [B|1, 1, Sq, Sk] -> out [B, Sq, H, Dv] =
    softmax((q_nope k_nope^T + q_pe k_pe^T) * scale + bias) v.
    A cell, not a function: it owns its BatchMatMuls, which parallel/ascend.py shards."""

    def __init__(self):
        super().__init__()
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bmm = ops.BatchMatMul()

    def scores(self, q, q_pe, kv, k_pe):
        """The unscaled scores q_nope k_nope^T + q_pe k_pe^T [B, H, Sq, Sk] (float32)."""
        b, sq, h, dq = q.shape
        dr = q_pe.shape[-1]
        dn, sk = dq - dr, kv.shape[1]
        q_nope = q[..., :dn].transpose(0, 2, 1, 3)
        k_nope = kv[..., :dn].transpose(0, 2, 1, 3)
        scores = self.bmm_nt(q_nope, k_nope)
        # the shared rotary key: one [B, H*Sq, Dr] x [B, Sk, Dr]^T product instead of H copies of k_pe
        scores_pe = self.bmm_nt(q_pe.reshape(b, h * sq, dr), k_pe).reshape(b, h, sq, sk)
        return (scores + scores_pe).astype(ms.float32)

    def construct(self, q, q_pe, kv, k_pe, bias, scale):
        dn = q.shape[-1] - q_pe.shape[-1]
        v = kv[..., dn:].transpose(0, 2, 1, 3)
        probs = ops.softmax(self.scores(q, q_pe, kv, k_pe) * scale + bias, -1).astype(v.dtype)
        return self.bmm(probs, v).transpose(0, 2, 1, 3)


class SparseMlaAttentionCore(nn.Cell):
    """MLA attention over each query's top-k keys, as the masked dense composite: the chosen keys'
    bias [B, Sq, K] (0, or MASK for a chosen key the mask drops) is scattered into a [B, 1, Sq, Sk]
    bias that masks every other key, then MlaAttentionCore. index [B, Sq, K] int32, distinct per row.
    Cost O(Sq * Sk); the sparse kernel (ops/cpu/sparse_attention.cc) computes the same in O(Sq * K)."""

    def __init__(self):
        super().__init__()
        self.dense = MlaAttentionCore()

    def construct(self, q, q_pe, kv, k_pe, index, bias, scale):
        b, sq = index.shape[0], index.shape[1]
        masked = ops.full((b, sq, kv.shape[1]), MASK_VALUE, dtype=ms.float32)
        dense_bias = ops.tensor_scatter_elements(masked, index, bias, axis=-1).expand_dims(1)
        return self.dense(q, q_pe, kv, k_pe, dense_bias, scale)


def index_scores(q, keys, w, mask, scale: float):
    """The Lightning Indexer's scores [B, S, T] (-inf where the mask [B, 1, S, T] bool drops a key):
    sum_h w[b, s, h] * relu((q[b, s, h] . keys[b, t]) * scale) of q [B, S, Hi, Di], keys [B, T, Di],
    w [B, S, Hi]."""
    b, _, hi, di = q.shape
    k = ops.broadcast_to(keys.expand_dims(1), (b, hi, keys.shape[1], di))
    logits = ops.relu(ops.BatchMatMul(transpose_b=True)(q.transpose(0, 2, 1, 3), k) * scale)   # [B, Hi, S, T]
    index = (logits * w.transpose(0, 2, 1).expand_dims(-1)).sum(1)
    return ops.where(mask[:, 0], index, ops.full_like(index, float("-inf")))


def index_topk(q, keys, w, mask, scale: float, k: int):
    """Each query's k best keys under index_scores -> (their scores [B, S, k] descending, -inf for a
    dropped key; their indices [B, S, k] int32). ops.topk orders ties its own way (the kernel:
    lower index first), so tied keys at the k-th place may differ between the two."""
    top, chosen = ops.topk(index_scores(q, keys, w, mask, scale), k)
    return top, chosen.astype(ms.int32)


# ---------------------------------------------------------------------------------------
# MoE dispatch: blocked grouped matmul with static shapes
# ---------------------------------------------------------------------------------------
def moe_padded_rows(num_assignments: int, num_experts: int, block: int) -> int:
    """Static row count of the permuted buffer: every expert's group padded to `block` rows."""
    rows = num_assignments + num_experts * (block - 1)
    return -(-rows // block) * block


def moe_permute(x, topk_idx, num_experts: int, block: int):
    """Sort token copies by expert into block-aligned groups.

    x [N, H], topk_idx [N, k] -> (x_perm [P, H], slot_of_row [P], block_expert [P/block], counts [E]).
    `slot_of_row` is the flat index n*k+j of the routing choice each row holds, or N*k for a padding
    row (whose input is a zero row). Row order inside a group follows token order, so the result is
    deterministic.
    """
    n, k = topk_idx.shape
    t = n * k
    flat = topk_idx.reshape(t)
    onehot = ops.one_hot(flat, num_experts, ms.Tensor(1, ms.int32), ms.Tensor(0, ms.int32))
    counts = onehot.sum(0)
    rank_in_group = (ops.cumsum(onehot, 0) * onehot).sum(1) - 1
    padded = (counts + (block - 1)) // block * block
    pad_end = ops.cumsum(padded, 0)
    pad_start = pad_end - padded
    dest = ops.gather(pad_start, flat, 0) + rank_in_group
    p = moe_padded_rows(t, num_experts, block)
    slot_of_row = ops.tensor_scatter_update(ops.fill(ms.int32, (p,), t), dest.reshape(t, 1),
                                            ops.arange(t, dtype=ms.int32))
    x_pad = ops.concat((x, ops.zeros((1, x.shape[1]), x.dtype)), 0)
    x_perm = ops.gather(x_pad, slot_of_row // k, 0)
    block_start = ops.arange(p // block, dtype=ms.int32) * block
    block_expert = (pad_end.expand_dims(0) <= block_start.expand_dims(1)).astype(ms.int32).sum(1)
    block_expert = ops.minimum(block_expert, num_experts - 1).astype(ms.int32)  # sums widen to int64
    return x_perm, slot_of_row, block_expert, counts.astype(ms.int32)


class GroupedMatmul(nn.Cell):
    """y[r] = x_perm[r] @ weight[e(r)]^T for each block of rows; weight is [E, M, K] (HF layout).
    A cell with its own primitives, so a parallel plan can shard them (the Ascend executor: the
    expert weights' Gather over ep, the blocks' BatchMatMul over dp)."""

    def __init__(self):
        super().__init__()
        self.gather = ops.Gather()
        self.bmm = ops.BatchMatMul(transpose_b=True)

    def construct(self, x_perm, weight, block_expert, block: int):
        p, kdim = x_perm.shape
        xb = x_perm.reshape(p // block, block, kdim)
        wb = self.gather(weight, block_expert, 0)
        return self.bmm(xb, wb).reshape(p, weight.shape[1])


_GROUPED_MATMUL = GroupedMatmul()


def grouped_matmul(x_perm, weight, block_expert, block: int):
    """GroupedMatmul as a function (one shared instance: tests, benchmarks, the kernels' fallback)."""
    return _GROUPED_MATMUL(x_perm, weight, block_expert, block)


def moe_unpermute(y_perm, slot_of_row, topk_weight, num_tokens: int):
    """Weighted combine back to tokens: out[n] = sum_j w[n, j] * y[row of (n, j)]."""
    k = topk_weight.shape[1]
    w_flat = ops.concat((topk_weight.reshape(-1), ops.zeros((1,), topk_weight.dtype)), 0)
    row_w = ops.gather(w_flat, slot_of_row, 0).astype(y_perm.dtype)
    rows = y_perm * row_w.expand_dims(1)
    out = ops.unsorted_segment_sum(rows, slot_of_row // k, num_tokens + 1)
    return out[:num_tokens]


def router_scores(logits, scoring: str):
    """Expert affinities from float32 router logits: V2 softmax, V3 sigmoid, V4 sqrt(softplus)."""
    if scoring == "sigmoid":
        return ops.sigmoid(logits)
    if scoring == "sqrtsoftplus":
        return ops.sqrt(ops.softplus(logits))
    return ops.softmax(logits, -1)


def chosen_weights(scores, indices, scoring: str, norm_topk_prob: bool, top_k: int, routed_scaling_factor: float):
    """Weights of the chosen experts: their unbiased scores, normalised when `norm_topk_prob`
    (V3/V4 then scale; V2 normalises *or* scales)."""
    weights = ops.gather_elements(scores, 1, indices)
    if scoring != "softmax":
        if norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
        return weights * routed_scaling_factor
    if norm_topk_prob and top_k > 1:
        return weights / (weights.sum(-1, keepdims=True) + 1e-20)
    return weights * routed_scaling_factor


def router_topk(logits, bias, top_k: int, n_group: int, topk_group: int, scoring: str, method: str,
                norm_topk_prob: bool, routed_scaling_factor: float):
    """DeepSeek routers on float32 logits [N, E] -> (weights [N, k], indices [N, k] int32, scores [N, E]).

    V3 (`noaux_tc`): sigmoid scores (V4: sqrt(softplus)); the bias only steers the choice; groups
    ranked by the sum of their top-2 biased scores; masked experts get -inf. V2: softmax scores;
    `group_limited_greedy` ranks groups by their best score and masks with 0.
    """
    n, e = logits.shape
    scores = router_scores(logits, scoring)
    choice = scores + bias if bias is not None else scores
    if method != "greedy" and n_group > 1:
        grouped = choice.reshape(n, n_group, e // n_group)
        if method == "noaux_tc":
            group_score = ops.topk(grouped, 2)[0].sum(-1)
        else:
            group_score = grouped.max(-1)
        group_idx = ops.topk(group_score, topk_group)[1]
        group_mask = ops.one_hot(group_idx, n_group, ms.Tensor(1.0, ms.float32),
                                 ms.Tensor(0.0, ms.float32)).sum(1)
        expert_mask = ops.broadcast_to(group_mask.expand_dims(-1), (n, n_group, e // n_group)).reshape(n, e)
        fill = float("-inf") if method == "noaux_tc" else 0.0
        choice = ops.where(expert_mask > 0, choice, ops.full_like(choice, fill))
    indices = ops.topk(choice, top_k)[1].astype(ms.int32)
    weights = chosen_weights(scores, indices, scoring, norm_topk_prob, top_k, routed_scaling_factor)
    return weights, indices, scores
