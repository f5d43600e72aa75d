"""The Ascend executor: the layout table as MindSpore semi-auto-parallel strategies.

The model is built whole (no local slicing); every MatMul/BatchMatMul primitive gets a
`.shard()` strategy derived from the layout of the weight it multiplies, layers get their
`pipeline_stage`, recompute is set per layer, and the training step is wrapped in
`AutoParallel(..., "semi_auto")` with pipeline stages, optimizer sharding (hsdp), the
dataset strategy and a parameter strategy file (for `transform_checkpoints` /
`unified_safetensors`). MindSpore refuses this on CPU ("Invalid backend: CPU"), so here it
is checked statically: every strategy has the rank of its operator's inputs and divides
their shapes, and stand-alone mode with the strategies set computes the same logits.

Routed experts (expert parallelism through sharded GroupedMatmul weights, not an AlltoAll of
tokens): the expert weights [E, *, *] are split over `ep` along E, as the table says, by the
strategy of the grouped matmul's weight Gather ((ep, 1, 1), (1,)): each device gathers the
blocks of its own experts and MindSpore combines them (a model-parallel Gather: masked lookups
and an all-reduce over ep), and the blocks' BatchMatMul runs data parallel. This moves weight
blocks instead of tokens; MindSpore's AlltoAll-based token dispatch (the fused MoE kernels:
permute + GroupedMatmul + all-to-all) is the faster path and is not written here.

`param_strategies` reads the plan back per parameter ({mesh axis: dim}, {} replicated): a test
walks it against the layout table for every preset and family, and `write_strategy_listing`
saves it next to the checkpoints (`strategy/param_layout.json`, every parameter once), beside
MindSpore's own strategy file (written at the first compile on Ascend).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

from ..utils.io import atomic_write_json
from .recompute import apply_recompute
from .layout import ParamLayout, layer_stage, layout_table, virtual_chunk

STRATEGY_DIR = "strategy"   # under the run directory: MindSpore's strategy file and our listing


@dataclass(frozen=True)
class OpStrategy:
    cell: str
    op: str
    strategy: Tuple[Tuple[int, ...], ...]
    input_shapes: Tuple[Tuple[int, ...], ...]
    params: Tuple[str, ...] = ()                   # the parameters this op reads as its weight input
    param_split: Tuple[Tuple[str, int], ...] = ()  # how the strategy splits them: (mesh axis, dim)
    out_strategy: Tuple[Tuple[int, ...], ...] = ()  # sequence parallelism: the output rows' split


def _linear_strategy(layout: ParamLayout, dp: int, tp: int):
    if layout.split.get("tp") == 0:
        return ((dp, 1), (tp, 1)), (("tp", 0),)     # column parallel: output rows over tp
    if layout.split.get("tp") == 1:
        return ((dp, tp), (1, tp)), (("tp", 1),)    # row parallel: the contraction over tp (partial sums reduced)
    return ((dp, 1), (1, 1)), ()                     # replicated weight, data-parallel rows


def plan(model, par, batch: int, seq: int) -> List[OpStrategy]:
    """Strategies for every matmul of `model` (built whole) under `par`, with the input shapes
    they see for a [batch, seq] micro-batch."""
    from ..models.deepseek.attention import MLAttention
    from ..models.deepseek.layers import Linear
    from ..models.deepseek.moe import Experts, TopkRouter
    from ..models.deepseek.v4_attention import V4Attention
    c = model.config
    table = layout_table(c, par)
    dp, tp = par.dp, par.tp
    tokens = batch * seq
    scattered = sequence_scattered_linears(model) if par.sequence_parallel and tp > 1 else ()
    out: List[OpStrategy] = []
    for name, cell in model.cells_and_names():
        if isinstance(cell, Linear):
            strategy, split = _linear_strategy(table[f"{name}.weight"], dp, tp)
            # sequence parallelism: the partial sums are reduce-scattered over the token rows instead of
            # all-reduced (MindFormers' use_seq_parallel sets the same out_strategy on wo and w2)
            rows = ((dp * tp, 1),) if name in scattered and split else ()
            out.append(OpStrategy(name, "MatMul", strategy,
                                  ((tokens, cell.in_features), (cell.out_features, cell.in_features)),
                                  (f"{name}.weight",), split, rows))
        elif isinstance(cell, TopkRouter):
            out.append(OpStrategy(name, "MatMul", ((dp, 1), (1, 1)),
                                  ((tokens, c.hidden_size), (c.n_routed_experts, c.hidden_size)), (f"{name}.weight",)))
        elif isinstance(cell, MLAttention):
            h, dn, dr, dv = cell.num_heads, cell.nope_dim, cell.rope_dim, cell.v_dim
            out.append(OpStrategy(name, "BatchMatMul(q_nope,k_nope)", ((dp, tp, 1, 1), (dp, tp, 1, 1)),
                                  ((batch, h, seq, dn), (batch, h, seq, dn))))
            out.append(OpStrategy(name, "BatchMatMul(q_pe,k_pe)", ((dp, tp, 1), (dp, 1, 1)),
                                  ((batch, h * seq, dr), (batch, seq, dr))))
            out.append(OpStrategy(name, "BatchMatMul(probs,v)", ((dp, tp, 1, 1), (dp, tp, 1, 1)),
                                  ((batch, h, seq, seq), (batch, h, seq, dv))))
            if cell.has_indexer:   # V3.2's top-k kernel: the same head split, its keys chosen per row
                k = min(c.index_topk, seq)
                out.append(OpStrategy(name, "SparseMlaAttention(top-k kernel)",
                                      ((dp, 1, tp, 1), (dp, tp, 1, 1), (dp, 1, tp, 1), (dp, 1, 1), (dp, 1, 1),
                                       (dp, 1, 1), (1,)),
                                      ((batch, seq, h, dn + dr), (batch, h, seq, dr), (batch, seq, h, dn + dv),
                                       (batch, seq, dr), (batch, seq, k), (batch, seq, k), (1,))))
        elif isinstance(cell, V4Attention):
            out += _v4_attention(name, c, dp, tp, batch, seq)
        elif isinstance(cell, Experts):
            from ..ops.composite import moe_padded_rows
            rows = moe_padded_rows(tokens * c.num_experts_per_tok, c.n_routed_experts, cell.block)
            blocks = rows // cell.block
            inter, hid = c.moe_intermediate_size, c.hidden_size
            ep = par.ep
            out.append(OpStrategy(name, "Gather(expert weights)", ((ep, 1, 1), (1,)),
                                  ((cell.num_experts, 2 * inter, hid), (blocks,)),
                                  (f"{name}.gate_up_proj", f"{name}.down_proj"), (("ep", 0),) if ep > 1 else ()))
            # the padded block count is rarely a multiple of dp: split over the largest divisor of dp that divides it
            k = math.gcd(dp, blocks)
            out.append(OpStrategy(name, "BatchMatMul(blocks,gate_up)", ((k, 1, 1), (k, 1, 1)),
                                  ((blocks, cell.block, hid), (blocks, 2 * inter, hid))))
            out.append(OpStrategy(name, "BatchMatMul(blocks,down)", ((k, 1, 1), (k, 1, 1)),
                                  ((blocks, cell.block, inter), (blocks, hid, inter))))
    return out


def _v4_attention(name: str, c, dp: int, tp: int, batch: int, seq: int) -> List[OpStrategy]:
    """V4's heads over tp by whole output groups (q_b_proj and o_b_proj are Linears, planned as
    such): the scores and values over the heads, the sinks with their heads, the grouped o_a_proj
    by group. The shared-KV keys (with the compressed entries: at most `seq` more) are replicated."""
    h, d, g = c.num_attention_heads, c.head_dim, c.o_groups
    keys = seq + seq  # an upper bound of sliding + compressed keys; the divisibility checked is the heads'
    a = f"{name}."
    return [OpStrategy(name, "BatchMatMul(q,keys)", ((dp, tp, 1), (dp, 1, 1)), ((batch, h * seq, d), (batch, keys, d))),
            OpStrategy(name, "BatchMatMul(probs,keys)", ((dp, tp, 1), (dp, 1, 1)),
                       ((batch, h * seq, keys), (batch, keys, d))),
            OpStrategy(name, "Add(sinks)", ((dp, tp, 1, 1), (1, tp, 1, 1)), ((batch, h, seq, 1), (1, h, 1, 1)),
                       (a + "sinks",), (("tp", 0),) if tp > 1 else ()),
            OpStrategy(name, "BatchMatMul(o_a_proj groups)", ((tp, dp, 1), (tp, 1, 1)),
                       ((g, batch * seq, h * d // g), (g, c.o_lora_rank, h * d // g)),
                       (a + "o_a_proj.weight",), (("tp", 0),) if tp > 1 else ())]


def sequence_scattered_linears(model) -> Tuple[str, ...]:
    """The row-parallel linears whose output returns to the residual stream (the model's
    SequenceShard marks name them, layers.py): where sequence parallelism reduce-scatters."""
    from ..models.deepseek.layers import SequenceShard
    return tuple(sorted(f"{name.rpartition('.')[0]}.{cell.partial_from}" for name, cell in model.cells_and_names()
                        if isinstance(cell, SequenceShard) and cell.partial_from))


def check(strategies: List[OpStrategy], device_num: int) -> List[str]:
    """Problems with a plan: wrong strategy rank, non-dividing splits, more devices than exist."""
    bad = []
    for s in strategies:
        for (k, _), rows in zip(s.out_strategy, s.input_shapes[:1]):
            if rows[0] % k:
                bad.append(f"{s.cell} {s.op}: output rows {rows[0]} are not divisible by {k} (out_strategy)")
        if len(s.strategy) != len(s.input_shapes):
            bad.append(f"{s.cell} {s.op}: {len(s.strategy)} strategies for {len(s.input_shapes)} inputs")
            continue
        for i, (st, shape) in enumerate(zip(s.strategy, s.input_shapes)):
            if len(st) != len(shape):
                bad.append(f"{s.cell} {s.op}: input {i} has rank {len(shape)} but strategy {st}")
                continue
            for d, (k, n) in enumerate(zip(st, shape)):
                if n % k:
                    bad.append(f"{s.cell} {s.op}: input {i} dim {d} of size {n} is not divisible by {k}")
            used = 1
            for k in st:
                used *= k
            if device_num % used:
                bad.append(f"{s.cell} {s.op}: strategy {st} uses {used} devices, which does not divide {device_num}")
    return bad


def param_strategies(model, strategies: List[OpStrategy]) -> Dict[str, Dict[str, int]]:
    """Every parameter of `model` with the split its plan gives it ({mesh axis: dim}; {}: replicated)."""
    out: Dict[str, Dict[str, int]] = {p.name: {} for p in model.get_parameters()}
    for s in strategies:
        for name in s.params:
            out[name] = dict(s.param_split)
    return out


def write_strategy_listing(path: str, model, strategies: List[OpStrategy]) -> str:
    """`param_strategies` as JSON (name -> shape and split), every parameter once; temp file + rename."""
    shapes = {p.name: list(p.shape) for p in model.get_parameters()}
    doc = {name: {"shape": shapes[name], "split": split} for name, split in param_strategies(model, strategies).items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_json(path, {"params": doc})
    return path


def apply(model, par, batch: int, seq: int) -> List[OpStrategy]:
    """Set `.shard()` on the model's primitives, pipeline stages and recompute; returns the plan."""
    from ..models.deepseek.attention import MLAttention
    from ..models.deepseek.layers import Linear
    from ..models.deepseek.moe import Experts, TopkRouter
    from ..models.deepseek.v4_attention import V4Attention
    from ..ops import composite
    strategies = plan(model, par, batch, seq)
    by_cell: Dict[str, Dict[str, Tuple[Tuple[int, ...], ...]]] = {}   # cell -> op -> strategy
    out_strategy: Dict[str, Tuple[Tuple[int, ...], ...]] = {}
    for s in strategies:
        by_cell.setdefault(s.cell, {})[s.op] = s.strategy
        if s.out_strategy:
            out_strategy[s.cell] = s.out_strategy
    for name, cell in model.cells_and_names():
        st = by_cell.get(name)
        if not st:
            continue
        if isinstance(cell, (Linear, TopkRouter)):
            cell.matmul.shard(st["MatMul"], out_strategy.get(name))
        elif isinstance(cell, MLAttention):
            # the dense core and V3.2's masked-dense top-k composite get the same head split, and
            # so does the top-k kernel (its Custom primitive; each head's rows are independent)
            cores = [cell.core, getattr(getattr(cell, "sparse_core", None), "dense", None)]
            for core in [c for c in cores if isinstance(c, composite.MlaAttentionCore)]:
                core.bmm_nt.shard(st["BatchMatMul(q_nope,k_nope)"])  # the same primitive multiplies q_pe.k_pe
                core.bmm.shard(st["BatchMatMul(probs,v)"])          # with a strategy MindSpore derives
            sparse = getattr(cell, "sparse_core", None)   # the kernel's cell, when not the composite
            if sparse is not None and not isinstance(sparse, composite.SparseMlaAttentionCore):
                sparse.op.shard(st["SparseMlaAttention(top-k kernel)"])
        elif isinstance(cell, V4Attention):
            cell.bmm_nt.shard(st["BatchMatMul(q,keys)"])
            cell.bmm.shard(st["BatchMatMul(probs,keys)"])
            cell.add_sinks.shard(st["Add(sinks)"])
            cell.o_a_proj.bmm_nt.shard(st["BatchMatMul(o_a_proj groups)"])
        elif isinstance(cell, Experts) and isinstance(cell.gmm, composite.GroupedMatmul):
            cell.gmm.gather.shard(st["Gather(expert weights)"])        # gate_up and down: one primitive,
            cell.gmm.bmm.shard(st["BatchMatMul(blocks,gate_up)"])      # one strategy
    stages = layer_stage(model.config, par)
    chunk = virtual_chunk(model.config, par)
    for i, layer in enumerate(model.model.layers):
        layer.pipeline_stage = stages[i]
        if par.virtual_stages > 1:
            layer.pipeline_segment = chunk[i]  # the interleaved schedule's chunk on its stage
    apply_recompute(model, par)
    model.model.embed_tokens.pipeline_stage = 0
    model.model.norm.pipeline_stage = par.pp - 1
    if not model.tie:
        model.lm_head.pipeline_stage = par.pp - 1
    return strategies


def wrap(train_cell, par, output_dir: str):
    """The AutoParallel wrapper of a training step (Ascend only: compiling it needs HCCL)."""
    from mindspore.parallel.auto_parallel import AutoParallel
    net = train_cell
    if par.pp > 1:
        from mindspore import nn
        net = nn.PipelineCell(train_cell, par.micro_batches)
    parallel = AutoParallel(net, parallel_mode="semi_auto")
    parallel.dataset_strategy("data_parallel")
    if par.pp > 1:
        parallel.pipeline(stages=par.pp, interleave=par.virtual_stages > 1)
    if par.optimizer_shard:
        parallel.hsdp(optimizer_level="level1")
    parallel.save_param_strategy_file(os.path.join(output_dir, STRATEGY_DIR, "param_strategy.ckpt"))
    return parallel
