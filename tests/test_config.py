"""Run configs: inheritance, overrides, HF config.json, and one-line errors naming file and field."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from mindformers_ds import config
from mindformers_ds.config import ConfigError

TINY = os.path.join(ROOT, "configs/deepseek_v3/tiny.yaml")


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def child(tmp_path, extra: dict, name="run.yaml") -> str:
    return write(tmp_path, name, {"base_config": TINY, **extra})


def error_of(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as e:
        config.load(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_shipped_configs_load_and_validate():
    for rel in ("configs/deepseek_v3/tiny.yaml", "configs/deepseek_v3/finetune_tiny.yaml",
                "configs/deepseek_v2_lite/tiny.yaml", "configs/deepseek_v3/deepseek_v3_671b.yaml",
                "configs/deepseek_v2_lite/deepseek_v2_lite.yaml"):
        cfg = config.load(os.path.join(ROOT, rel))
        assert cfg.model.problems() == []


def test_real_hardware_configs_validate():
    for rel in ("configs/deepseek_v3/finetune_671b_lora.yaml", "configs/deepseek_v2_lite/finetune.yaml"):
        cfg = config.load(os.path.join(ROOT, rel), check_paths=False)
        assert cfg.model.compute_dtype == "bfloat16" and cfg.parallel.world_size in (8, 128)
    with pytest.raises(ConfigError, match="data.train_file='/data/sft/train.jsonl': file not found"):
        config.load(os.path.join(ROOT, "configs/deepseek_v3/finetune_671b_lora.yaml"))


def test_published_hyper_parameters():
    v3 = config.load(os.path.join(ROOT, "configs/deepseek_v3/deepseek_v3_671b.yaml")).model
    assert (v3.hidden_size, v3.num_hidden_layers, v3.n_routed_experts, v3.num_experts_per_tok) == (7168, 61, 256, 8)
    assert (v3.q_lora_rank, v3.kv_lora_rank, v3.first_k_dense_replace, v3.n_group, v3.topk_group) == (1536, 512, 3, 8, 4)
    assert v3.rope_scaling.factor == 40 and v3.num_nextn_predict_layers == 1 and v3.vocab_size == 129280
    lite = config.load(os.path.join(ROOT, "configs/deepseek_v2_lite/deepseek_v2_lite.yaml")).model
    assert lite.q_lora_rank is None and lite.scoring_func == "softmax" and lite.topk_method == "greedy"
    assert (lite.hidden_size, lite.num_hidden_layers, lite.n_routed_experts, lite.n_shared_experts) == (2048, 27, 64, 2)
    assert lite.rope_scaling.mscale_all_dim == 0.707


def test_inheritance_and_overrides(tmp_path):
    path = child(tmp_path, {"train": {"max_steps": 7}, "optimizer": {"lr": 0.5}})
    cfg = config.load(path, ["train.max_steps=10", "optimizer.lr=1e-4", "model.fused_ops=[rms_norm]"])
    assert cfg.train.max_steps == 10 and cfg.optimizer.lr == 1e-4 and cfg.model.fused_ops == ["rms_norm"]
    assert cfg.model.hidden_size == 192          # from the base
    assert cfg.train.micro_batch_size == 8       # dataclass default
    with pytest.raises(Exception):
        cfg.train.max_steps = 3                  # frozen


def test_unknown_key_names_file_and_field(tmp_path):
    path = child(tmp_path, {"train": {"max_step": 10}})
    assert error_of(path) == f"{path}: train.max_step is not a known field of section 'train' (did you mean train.max_steps?)"


def test_wrong_type(tmp_path):
    path = child(tmp_path, {"train": {"max_steps": "ten"}})
    assert error_of(path) == f"{path}: train.max_steps='ten' must be an integer"


def test_non_dividing_groups(tmp_path):
    path = child(tmp_path, {"model": {"n_group": 3}})
    assert error_of(path) == f"{path}: model.n_group=3 must divide model.n_routed_experts=8"


def test_error_names_the_base_file_that_set_the_value(tmp_path):
    base = write(tmp_path, "base.yaml", {"base_config": TINY, "model": {"topk_group": 9}})
    path = write(tmp_path, "run.yaml", {"base_config": "base.yaml", "train": {"max_steps": 3}})
    assert error_of(path) == f"{base}: model.topk_group=9 must be in [1, model.n_group=4]"


def test_override_errors_name_the_command_line(tmp_path):
    path = child(tmp_path, {})
    assert error_of(path, ["model.num_experts_per_tok=7"]).startswith(
        "--set: model.num_experts_per_tok=7 must be in [1, 4]")


def test_missing_files(tmp_path):
    assert error_of(str(tmp_path / "nope.yaml")).endswith("not found")
    path = write(tmp_path, "run.yaml", {"base_config": "missing_base.yaml"})
    assert "base_config='missing_base.yaml'" in error_of(path)
    path = child(tmp_path, {"data": {"train_file": "data/does_not_exist.jsonl"}})
    assert error_of(path) == f"{path}: data.train_file='data/does_not_exist.jsonl': file not found"


def test_malformed_yaml(tmp_path):
    path = write(tmp_path, "bad.yaml", "model:\n  hidden_size: [1, 2\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}: malformed YAML at line")


def test_bad_choices_and_ranges(tmp_path):
    assert "lr_schedule.type='exp' must be one of" in error_of(child(tmp_path, {"lr_schedule": {"type": "exp"}}))
    assert "model.topk_method='top1' must be one of" in error_of(child(tmp_path, {"model": {"topk_method": "top1"}}))
    assert "data.seq_length=1024 must be <= model.max_position_embeddings=256" in error_of(
        child(tmp_path, {"data": {"seq_length": 1024}}))
    assert "model.scoring_func='softmax' must be 'sigmoid'" in error_of(child(tmp_path, {"model": {"scoring_func": "softmax"}}))
    assert "optimizer.betas=[0.9] must be two numbers" in error_of(child(tmp_path, {"optimizer": {"betas": [0.9]}}))
    assert error_of(child(tmp_path, {"model": {"rope_scaling": {"factor": 0.5}}})).endswith(
        "model.rope_scaling.factor=0.5 must be >= 1")


def test_parallel_layout_errors(tmp_path):
    assert error_of(child(tmp_path, {"parallel": {"tp": 3}})).endswith(
        "parallel.tp=3 must divide model.num_attention_heads=4")
    assert error_of(child(tmp_path, {"parallel": {"ep": 3}})).endswith(
        "parallel.ep=3 must divide model.n_routed_experts=8")
    assert "parallel.pp=3 does not divide model.num_hidden_layers=4" in error_of(child(tmp_path, {"parallel": {"pp": 3}}))


def test_hf_config_json(tmp_path, hf_v2_dir):
    path = child(tmp_path, {"model": {"hf_config": os.path.join(hf_v2_dir, "config.json"), "compute_dtype": "float32"}})
    cfg = config.load(path)
    with open(os.path.join(hf_v2_dir, "config.json")) as f:
        hf = json.load(f)
    assert cfg.model.model_type == "deepseek_v2" and cfg.model.q_lora_rank is None
    assert cfg.model.hidden_size == hf["hidden_size"] and cfg.model.scoring_func == "softmax"
    assert cfg.model.rope_scaling.mscale == hf["rope_parameters"]["mscale"]
    # a bad value inside config.json names config.json
    hf["n_group"] = 3
    bad = tmp_path / "bad_config.json"
    bad.write_text(json.dumps(hf))
    assert error_of(child(tmp_path, {"model": {"hf_config": str(bad)}}, "run2.yaml")) == \
        f"{bad}: n_group=3 must divide n_routed_experts=8"
    # the 4.x layout (rope_theta + rope_scaling with `type`) is read too
    legacy = {k: v for k, v in hf.items() if k != "rope_parameters"}
    legacy.update(n_group=1, rope_theta=5000.0, rope_scaling={"type": "yarn", "factor": 8, "mscale": 1.0,
                                                              "original_max_position_embeddings": 32})
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    m = config.load(child(tmp_path, {"model": {"hf_config": str(tmp_path / "legacy.json")}}, "run3.yaml")).model
    assert m.rope_theta == 5000.0 and m.rope_scaling.factor == 8


def test_cli_prints_one_line_and_exit_code_2(tmp_path):
    path = child(tmp_path, {"model": {"n_group": 3}})
    r = subprocess.run([sys.executable, "-m", "mindformers_ds", "train", "--config", path], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {path}: model.n_group=3 must divide model.n_routed_experts=8"
