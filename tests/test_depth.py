"""Real depth (issue 16): a 61-layer V3 with its MTP layer trains with every fused op, evaluates and
generates, in one process and under the explicit executor (dp=2 equals one process); a 61-layer
official-layout checkpoint converts and back bit-exactly; cell reuse changes neither the logits
nor the training trajectory. The 43-layer V4 is in test_depth_v4.py (the two xdist workers share
the deep-model runs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms

from conftest import ROOT, random_ids
from mindformers_ds import config
from mindformers_ds.models.deepseek import build_model
from mindformers_ds.models.deepseek.config import FUSED_OPS
from mindformers_ds.utils.logging import read_metrics

V3 = os.path.join(ROOT, "configs/deepseek_v3/tiny.yaml")
V4 = os.path.join(ROOT, "configs/deepseek_v4/tiny.yaml")
FUSED = f"model.fused_ops=[{','.join(FUSED_OPS)}]"
NARROW_V3 = ["model.hidden_size=64", "model.intermediate_size=128", "model.moe_intermediate_size=32",
             "model.q_lora_rank=32", "model.kv_lora_rank=32"]
ATTN = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]


def v4_depth(layers: int):
    kinds = [ATTN[i % 3] for i in range(layers)]
    mlp = ["hash_moe" if i < 3 else "moe" for i in range(layers)]
    return [f"model.num_hidden_layers={layers}", f"model.layer_types=[{','.join(kinds)}]",
            f"model.mlp_layer_types=[{','.join(mlp)}]", "model.hidden_size=64", "model.moe_intermediate_size=32",
            "model.hc_sinkhorn_iters=3"]


def deep_runs(tmp, config_path: str, sets, micro: int = 8):
    """One training step of `config_path` with `sets`, then the held-out loss and exact match
    (generation), through `mfds train`; and the same step on two msrun workers (dp=2, half the
    micro-batch each: the same global batch). Returns both runs' metrics records."""
    common = [*sets, FUSED, "train.max_steps=1", "checkpoint.save_final=false", "data.seq_length=32",
              "data.max_samples=64", "logging.progress_bar=false", "train.eval_every=0", "train.eval_batches=1"]
    flags = lambda out, *extra: [x for s in [f"train.output_dir={out}", *common, *extra] for x in ("--set", s)]  # noqa
    single = subprocess.run([sys.executable, "-m", "mindformers_ds", "train", "--config", config_path,
                             *flags(tmp / "single", f"train.micro_batch_size={micro}", "train.exact_match_samples=2",
                                    "train.max_new_tokens=3")],
                            cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert single.returncode == 0, single.stderr[-3000:]
    dp2 = subprocess.run([sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "2", "--cluster-timeout", "600", "--", "train", "--config", config_path,
                          *flags(tmp / "dp2", f"train.micro_batch_size={micro // 2}", "parallel.dp=2",
                                 "train.exact_match_samples=0")],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert dp2.returncode == 0, dp2.stderr[-3000:]
    return (read_metrics(str(tmp / "single" / "metrics.jsonl")), read_metrics(str(tmp / "dp2" / "metrics.jsonl")))


def check_deep_runs(single, dp2):
    a = [r for r in single if "loss" in r][-1]
    b = [r for r in dp2 if "loss" in r][-1]
    assert a["step"] == b["step"] == 1 and np.isfinite(a["loss"]) and abs(a["loss"] - np.log(512)) < 1.0
    assert any("eval_loss" in r for r in single) and any("exact_match" in r for r in single)
    np.testing.assert_allclose([b["loss"], b["grad_norm"]], [a["loss"], a["grad_norm"]], rtol=1e-5)
    return a


@pytest.mark.timeout(2400)
def test_v3_with_61_layers_and_mtp_trains_in_one_process_and_under_dp2(tmp_path):
    single, dp2 = deep_runs(tmp_path, os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml"),
                            ["model.num_hidden_layers=61", *NARROW_V3])
    a = check_deep_runs(single, dp2)
    assert a["mtp_loss"] > 0 and len(a["expert_load"]) == 61   # 60 MoE layers + the MTP layer's


@pytest.mark.timeout(900)
def test_v3_with_61_layers_generates_through_the_kv_cache():
    from mindformers_ds.generation import Generator
    cfg = config.load(V3, ["model.num_hidden_layers=61", FUSED, *NARROW_V3], check_paths=False)
    model = build_model(cfg.model.model_config())
    model.init_weights(0)
    assert model.num_layers == 61 and model.mtp_depth == 1
    out = Generator(model, 24, batch_size=2, use_cache=True).generate([[5, 6, 7], [8, 9, 10, 11]], 6)
    assert [len(x) for x in out] == [6, 6]


@pytest.mark.parametrize("path,sets", [(V3, ["model.num_hidden_layers=4"]), (V4, [])], ids=["v3", "v4"])
def test_cell_reuse_leaves_the_logits_unchanged(path, sets):
    logits = []
    for reuse in ("true", "false"):
        cfg = config.load(path, sets + [f"model.cell_reuse={reuse}"], check_paths=False)
        model = build_model(cfg.model.model_config())
        model.init_weights(0)
        logits.append(model(ms.Tensor(random_ids(2, 40, 512))).asnumpy())
    assert type(model.model.layers[0]).__name__ in ("DecoderLayer", "V4DecoderLayer")  # the "false" one
    np.testing.assert_array_equal(logits[0], logits[1])


def test_cell_reuse_leaves_the_training_trajectory_unchanged(tmp_path):
    from mindformers_ds.train.trainer import Trainer
    demo = os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml")
    runs = {}
    for reuse in ("true", "false"):
        out = str(tmp_path / reuse)
        cfg = config.load(demo, [f"train.output_dir={out}", "train.max_steps=20", "train.exact_match_samples=0",
                                 "train.eval_every=0", "checkpoint.save_final=false", "checkpoint.save_every=0",
                                 "data.max_samples=400", "logging.progress_bar=false", "train.micro_batch_size=8",
                                 "logging.log_every=1", f"model.cell_reuse={reuse}", "model.num_hidden_layers=3",
                                 *NARROW_V3])
        Trainer(cfg).run()
        runs[reuse] = [(r["loss"], r["grad_norm"]) for r in read_metrics(os.path.join(out, "metrics.jsonl"))
                       if "loss" in r]
    assert len(runs["true"]) == 20
    np.testing.assert_allclose(runs["true"], runs["false"], rtol=1e-6, atol=0)


def test_a_61_layer_release_converts_and_back_bit_exactly(tmp_path):
    import yaml
    from mindformers_ds.checkpoint import convert
    from mindformers_ds.checkpoint.reader import CheckpointReader
    from mindformers_ds.checkpoint.synthetic import write_release
    from mindformers_ds.config import model_config_from_dict
    with open(V3) as f:
        d = yaml.safe_load(f)["model"]
    d.update({"num_hidden_layers": 61, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
              "q_lora_rank": 32, "kv_lora_rank": 32, "vocab_size": 256})
    src = str(tmp_path / "release")
    write_release(src, model_config_from_dict(d), fp8=False, dtype="BF16", layers_per_shard=4)
    convert.hf_to_ms(src, str(tmp_path / "ms"), bar=False)
    names = CheckpointReader(str(tmp_path / "ms")).names()
    assert "model.layers.61.eh_proj.weight" in names and "model.layers.60.mlp.experts.gate_up_proj" in names
    convert.ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"), bar=False)

    def tensors(path):
        r = CheckpointReader(path)
        try:
            return {n: (r.info(n)[0], r.get(n)[1].tobytes()) for n in r.names()}
        finally:
            r.close()
    assert tensors(src) == tensors(str(tmp_path / "back"))
    with open(os.path.join(src, "model.safetensors.index.json")) as f1, \
            open(str(tmp_path / "back" / "model.safetensors.index.json")) as f2:
        assert json.load(f1)["weight_map"] == json.load(f2)["weight_map"]
