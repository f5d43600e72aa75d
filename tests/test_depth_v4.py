"""Real depth (issue 16), V4: a 43-layer DeepSeek-V4 (all three attention types, hash and learned
MoE, mHC streams) trains one step with every fused op, evaluates and generates in one process,
and two msrun workers (dp=2) reproduce the step. (A file of its own so the two xdist workers
share the deep-model runs.)"""
from __future__ import annotations

import os

import pytest

from conftest import ROOT
from mindformers_ds import config
from mindformers_ds.models.deepseek import build_model
from test_depth import ATTN, V4, check_deep_runs, deep_runs, v4_depth


def test_the_43_layer_v4_config_has_every_block():
    cfg = config.load(V4, v4_depth(43), check_paths=False)
    model = build_model(cfg.model.model_config())
    layers = model.model.layers
    assert len(layers) == 43 and {layer.self_attn.layer_type for layer in layers} == set(ATTN)
    assert {layer.mlp.gate.is_hash for layer in layers} == {True, False}


@pytest.mark.timeout(2400)
def test_v4_with_43_layers_trains_in_one_process_and_under_dp2(tmp_path):
    single, dp2 = deep_runs(tmp_path, os.path.join(ROOT, "configs/deepseek_v4/finetune_tiny.yaml"), v4_depth(43))
    a = check_deep_runs(single, dp2)
    assert len(a["expert_load"]) == 43


def test_a_v4_layout_that_does_not_divide_is_refused_before_any_worker_starts(tmp_path):
    """V4 runs tp and ep now (tests/test_parallel_v4.py); a layout its fields do not divide is
    refused in one line naming the field, before any worker starts."""
    import subprocess
    import sys
    for sets, want in ((["parallel.dp=4", "parallel.ep=3"], "parallel.ep=3 must divide model.n_routed_experts=8"),
                       (["parallel.tp=4"], "parallel.tp=4 must divide model.o_groups=2")):
        r = subprocess.run([sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "4", "--", "train", "--config",
                            os.path.join(ROOT, "configs/deepseek_v4/finetune_tiny.yaml"), "--set",
                            f"train.output_dir={tmp_path}", *[a for x in sets for a in ("--set", x)]],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and not os.path.exists(os.path.join(str(tmp_path), "logs"))
        assert r.stderr.strip() == f"error: --set: {want}"
