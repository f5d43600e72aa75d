"""The Ascend executor's strategies agree with the explicit executor's slicing, parameter by
parameter, for every cluster preset in parallel/ and every family they name (V3.2 on the V3
layout too): both are walked from the one layout table.

The presets' models are far too big to build here, so each is checked twice: at full size from
the blocks' facts (every split of the layout table divides its dimension, pipeline stages), and
as a miniature built by the real model code that keeps every count a strategy splits (heads,
experts, the layout's dp/tp/ep) and shrinks the widths, on which the Ascend plan (the same code
`mfds train --set parallel.executor=ascend` runs) and the explicit executor's `parallelize` are
compared with the table."""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import pytest

from conftest import ROOT
from mindformers_ds import config
from mindformers_ds.models.deepseek import build_model
from mindformers_ds.parallel import ascend
from mindformers_ds.parallel.comm import ParallelContext
from mindformers_ds.parallel.layout import check_divisible, layout_table
from mindformers_ds.parallel.parallelize import parallelize
from mindformers_ds.parallel.presets import load_preset

PRESETS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "parallel", "*.yaml")))
V32_ON_V3 = ("parallel/v3_671b_16x8_a2.yaml", "configs/deepseek_v32/671b.yaml", ())
V4_WITH_TP = ("parallel/v4_flash_32x16_a3.yaml", None,   # heads by groups, sequence parallel
              ("parallel.dp=64", "parallel.tp=2", "parallel.sequence_parallel=true"))
CASES = [(p, None, ()) for p in PRESETS] + [V32_ON_V3, V4_WITH_TP]


def miniature(c):
    """`c` with its widths shrunk and its split counts (heads, experts, groups) kept."""
    layers = min(c.num_hidden_layers, c.first_k_dense_replace + 2, 6) if not c.is_v4 else min(c.num_hidden_layers, 6)
    small = dict(hidden_size=32, intermediate_size=16, moe_intermediate_size=8, vocab_size=64, num_hidden_layers=layers,
                 qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4, kv_lora_rank=8,
                 q_lora_rank=None if c.q_lora_rank is None else 8, index_head_dim=4, moe_block_size=4)
    if c.is_v4:
        small.update(head_dim=8, o_lora_rank=8, layer_types=c.layer_types[:layers],
                     mlp_layer_types=c.mlp_layer_types[:layers])
    mini = dataclasses.replace(c, **small)
    assert mini.problems() == [], mini.problems()
    return mini


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "a parameter is listed twice"
    return dict(pairs)


@pytest.mark.parametrize("preset,model,sets", CASES, ids=[" ".join([p, m or "", *s]).strip() for p, m, s in CASES])
def test_ascend_strategies_agree_with_the_explicit_slicing(preset, model, sets, tmp_path):
    run = config.load(os.path.join(ROOT, model), check_paths=False) if model else None
    p = load_preset(os.path.join(ROOT, preset), root=ROOT, run=run, overrides=sets)
    par, full = p.run.parallel, p.run.model.model_config()
    assert check_divisible(layout_table(full, par), par) == []      # full size: every split divides

    flat = dataclasses.replace(par, pp=1, pp_offset=None)           # stages own whole layers: not a split
    c = miniature(full)
    model_whole = build_model(c)
    table = layout_table(c, flat)
    strategies = ascend.plan(model_whole, flat, p.micro_batch_size * par.dp, p.seq_length)  # the real shapes
    assert ascend.check(strategies, par.dp * par.tp) == []
    got = ascend.param_strategies(model_whole, strategies)
    assert got == {name: layout.split for name, layout in table.items()}
    if par.ep > 1 and c.n_routed_experts:
        assert any(split == {"ep": 0} for split in got.values())    # experts really are split on Ascend
    if par.tp > 1:
        assert any(split == {"tp": 1} for split in got.values())
    if par.sequence_parallel and par.tp > 1:
        # sequence parallelism: each block's row-parallel output projection (not the MoE's shared
        # experts, whose sum with the routed ones arrives whole) reduce-scatters its token rows
        out_proj = "o_b_proj" if c.is_v4 else "o_proj"
        expected = {f"model.layers.{i}.self_attn.{out_proj}" for i in range(c.num_hidden_layers + c.mtp_depth)}
        expected |= {f"model.layers.{i}.mlp.down_proj" for i in range(c.num_hidden_layers + c.mtp_depth)
                     if not c.is_moe_layer(i)}
        rows = {s.cell: s.out_strategy for s in strategies if s.out_strategy}
        assert rows == {name: ((par.dp * par.tp, 1),) for name in expected}

    listing = ascend.write_strategy_listing(str(tmp_path / "strategy" / "param_layout.json"), model_whole, strategies)
    with open(listing, encoding="utf-8") as f:
        doc = json.load(f, object_pairs_hook=_no_duplicate_keys)
    assert sorted(doc["params"]) == sorted(table)
    assert all(doc["params"][n]["split"] == {a: d for a, d in table[n].split.items()} for n in table)

    if par.dp % par.ep == 0:   # a layout the explicit executor runs: its slices are the table's
        rank = par.dp * par.tp - 1
        ctx = ParallelContext(par.dp * par.tp, rank, par.dp, par.tp, par.ep)
        model_split = build_model(c)
        parallelize(model_split, table, ctx)
        assert {q.name: tuple(q.shape) for q in model_split.get_parameters()} == \
            {n: t.local_shape(ctx.sizes()) for n, t in table.items()}
