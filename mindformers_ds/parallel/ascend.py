"""The Ascend executor: the layout table as MindSpore semi-auto-parallel strategies.

The model is built whole (no local slicing); every MatMul/BatchMatMul primitive gets a
`.shard()` strategy derived from the layout of the weight it multiplies, layers get their
`pipeline_stage`, recompute is set per layer, and the training step is wrapped in
`AutoParallel(..., "semi_auto")` with pipeline stages, optimizer sharding (hsdp), the
dataset strategy and a parameter strategy file (for `transform_checkpoints` /
`unified_safetensors`). MindSpore refuses this on CPU ("Invalid backend: CPU"), so here it
is checked statically: every strategy has the rank of its operator's inputs and divides
their shapes, and stand-alone mode with the strategies set computes the same logits.

Routed experts: the composite grouped matmul gathers expert weights per token block, so it
is sharded over data-parallel blocks here; expert parallelism on Ascend needs the fused
MoE kernels (token permute + GroupedMatmul with all-to-all), see ops/.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .layout import ParamLayout, layer_stage, layout_table


@dataclass(frozen=True)
class OpStrategy:
    cell: str
    op: str
    strategy: Tuple[Tuple[int, ...], ...]
    input_shapes: Tuple[Tuple[int, ...], ...]


def _linear_strategy(layout: ParamLayout, dp: int, tp: int):
    if layout.split.get("tp") == 0:
        return ((dp, 1), (tp, 1))        # column parallel: output rows over tp
    if layout.split.get("tp") == 1:
        return ((dp, tp), (1, tp))       # row parallel: the contraction over tp (partial sums reduced)
    return ((dp, 1), (1, 1))             # replicated weight, data-parallel rows


def plan(model, par, batch: int, seq: int) -> List[OpStrategy]:
    """Strategies for every matmul of `model` (built whole) under `par`, with the input shapes
    they see for a [batch, seq] micro-batch."""
    from ..models.deepseek.attention import MLAttention
    from ..models.deepseek.layers import Linear
    from ..models.deepseek.moe import Experts, TopkRouter
    c = model.config
    table = layout_table(c, par)
    dp, tp = par.dp, par.tp
    tokens = batch * seq
    out: List[OpStrategy] = []
    for name, cell in model.cells_and_names():
        if isinstance(cell, Linear):
            layout = table[f"{name}.weight"]
            out.append(OpStrategy(name, "MatMul", _linear_strategy(layout, dp, tp),
                                  ((tokens, cell.in_features), (cell.out_features, cell.in_features))))
        elif isinstance(cell, TopkRouter):
            out.append(OpStrategy(name, "MatMul", ((dp, 1), (1, 1)),
                                  ((tokens, c.hidden_size), (c.n_routed_experts, c.hidden_size))))
        elif isinstance(cell, MLAttention):
            h, dn, dr, dv = cell.num_heads, cell.nope_dim, cell.rope_dim, cell.v_dim
            out.append(OpStrategy(name, "BatchMatMul(q_nope,k_nope)", ((dp, tp, 1, 1), (dp, tp, 1, 1)),
                                  ((batch, h, seq, dn), (batch, h, seq, dn))))
            out.append(OpStrategy(name, "BatchMatMul(q_pe,k_pe)", ((dp, tp, 1), (dp, 1, 1)),
                                  ((batch, h * seq, dr), (batch, seq, dr))))
            out.append(OpStrategy(name, "BatchMatMul(probs,v)", ((dp, tp, 1, 1), (dp, tp, 1, 1)),
                                  ((batch, h, seq, seq), (batch, h, seq, dv))))
        elif isinstance(cell, Experts):
            from ..ops.composite import moe_padded_rows
            rows = moe_padded_rows(tokens * c.num_experts_per_tok, c.n_routed_experts, cell.block)
            blocks = rows // cell.block
            inter, hid = c.moe_intermediate_size, c.hidden_size
            out.append(OpStrategy(name, "BatchMatMul(blocks,gate_up)", ((dp, 1, 1), (dp, 1, 1)),
                                  ((blocks, cell.block, hid), (blocks, 2 * inter, hid))))
            out.append(OpStrategy(name, "BatchMatMul(blocks,down)", ((dp, 1, 1), (dp, 1, 1)),
                                  ((blocks, cell.block, inter), (blocks, hid, inter))))
    return out


def check(strategies: List[OpStrategy], device_num: int) -> List[str]:
    """Problems with a plan: wrong strategy rank, non-dividing splits, more devices than exist."""
    bad = []
    for s in strategies:
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


def apply(model, par, batch: int, seq: int) -> List[OpStrategy]:
    """Set `.shard()` on the model's primitives, pipeline stages and recompute; returns the plan."""
    from ..models.deepseek.attention import MLAttention
    from ..models.deepseek.layers import Linear
    from ..models.deepseek.moe import Experts, TopkRouter
    from ..ops import composite
    strategies = plan(model, par, batch, seq)
    by_cell: Dict[str, List[OpStrategy]] = {}
    for s in strategies:
        by_cell.setdefault(s.cell, []).append(s)
    for name, cell in model.cells_and_names():
        st = by_cell.get(name)
        if not st:
            continue
        if isinstance(cell, (Linear, TopkRouter)):
            cell.matmul.shard(st[0].strategy)
        elif isinstance(cell, MLAttention) and isinstance(cell.core, composite.MlaAttentionCore):
            cell.core.bmm_nt.shard(st[0].strategy)  # the same primitive multiplies q_pe.k_pe with a
            cell.core.bmm.shard(st[2].strategy)     # strategy MindSpore derives from q_nope.k_nope's
        elif isinstance(cell, Experts):
            composite._bmm_nt.shard(st[0].strategy)
    stages = layer_stage(model.config, par)
    recompute = par.recompute
    for i, layer in enumerate(model.model.layers):
        layer.pipeline_stage = stages[i]
        per_layer = recompute[i] if isinstance(recompute, list) and len(recompute) == len(stages) else \
            recompute[stages[i]] if isinstance(recompute, list) else recompute
        if per_layer:
            layer.recompute()
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
        parallel.pipeline(stages=par.pp)
    if par.optimizer_shard:
        parallel.hsdp(optimizer_level="level1")
    parallel.save_param_strategy_file(os.path.join(output_dir, "strategy", "param_strategy.ckpt"))
    return parallel
