"""`mfds plan`: memory against a measured peak RSS, parameter placement against hand counts of
DeepSeek-V3-671B layouts, communication volumes, the layout search and its error messages."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from mindformers_ds import config
from mindformers_ds.errors import ConfigError
from mindformers_ds.models.deepseek.shapes import parameter_count
from mindformers_ds.parallel.layout import layout_table, mesh_sizes
from mindformers_ds.parallel.presets import load_preset
from mindformers_ds.plan.estimate import plan_layout
from mindformers_ds.plan.memory import params_per_device
from mindformers_ds.plan.search import search

V3 = "configs/deepseek_v3/deepseek_v3_671b.yaml"


def preset(name, run=None):
    return load_preset(os.path.join(ROOT, "parallel", name), ROOT, run)


def plan_of(p, model=None):
    return plan_layout(model or p.run.model.model_config(), p.run.parallel, p.cluster, p.micro_batch_size,
                       p.seq_length, p.global_batch_size, p.run.lora)


@pytest.mark.timeout(600)
def test_tiny_memory_estimate_is_within_20_percent_of_the_measured_peak_rss():
    """cpu_single.yaml's two constants were measured at seq 64; this is seq 128 x batch 8."""
    p = preset("cpu_single.yaml")
    assert (p.seq_length, p.micro_batch_size) == (128, 8)
    est = plan_of(p).peak_memory_gb * 1024
    out = subprocess.run([sys.executable, "-m", "mindformers_ds.observe.measure", "--config",
                          os.path.join(ROOT, "configs/deepseek_v3/tiny.yaml"), "--set", "data.seq_length=128",
                          "--batch", "8", "--steps", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    print(f"planner {est:.0f} MB, measured peak RSS {measured:.0f} MB")
    assert abs(est - measured) / measured < 0.20


def _layout(model, **kw):
    run = config.load(os.path.join(ROOT, V3), check_paths=False)
    return dataclasses.replace(run.parallel, **kw)


def test_v3_671b_stage0_params_of_deepseeks_own_layout_match_a_hand_count():
    """DeepSeek-V3's pre-training layout (technical report, 2048 GPUs): 16-way pipeline, 64-way
    expert parallelism, ZeRO-1 data parallelism, no tensor parallelism. 61 layers over 16
    stages: 13 stages of 4 layers, 3 of 3. Stage 0 holds the embedding, the 3 dense layers
    and one MoE layer with 256/64 = 4 experts."""
    model = config.load(os.path.join(ROOT, V3), check_paths=False).model
    par = _layout(model, dp=128, tp=1, ep=64, pp=16, micro_batches=16, pp_offset=[1] * 13 + [0] * 3)
    h = 7168
    attn = h * 1536 + 1536 + 1536 * 128 * 192 + h * 576 + 512 + 512 * 128 * 256 + 128 * 128 * h
    assert attn == 187107328
    dense_layer = attn + 2 * h + 3 * h * 18432
    moe_layer = attn + 2 * h + 256 * h + 256 + 4 * 3 * h * 2048 + 3 * h * 2048   # 4 routed + 1 shared expert
    stage0 = 129280 * h + 3 * dense_layer + moe_layer
    got = params_per_device(model, par)
    assert got[0].total == stage0 == 3086287104
    assert got[0].experts == 4 * 3 * h * 2048


@pytest.mark.parametrize("name", ["v3_671b_64x16_a3.yaml", "v3_671b_16x8_a2.yaml", "v2_lite_1x8_a2.yaml",
                                  "v4_flash_32x16_a3.yaml", "v4_pro_128x16_a3.yaml"])
def test_every_parameter_is_held_exactly_once_across_the_shards(name):
    p = preset(name)
    model, par = p.run.model.model_config(), p.run.parallel
    sizes = mesh_sizes(par)
    held = 0
    for lay in layout_table(model, par).values():
        n = 1
        for d in lay.local_shape(sizes):
            n *= d
        for axis in lay.split:
            n *= sizes[axis]
        held += n
    assert held == parameter_count(model)


def test_671b_presets_full_training_fits_on_a3_not_on_128_910b_where_lora_does():
    a3 = plan_of(preset("v3_671b_64x16_a3.yaml"))
    assert a3.fits and a3.peak_memory_gb < 64
    lora = preset("v3_671b_16x8_a2.yaml")
    assert lora.run.lora.enabled and plan_of(lora).fits
    full_run = config.load(os.path.join(ROOT, V3), check_paths=False)
    full = preset("v3_671b_16x8_a2.yaml", full_run)
    plan = plan_of(full)
    assert not plan.fits
    # fp32 weights + grads + AdamW moments of the worst stage, sharded moments over dp (dense) and
    # over dp*tp/ep = 1 (experts): the estimate is these closed forms plus activations and runtime
    worst = max(plan.memory, key=lambda m: m.total)
    sp = params_per_device(full.run.model.model_config(), full.run.parallel)[worst.stage]
    assert worst.weights == worst.grads == 4 * sp.total
    assert worst.optimizer == 8 * (sp.dense / 4 + sp.experts / 1)


def test_communication_volume_of_the_v2_lite_preset_is_the_ring_all_reduce():
    p = preset("v2_lite_1x8_a2.yaml")
    plan = plan_of(p)
    sp = params_per_device(p.run.model.model_config(), p.run.parallel)[0]
    # dense gradients all-reduced over dp=8 (2*(8-1)/8 of 4 bytes each); experts are sharded
    # over all 8 devices (dp*tp/ep = 1 replica), so their gradients need no reduction
    assert plan.comm_bytes["dp"] == pytest.approx(2 * 7 / 8 * 4 * sp.dense)
    assert plan.comm_bytes["tp"] == 0 and plan.comm_bytes["pp"] == 0
    m = p.run.model.model_config()
    moe_layers = sum(m.is_moe_layer(i) for i in range(m.num_hidden_layers + m.num_nextn_predict_layers))
    per_micro = moe_layers * 4 * 7 / 8 * 2 * 4096 * m.num_experts_per_tok * m.hidden_size
    assert plan.comm_bytes["ep"] == pytest.approx(8 * per_micro)  # 64 / (1 * 8) micro-batches


def test_search_ranks_valid_layouts_by_step_time():
    p = preset("v2_lite_1x8_a2.yaml")
    ranked = search(p, limit=50)
    assert len(ranked) >= 5
    times = [r.step_s for r in ranked]
    assert times == sorted(times)
    for r in ranked:
        lay = r.layout
        assert lay["dp"] * lay["tp"] * lay["pp"] == 8 and r.fits and r.peak_memory_gb <= 64
        assert 64 % lay["ep"] == 0 and (lay["dp"] * lay["tp"]) % lay["ep"] == 0
    own = {k: p.run.parallel.__dict__[k] for k in ("dp", "tp", "ep", "pp")}
    assert any({k: r.layout[k] for k in own} == own for r in ranked)


def test_plan_cli_prints_the_plan_and_refuses_a_layout_that_does_not_fill_the_cluster(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "mindformers_ds", "plan", "--cluster", "parallel/v2_lite_1x8_a2.yaml",
                         "--json"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["plan"]["fits"] and doc["plan"]["layout"]["ep"] == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(os.path.join(ROOT, "parallel/v2_lite_1x8_a2.yaml")).read().replace("dp: 8", "dp: 2"))
    r = subprocess.run([sys.executable, "-m", "mindformers_ds", "plan", "--cluster", str(bad)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert str(bad) in line and "parallel" in line and "8" in line


@pytest.mark.parametrize("name", ["v4_flash_32x16_a3.yaml", "v4_pro_128x16_a3.yaml"])
def test_v4_presets_fit_and_count_the_v4_model(name):
    from mindformers_ds.observe.flops import parameter_counts
    p = preset(name)
    model = p.run.model.model_config()
    assert model.is_v4
    plan = plan_of(p)
    assert plan.fits and plan.peak_memory_gb < 64
    counts = parameter_counts(model)
    # every parameter's place: the shape table equals transformers' V4 at the same config
    assert sum(sp.total for sp in params_per_device(model, p.run.parallel)) > 0
    if "flash" in name:  # transformers' V4-Flash defaults: 284B total, 13B active
        assert round(counts["total"] / 1e9) == 284 and round(counts["active"] / 1e9) == 13


def test_the_trainers_memory_check_uses_the_measured_cpu_constants():
    """train/preflight.py refuses runs with the constants parallel/cpu_single.yaml states."""
    from mindformers_ds.train import preflight
    c = preset("cpu_single.yaml").cluster
    assert (preflight.CPU_RUNTIME_GB, preflight.CPU_ACTIVATION_FACTOR, preflight.CPU_RECOMPUTE_ACTIVATION_FACTOR) == \
        (c.runtime_overhead_gb, c.activation_factor, c.recompute_activation_factor)
    assert preflight.CPU_FAMILY_CONSTANTS == c.families == preset("cpu_2core.yaml").cluster.families
    assert c.for_model(preset("v4_flash_32x16_a3.yaml").run.model.model_config()).activation_factor == 12.7


def test_a_family_constant_the_planner_does_not_know_is_refused_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(os.path.join(ROOT, "parallel/cpu_single.yaml")).read().replace(
        "deepseek_v4: {runtime_overhead_gb", "deepseek_v4: {runtime_gb"))
    with pytest.raises(ConfigError) as e:
        load_preset(str(bad), root=ROOT)
    assert str(e.value).startswith(f"{bad}: cluster.families.deepseek_v4 sets ['runtime_gb']; it may set only")
