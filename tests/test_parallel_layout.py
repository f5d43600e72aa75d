"""The layout table, the Ascend strategies derived from it, cluster presets, and offline
checkpoint split/merge (no msrun needed)."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import mindspore as ms

from conftest import ROOT, random_ids
from mindformers_ds import config
from mindformers_ds.config import ConfigError
from mindformers_ds.models.deepseek import DeepseekForCausalLM, build_model
from mindformers_ds.models.deepseek.shapes import parameter_count, parameter_specs
from mindformers_ds.parallel import ascend
from mindformers_ds.parallel.comm import ParallelContext
from mindformers_ds.parallel.layout import check_divisible, layer_stage, layout_table
from mindformers_ds.parallel.parallelize import parallelize
from mindformers_ds.parallel.presets import load_preset
from mindformers_ds.parallel.shards import merge_checkpoint, split_checkpoint

TINY = os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml")


def cfg_with(**par):
    return config.load(TINY, [f"parallel.{k}={v}" for k, v in par.items()])


def test_shapes_equal_the_models_parameters():
    for rel in ("configs/deepseek_v3/tiny.yaml", "configs/deepseek_v2_lite/tiny.yaml"):
        c = config.load(os.path.join(ROOT, rel), check_paths=False).model.model_config()
        model = DeepseekForCausalLM(c)
        assert {p.name: tuple(p.shape) for p in model.get_parameters()} == \
            {n: tuple(s) for n, s, _ in parameter_specs(c)}
        assert model.num_parameters() == parameter_count(c)


def test_table_splits_by_role():
    cfg = cfg_with(dp=2, tp=2, ep=2)
    t = layout_table(cfg.model, cfg.parallel)
    assert t["model.layers.0.self_attn.q_b_proj.weight"].split == {"tp": 0}
    assert t["model.layers.0.self_attn.kv_b_proj.weight"].split == {"tp": 0}
    assert t["model.layers.0.self_attn.o_proj.weight"].split == {"tp": 1}
    assert t["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"].split == {}
    assert t["model.layers.1.mlp.experts.gate_up_proj"].split == {"ep": 0}
    assert t["model.layers.1.mlp.shared_experts.down_proj.weight"].split == {"tp": 1}
    assert t["model.layers.1.mlp.gate.weight"].split == {} and t["model.norm.weight"].split == {}
    assert check_divisible(t, cfg.parallel) == []


@pytest.mark.parametrize("rel", ["configs/deepseek_v3/parallel_tiny.yaml", "configs/deepseek_v4/tiny.yaml"])
def test_local_model_has_the_tables_local_shapes(rel):
    """A rank's model (built whole, then split from outside by the executor from the table;
    collectives are identities without groups) holds exactly the slices the table assigns it,
    under the same names."""
    for par in (dict(tp=2), dict(dp=2, ep=2), dict(dp=2, tp=2, ep=2)):
        cfg = config.load(os.path.join(ROOT, rel), [f"parallel.{k}={v}" for k, v in par.items()], check_paths=False)
        p = cfg.parallel
        ctx = ParallelContext(p.dp * p.tp, p.dp * p.tp - 1, p.dp, p.tp, p.ep)
        model = build_model(cfg.model.model_config())
        t = layout_table(cfg.model, p)
        done = parallelize(model, t, ctx)
        assert ("expert-parallel experts" in done) == (p.ep > 1) and ("column-parallel linear" in done) == (p.tp > 1)
        assert sorted(q.name for q in model.get_parameters()) == sorted(t)
        for q in model.get_parameters():
            assert tuple(q.shape) == t[q.name].local_shape(ctx.sizes()), (par, q.name)


def test_671b_layout_and_stages():
    cfg = config.load(os.path.join(ROOT, "configs/deepseek_v3/finetune_671b_lora.yaml"), check_paths=False)
    t = layout_table(cfg.model, cfg.parallel)
    assert check_divisible(t, cfg.parallel) == []
    stages = layer_stage(cfg.model, cfg.parallel)
    assert [stages.count(s) for s in range(4)] == [16, 16, 15, 15]   # 14 decoder layers + MTP on the last
    assert t["model.layers.61.eh_proj.weight"].stage == 3 and t["model.embed_tokens.weight"].stage == 0
    with pytest.raises(ConfigError, match="parallel.tp=3 must divide model.num_attention_heads=128"):
        config.load(os.path.join(ROOT, "configs/deepseek_v3/finetune_671b_lora.yaml"), ["parallel.tp=3"],
                    check_paths=False)


@pytest.mark.parametrize("par,devices", [(dict(dp=2, tp=2), 4), (dict(dp=4, tp=2), 8), (dict(tp=4), 4)])
def test_ascend_strategies_are_consistent_and_change_nothing_standalone(par, devices):
    cfg = cfg_with(**par)
    model = DeepseekForCausalLM(cfg.model.model_config())
    model.init_weights(0)
    ids = ms.Tensor(random_ids(4, 16, cfg.model.vocab_size))
    before = model(ids).asnumpy()
    strategies = ascend.apply(model, cfg.parallel, batch=4, seq=16)
    assert ascend.check(strategies, devices) == []
    assert any(s.strategy == ((cfg.parallel.dp, 1), (cfg.parallel.tp, 1)) for s in strategies)   # column parallel
    assert any(s.strategy == ((cfg.parallel.dp, cfg.parallel.tp), (1, cfg.parallel.tp)) for s in strategies)  # row

    class Fresh(ms.nn.Cell):   # a new top-level cell: compiled with the strategies set
        def __init__(self, m):
            super().__init__(auto_prefix=False)
            self.m = m

        def construct(self, x):
            return self.m(x)
    np.testing.assert_array_equal(Fresh(model)(ids).asnumpy(), before)


def test_strategy_check_catches_bad_plans():
    s = [ascend.OpStrategy("x", "MatMul", ((2, 1), (3, 1)), ((8, 4), (16, 4)))]
    assert any("not divisible by 3" in p for p in ascend.check(s, 6))
    s = [ascend.OpStrategy("x", "MatMul", ((2, 1, 1), (1, 1)), ((8, 4), (16, 4)))]
    assert any("has rank 2 but strategy" in p for p in ascend.check(s, 2))


def test_presets_validate():
    presets = sorted(glob.glob(os.path.join(ROOT, "parallel", "*.yaml")))
    assert len(presets) >= 3
    for p in presets:
        pre = load_preset(p, ROOT)
        assert pre.run.parallel.world_size == pre.cluster.devices


def test_bad_preset(tmp_path):
    text = open(os.path.join(ROOT, "parallel/v2_lite_1x8_a2.yaml")).read().replace("dp: 8", "dp: 4")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match="parallel.ep=8 must divide parallel.dp\\*parallel.tp=4"):
        load_preset(str(bad), ROOT)


def test_split_and_merge_round_trip(finished_run, tmp_path):
    from mindformers_ds.checkpoint import manager
    from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
    cfg, _ = finished_run
    src = manager.latest(os.path.join(cfg.train.output_dir, "checkpoints"))
    run = config.load(os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml"),
                      ["model.hidden_size=64", "model.moe_intermediate_size=32", "model.intermediate_size=128",
                       "parallel.dp=2", "parallel.tp=2", "parallel.ep=2"])
    split_checkpoint(src, str(tmp_path / "shards"), run)
    # the checkpoint's tokenizer and run config travel with the shards
    assert sorted(os.listdir(tmp_path / "shards")) == ["config.json", "layout.json", "manifest.json", "rank_0", "rank_1",
                                                         "rank_2", "rank_3", "run_config.yaml", "tokenizer.json",
                                                         "trainer_state.json"]
    merge_checkpoint(str(tmp_path / "shards"), str(tmp_path / "merged"))
    for fname in ("model.safetensors", "optimizer.safetensors"):
        with SafetensorsFile(os.path.join(src, fname)) as a, SafetensorsFile(str(tmp_path / "merged" / fname)) as b:
            assert a.keys() == b.keys()
            for n in a.keys():
                assert a.get(n)[1].tobytes() == b.get(n)[1].tobytes(), n
