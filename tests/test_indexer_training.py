"""`train.indexer_stage` (train/indexer_training.py, models/deepseek/indexer_loss.py): the sparse
stage's detachment, the dense warm-up's freezing, and the curriculum on the tiny V3.2 demo
fine-tune: a base run, the warm-up resumed from it (recall rises), the sparse stage resumed
across the stage boundary (fresh optimizer, the log says so)."""
from __future__ import annotations

import os
import sys
from dataclasses import replace

import numpy as np
import pytest
import mindspore as ms

from conftest import ROOT
from mindformers_ds import config
from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
from mindformers_ds.config import ConfigError
from mindformers_ds.models.deepseek import build_model
from mindformers_ds.train.curriculum import deepseek_stages, run_curriculum
from mindformers_ds.train.indexer_training import apply_indexer_stage
from test_train_step import make_step, step_inputs

DEMO = os.path.join(ROOT, "configs/deepseek_v32/finetune_tiny.yaml")
# top-4 of the keys: packed demo samples let a query see up to ~30, so the choice matters
COMMON = ["model.index_topk=4", "train.eval_every=0", "train.exact_match_samples=0", "logging.log_every=1"]


def _grads(family: str, weight: float):
    cfg = config.load(os.path.join(ROOT, f"configs/{family}/tiny.yaml"), check_paths=False)
    model = build_model(cfg.model.model_config())
    model.init_weights(7)
    indexer = set(apply_indexer_stage(model, "sparse", 1.0))
    model.index_weight = weight   # 0: the same step with the indexers' KL term removed
    _, grad_step, _, _ = make_step(model)
    ids = np.random.default_rng(4).integers(0, model.config.vocab_size, (2, 48)).astype(np.int32)
    _, grads = grad_step(*step_inputs(ids, ids.copy()))
    names = [p.name for p in model.trainable_params()]
    return {n: g.asnumpy() for n, g in zip(names, grads)}, indexer


@pytest.mark.parametrize("family", ["deepseek_v32", "deepseek_v4"])
def test_sparse_stage_main_gradients_ignore_the_kl_and_the_indexer_learns_only_from_it(family):
    with_kl, indexer = _grads(family, 1.0)
    without, _ = _grads(family, 0.0)
    assert indexer and set(with_kl) > indexer
    for name, g in with_kl.items():
        if name in indexer:
            assert not without[name].any(), f"{name}: a gradient from the LM loss"
        else:
            np.testing.assert_array_equal(g, without[name], err_msg=f"{name}: the KL reached the main model")
    assert sum(float(np.abs(with_kl[n]).sum()) for n in indexer) > 0


def test_a_stage_needs_an_indexer_and_lora_off(tmp_path):
    with pytest.raises(ConfigError, match="train.indexer_stage='sparse' trains a Lightning Indexer, but "
                                          "model.model_type='deepseek_v3'"):
        config.load(os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml"), ["train.indexer_stage=sparse"])
    with pytest.raises(ConfigError, match=r"train.indexer_stage='warm' must be one of \['frozen'"):
        config.load(DEMO, ["train.indexer_stage=warm"])


def _weights(step_dir):
    with SafetensorsFile(os.path.join(step_dir, "model.safetensors")) as f:
        return {n: f.get_f32(n) for n in f.keys()}


@pytest.fixture(scope="module")
def curriculum(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("curriculum"))
    base, warm, sparse = deepseek_stages(60, 10, 5)
    results = run_curriculum(DEMO, root, [base, warm, replace(sparse, overrides=[*sparse.overrides,
                                                                                 "train.exact_match_samples=16"])],
                             COMMON)
    base, warm, sparse = results
    assert base.checkpoint == os.path.join(root, "base", "checkpoints", "step_00000060")
    return {"results": results, "base": base.checkpoint, "warm": warm.checkpoint, "warm_steps": warm.steps, "sparse_dir": sparse.output_dir,
            "sparse_steps": sparse.steps, "summary": sparse.summary, "sparse_ckpt": sparse.checkpoint}


def test_dense_warmup_trains_the_indexers_alone_and_their_recall_rises(curriculum):
    before, after = _weights(curriculum["base"]), _weights(curriculum["warm"])
    moved = {n for n in before if not np.array_equal(before[n], after[n])}
    assert moved and all(".indexer." in n for n in moved), sorted(moved)[:3]   # the rest bit-identical
    indexers = [n for n in before if ".indexer." in n and not n.endswith("bias")]
    assert set(indexers) <= moved
    steps = curriculum["warm_steps"]
    first, last = np.array(steps[0]["indexer_recall"]), np.mean([s["indexer_recall"] for s in steps[-3:]], 0)
    print("dense warm-up recall@4 per sparse layer, first step -> last three:", first.round(3), last.round(3))
    assert steps[0]["indexer_layers"] == list(range(len(first)))   # every layer and the MTP layer report
    assert (last > first).all() and (last - first).mean() > 0.05
    assert np.mean(steps[-1]["indexer_kl"]) < np.mean(steps[0]["indexer_kl"])


def test_sparse_stage_resumes_the_warmup_with_a_fresh_optimizer_and_trains_everything(curriculum):
    log = open(os.path.join(curriculum["sparse_dir"], "train.log")).read()
    assert "its optimizer state covers other trainable parameters" in log and "starts fresh" in log
    steps = curriculum["sparse_steps"]
    assert steps[0]["step"] == 71 and steps[-1]["step"] == 75
    assert all(np.isfinite(s["loss"]) and s["indexer_kl"] for s in steps)
    before, after = _weights(curriculum["warm"]), _weights(curriculum["sparse_ckpt"])
    moved = {n for n in before if not np.array_equal(before[n], after[n])}
    assert any(".indexer." in n for n in moved) and any(".indexer." not in n for n in moved)
    assert "exact_match_after" in curriculum["summary"]   # the held-out exact match is reported


def test_the_curriculum_tool_reports_each_stage(curriculum):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from curriculum import stage_figures
    base, warm, sparse = (stage_figures(r) for r in curriculum["results"])
    assert [f["steps"] for f in (base, warm, sparse)] == [[1, 60], [61, 70], [71, 75]]
    assert base["indexer_recall"] is None and base["exact_match_after"] is None   # frozen; no samples asked
    layers = len(warm["indexer_recall"]["first"])
    assert layers == len(warm["indexer_kl"]["last"]) == len(sparse["indexer_recall"]["last"]) > 1
    assert warm["indexer_recall"]["last"] == np.round(np.mean([s["indexer_recall"] for s in
                                                               curriculum["warm_steps"][-3:]], 0), 3).tolist()
    assert sparse["loss_first10"] == np.mean([s["loss"] for s in curriculum["sparse_steps"]])   # 5 steps: all
    assert sparse["exact_match_after"] == curriculum["summary"]["exact_match_after"]
    assert sparse["checkpoint"] == curriculum["sparse_ckpt"]


def test_report_draws_the_indexers_recall_and_kl(curriculum, tmp_path):
    from matplotlib import image
    from mindformers_ds.observe.report import build_report
    warm_run = os.path.dirname(os.path.dirname(curriculum["warm"]))
    out = build_report(warm_run, str(tmp_path / "report"))
    assert "indexer" in out["figures"]
    pixels = image.imread(os.path.join(out["dir"], "indexer.png"))
    assert pixels.shape[0] > 300 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 50
    assert "Indexer recall@k and KL per sparse layer" in open(out["html"]).read()
    frozen_run = os.path.dirname(os.path.dirname(curriculum["base"]))   # no indexer training: no figure
    assert "indexer" not in build_report(frozen_run, str(tmp_path / "frozen"))["figures"]
