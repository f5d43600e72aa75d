"""Training the Lightning Indexers (V3.2's DSA, V4's CSA): the distillation target, the KL and
the recall telemetry, shared by both families (DeepSeek-V3.2 report, section 2.1).

Stages (`train.indexer_stage`; the attention cells read `index_stage`):
* `frozen`: the release's inference behaviour; nothing here runs.
* `dense_warmup`: attention is dense; the indexer learns to match it.
* `sparse`: attention reads the indexer's top-k only; the indexer learns to match that attention.
For a query t, with the main attention's probabilities p_h[t, s] (per head h, over the keys s the
indexer chooses among: its *support*) and the indexer's scores I[t, s]:
    target[t, s] = sum_h p_h[t, s] / sum_{s' in support} sum_h p_h[t, s']      (L1-normalised)
    KL_t = sum_s target[t, s] * (log target[t, s] - log_softmax_support(I[t])[s])
The target is detached: the main model gets no gradient from the KL, and (the indexer's input being
detached too) the indexer none from the LM loss, whose path through it is a discrete top-k anyway.
V4's CSA attends over the sliding window, the compressed entries and a per-head sink in one joint
softmax; the indexer ranks compressed entries only, so p_h is the joint softmax's probability of
each compressed entry (window and sink stay in its denominator) and the support is the entries:
the L1 normalisation then removes the mass the window and the sink took.
Recall@k of a query is the share of the *dense* target (support: every key the query may see)
that the indexer's chosen keys hold; 1.0 means the top-k loses nothing of dense attention.
Queries whose support is empty (V4 queries before the first closed window) are not counted.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops

_MASK = -1e30   # finite: log_softmax over a row with no support stays finite (and is unused)


def head_target(head_sum, support):
    """head_sum [B, S, T]: attention probabilities summed over every head of the layer (the
    `SummedOverHeads` mark makes it so under tensor parallelism), support [B, S, T] bool ->
    (target [B, S, T], valid [B, S] float: the query's support holds some probability). Detached."""
    mass = ops.stop_gradient(head_sum).astype(ms.float32) * support.astype(ms.float32)
    total = mass.sum(-1, keepdims=True)
    valid = (total > 0).astype(ms.float32)
    return mass / ops.maximum(total, 1e-30), valid.squeeze(-1)


def index_stats(index, attended_sum, support, dense_sum, dense_support, chosen):
    """The layer's row of results.INDEX_STATS from the index scores [B, S, T] and the attention
    probabilities summed over heads, as attention ran (over `support`) and dense (over
    `dense_support`; the same tensors in the dense warm-up): [KL summed over valid queries
    (differentiable in `index`), recall of the `chosen` keys summed over valid queries, valid queries]."""
    target, valid = head_target(attended_sum, support)
    dense_target, _ = head_target(dense_sum, dense_support)
    logq = ops.log_softmax(ops.where(support, index.astype(ms.float32), ops.full_like(index, _MASK)), -1)
    log_target = ops.log(ops.maximum(target, 1e-30))
    kl = (ops.where(target > 0, target * (log_target - logq), ops.zeros_like(target))).sum(-1)   # [B, S]
    recall = ops.stop_gradient((dense_target * chosen.astype(ms.float32)).sum(-1))
    return ops.stack(((kl * valid).sum(), (recall * valid).sum(), valid.sum()))


def stats_row(stats, layer: int, num_layers: int):
    """A layer's [3] stats as its row of the [num_layers, 3] table (zeros elsewhere)."""
    onehot = (ops.arange(num_layers, dtype=ms.int32) == layer).astype(ms.float32).reshape(num_layers, 1)
    return onehot * stats.reshape(1, 3)


def index_loss(table, stage: str):
    """INDEX_KL of one micro-batch: per layer the mean KL over its queries, summed over layers."""
    if stage == "frozen":
        return ops.zeros((), ms.float32)
    return (table[:, 0] / ops.maximum(table[:, 2], 1.0)).sum()
