"""Named results: the training forward (`forward_train`) and the loss cell return dicts with
these keys inside the graph; the step's graph returns them as a tuple in `STEP_PARTS` order and
the host turns it back into a dict (`named`). Readers use the names, never positions.

Why not NamedTuples, and why a tuple at the graph's edge (MindSpore 2.10, measured): a NamedTuple
built inside a differentiated graph gives zero gradients without a word (a loss read from
`Parts(loss=...)` differentiated to 0; the same value in a dict or a tuple correctly); a dict
returned by the top-level step graph makes MindSpore execute it as "any type" segments, which
cannot run Custom ops ("The prim is not a PrimitivePy. Prim name: Custom"), and the expert load
it returned no longer matched the one the router-bias update had used (tests/test_moe_mtp.py).
"""
from __future__ import annotations

# forward_train: the sums the step scales and logs, and the expert load the bias update reads
LM_SUM = "lm_sum"          # sum of -log p over the main head's targets
LM_COUNT = "lm_count"      # number of those targets
MTP_SUM = "mtp_sum"        # the same for the MTP heads (mean over depths)
MTP_COUNT = "mtp_count"
AUX = "aux"                # the sequence-wise balance loss, summed over MoE layers
INDEX_KL = "index_kl"      # the indexers' distillation loss: per layer, the mean over queries of
                           # KL(attention || indexer), summed over layers (0 when frozen); indexer_loss.py
LOAD = "load"              # tokens per expert [MoE layers, E] (float32), or a 0-size tensor
INDEX_STATS = "index_stats"  # per decoder layer (MTP included) [L, 3]: (KL summed over queries, the dense
                           # attention mass the indexer's top-k holds summed over queries, queries);
                           # zero rows for layers without an indexer; 0-size when the indexers are frozen
LOSS_SUMS = (LM_SUM, LM_COUNT, MTP_SUM, MTP_COUNT, AUX, INDEX_KL)   # summed over micro-batches and dp ranks
SUMMED_TENSORS = (INDEX_STATS,)   # tensor parts summed elementwise over micro-batches, ranks and stages
# the loss cell adds the scaled loss it differentiates
LOSS = "loss"

# backbone: what the head and the MTP modules read
HIDDEN = "hidden"          # final normed hidden [B, S, H]
LAYER_INPUTS = "layer_inputs"  # the bundle every layer of the backbone read (below); MTP layers read it too
LOADS = "loads"            # tuple of per-MoE-layer expert counts
CACHES = "caches"          # run_layers with caches: every layer's updated decoding caches, one flat tuple
                           # (each attention's `cache_count` of them, in layer order; kv_cache.py)

# the per-layer inputs: one dict, built once per forward by the family's `layer_inputs` (or
# `decode_inputs`), read by name by every layer of the one layer loop (CausalLM.run_layers)
ROPE = "rope"              # V2/V3/V3.2: (cos, sin) of the positions
ROPE_MAIN = "rope_main"    # V4: (cos, sin) of the "main" rope (sliding layers)
ROPE_COMPRESS = "rope_compress"  # V4: of the "compress" rope (CSA/HCA layers, compressors)
POSITIONS = "positions"    # V4: token index of every position [B, S]
MASK = "mask"              # V2/V3: bool [B|1, 1, Sq, Sk]; V4: the additive sliding-window bias
TOKEN_IDS = "token_ids"    # V4: the input ids (hash-routed MoE layers read them)
SEGMENT_IDS = "segment_ids"  # V4: packed-sample ids [B, S] or None
# ... and what the cached decoders (kv_cache.py) add to it
CACHE_WRITE = "cache_write"  # V2/V3/V3.2: [B, L, 1] float, 1 where this forward writes the cache's slot
LAST = "last"              # V4 prefill: each row's last prompt position [B] (what its ring caches keep)


def entry_rope(rate: int) -> str:
    """V4 decode: the compress rope (cos, sin) [B, 1, 1, r/2] at the first position of the window
    of `rate` tokens the decoded token is in (where a compressor's new entry is rotated)."""
    return f"entry_rope_{rate}"

# the step graph's outputs, in this order (TrainStep / GradStep); `named` reads them back
STEP_PARTS = (LOSS, LM_SUM, LM_COUNT, MTP_SUM, MTP_COUNT, AUX, INDEX_KL, LOAD, INDEX_STATS)
AT = {name: i for i, name in enumerate(STEP_PARTS)}   # for graph code that must index the tuple


def step_tuple(parts):
    """The step parts of a dict as the graph's output tuple (graph code; STEP_PARTS order)."""
    return (parts[LOSS], parts[LM_SUM], parts[LM_COUNT], parts[MTP_SUM], parts[MTP_COUNT], parts[AUX],
            parts[INDEX_KL], parts[LOAD], parts[INDEX_STATS])


def named(outputs) -> dict:
    """The step graph's output tuple as a dict keyed by STEP_PARTS (host code)."""
    return dict(zip(STEP_PARTS, outputs))
