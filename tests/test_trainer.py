"""The config-driven training loop end to end: logs, metrics, checkpoints, falling loss."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from mindformers_ds import config
from mindformers_ds.checkpoint import manager
from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
from mindformers_ds.utils.logging import read_metrics

DEMO = os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml")
# `finished_run` (conftest.py): a 30-step fine-tune of a small V3 on the demo data


def test_run_writes_log_metrics_checkpoints_and_summary(finished_run):
    cfg, summary = finished_run
    out = cfg.train.output_dir
    log_text = open(os.path.join(out, "train.log")).read()
    assert "step 30 loss" in log_text and "saved checkpoint" in log_text
    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    for key in ("lr", "grad_norm", "tokens_per_sec", "mtp_loss", "expert_load", "imbalance"):
        assert key in steps[-1], key
    assert len(steps[-1]["expert_load"]) == 4  # 3 MoE decoder layers + the MoE layer of the MTP module
    evals = [r for r in records if r.get("type") == "eval"]
    assert any("eval_loss" in r for r in evals) and any("exact_match" in r for r in evals)
    # keep_last=2 of the checkpoints at 10, 20, 30
    assert manager.complete_steps(os.path.join(out, "checkpoints")) == [20, 30]
    ck = manager.latest(os.path.join(out, "checkpoints"))
    with SafetensorsFile(os.path.join(ck, "model.safetensors")) as f:
        assert "model.layers.1.mlp.gate.e_score_correction_bias" in f.keys()
        assert "model.layers.4.eh_proj.weight" in f.keys()   # MTP module at layer num_hidden_layers
    with SafetensorsFile(os.path.join(ck, "optimizer.safetensors")) as f:
        assert f.get_f32("optimizer.step") == 30
    assert json.load(open(os.path.join(out, "summary.json")))["checkpoint"] == ck
    assert os.path.isfile(os.path.join(out, "config.yaml"))


def test_loss_falls(finished_run):
    _, summary = finished_run
    assert summary["final_loss"] < 0.7 * summary["first_loss"]


def test_checkpoint_loads_for_inference(finished_run):
    from mindformers_ds import DeepseekForCausalLM
    cfg, _ = finished_run
    ck = manager.latest(os.path.join(cfg.train.output_dir, "checkpoints"))
    model = DeepseekForCausalLM.from_pretrained(ck)
    with SafetensorsFile(os.path.join(ck, "model.safetensors")) as f:
        for p in model.get_parameters():
            np.testing.assert_array_equal(p.asnumpy(), f.get_f32(p.name))


def test_cli_train_rejects_missing_tokenizer(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mindformers_ds", "train", "--config", DEMO,
                        "--set", "data.tokenizer=tokenizers/none/tokenizer.json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().endswith("data.tokenizer='tokenizers/none/tokenizer.json': file not found")
