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


def test_step_metrics_time_split_mfu_and_router_bias(finished_run):
    """Every step record splits its time, counts FLOPs, and carries the router bias; the last
    record's bias is the one the final checkpoint holds (it is read after the update)."""
    from mindformers_ds.observe.flops import train_flops_per_token
    cfg, summary = finished_run
    out = cfg.train.output_dir
    steps = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]
    flops_per_token = train_flops_per_token(cfg.model.model_config(), cfg.data.seq_length)
    for r in steps:
        parts = (r["time_data"], r["time_compute"], r["time_host"])
        assert min(parts) >= 0 and sum(parts) == pytest.approx(r["step_time"], rel=1e-6, abs=1e-6)
        assert r["tokens"] == cfg.train.micro_batch_size * cfg.data.seq_length
        assert r["model_tflops_per_step"] == pytest.approx(flops_per_token * r["tokens"] / 1e12)
        assert 0 < r["mfu"] < 1 and r["peak_rss_mb"] > 100
    assert steps[0].get("includes_compile") and not steps[1].get("includes_compile")
    assert summary["mean_tokens_per_sec"] > 0 and 0 < summary["mean_mfu"] < 1
    # compilation lands in the first step's compute time, so it is the longest step
    assert steps[0]["time_compute"] > max(r["time_compute"] for r in steps[1:])
    bias = steps[-1]["router_bias"]
    assert len(bias) == 4 and all(len(b) == cfg.model.n_routed_experts for b in bias)
    ck = manager.latest(os.path.join(out, "checkpoints"))
    with SafetensorsFile(os.path.join(ck, "model.safetensors")) as f:
        for layer, b in zip((1, 2, 3, 4), bias):
            np.testing.assert_allclose(b, f.get_f32(f"model.layers.{layer}.mlp.gate.e_score_correction_bias"),
                                       atol=1e-6)
    assert steps[0]["router_bias"] != steps[-1]["router_bias"]  # the balancing moved it


def test_profile_window_writes_trace_and_top_ops(finished_run):
    cfg, summary = finished_run
    prof = os.path.join(cfg.train.output_dir, "profile")
    traces = [os.path.join(d, f) for d, _, fs in os.walk(prof) for f in fs if f == "trace_view.json"]
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 1000
    top = json.load(open(os.path.join(prof, "top_ops.json")))
    assert top and sum(r["share"] for r in top) <= 1.0 + 1e-9
    assert any("MatMul" in r["op_type"] for r in top)  # a transformer's time goes to matmuls
    assert summary["profile_top_ops"] == top[:10]


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
