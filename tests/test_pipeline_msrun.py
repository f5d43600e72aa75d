"""Pipeline parallelism of the explicit executor under real msrun (mccl on CPU): 1F1B at pp=2,
uneven stages (pp_offset, with per-stage recompute), the interleaved schedule, pp x tp, pp x dp,
and V4 and V3.2 at pp=2 reproduce one process on the same rows (loss and gradient norm per step, every weight after 3 steps, merged from
the stages' shards). A 4-layer tiny V3 with MTP, so the last stage needs the embedding too."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
from mindformers_ds.utils.logging import read_metrics
from test_parallel_msrun import CFG, assert_plan_matches_each_rank, full_weights, full_weights_at

STEPS = 3


TINY_V3 = ["--set", "model.num_hidden_layers=4", "--set", f"train.max_steps={STEPS}", "--set", "checkpoint.save_every=0"]


def run(out, world=1, extra=(), config=CFG, base=TINY_V3):
    cmd = [sys.executable, "-m", "mindformers_ds"]
    if world > 1:
        cmd += ["launch", "--nproc", str(world), "--cluster-timeout", "60", "--"]   # a free port
    cmd += ["train", "--config", config, "--set", f"train.output_dir={out}", *base, *extra]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def sets(**kv):
    out = []
    for k, v in kv.items():
        out += ["--set", f"{k}={v}"]
    return out


def curve(out):
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in read_metrics(os.path.join(out, "metrics.jsonl"))
            if "loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, the step's 8 rows as 2 micro-batches of 4 (gradient accumulation)."""
    out = str(tmp_path_factory.mktemp("pp_single") / "run")
    run(out, 1, sets(**{"train.micro_batch_size": 4, "train.grad_accum_steps": 2}))
    return out


LAYOUTS = {
    "pp2_1f1b": (2, {"parallel.pp": 2, "parallel.micro_batches": 2}),
    # and recompute per stage: the first stage's 3 layers rerun their forward in the backward pass
    "pp2_uneven": (2, {"parallel.pp": 2, "parallel.micro_batches": 2, "parallel.pp_offset": "[1,-1]",
                       "parallel.recompute": "[true,false]"}),
    "pp2_interleaved": (2, {"parallel.pp": 2, "parallel.micro_batches": 2, "parallel.virtual_stages": 2}),
    # with sequence parallelism: the hidden state crossing the stages is each tp rank's half of the sequence
    "pp2_tp2_sequence_parallel": (4, {"parallel.pp": 2, "parallel.tp": 2, "parallel.micro_batches": 2,
                                      "parallel.sequence_parallel": "true"}),
    # each dp rank runs its 4 rows as 2 micro-batches of 2 (the reference: the same 8 rows as 2 of 4)
    "pp2_dp2": (4, {"parallel.pp": 2, "parallel.dp": 2, "parallel.micro_batches": 2, "train.micro_batch_size": 2}),
}


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_pipeline_matches_one_process(name, reference, tmp_path):
    world, layout = LAYOUTS[name]
    out = str(tmp_path / "run")
    run(out, world, sets(**{"train.micro_batch_size": 4, **layout}))  # 2 micro-batches of 4 rows
    a, b = curve(reference), curve(out)
    np.testing.assert_allclose([b[s] for s in range(1, STEPS + 1)], [a[s] for s in range(1, STEPS + 1)],
                               rtol=1e-5, atol=0)
    # rank 0 logs every stage's router biases (3 MoE layers + MTP), equal to the single process's
    last_bias = lambda run: [r["router_bias"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))
                             if "router_bias" in r][-1]   # noqa: E731
    np.testing.assert_allclose(last_bias(out), last_bias(reference), rtol=0, atol=1e-6)
    assert len(last_bias(out)) == 4
    wa, wb = full_weights(reference, str(tmp_path)), full_weights(out, str(tmp_path))
    assert wa.keys() == wb.keys()
    for n in wa:
        # under tp, 1e-5 absolute as tests/test_parallel_v4.py states why: AdamW divides by sqrt(v),
        # so where a gradient element is ~0 a rounding-level difference of the tp reduction moves the
        # update by a visible part of lr (measured: 2.5e-6 on a row-parallel o_proj at lr 3e-3,
        # while the losses and gradient norms agree to 1e-7)
        # (pp x dp: each dp rank accumulates 2 micro-batches of 2 rows, the reference 2 of 4, so the
        # gradient sums round differently: measured 9.4e-7 on an o_proj whose largest weight is 0.09)
        absolute = "parallel.tp" in layout or "parallel.dp" in layout
        bound = 1e-5 if absolute else 1e-5 * max(np.abs(wa[n]).max(), 1e-6)
        assert np.abs(wb[n] - wa[n]).max() <= bound, n
    # the stages hold their own layers: the first no head, the last no first layer but the
    # embedding copy MTP reads
    ck = os.path.join(out, "checkpoints", sorted(os.listdir(os.path.join(out, "checkpoints")))[-1])
    last = os.path.join(ck, f"rank_{world - 1}", "model.safetensors")
    with SafetensorsFile(os.path.join(ck, "rank_0", "model.safetensors")) as f:
        first_names = set(f.keys())
    with SafetensorsFile(last) as f:
        last_names = set(f.keys())
    assert "lm_head.weight" not in first_names and "lm_head.weight" in last_names
    assert "model.embed_tokens.weight" in first_names and "model.embed_tokens.weight" in last_names
    assert not any(n.startswith("model.layers.0.") for n in last_names)
    if name == "pp2_uneven":   # stages of 3 and 1 layers, the first recomputed
        assert any(n.startswith("model.layers.2.") for n in first_names)
        assert "recompute: 3 layers" in open(os.path.join(out, "train_rank0.log")).read()
    assert_plan_matches_each_rank(out)
    if name == "pp2_interleaved":  # stage 0 holds chunks 0 and 2: layers 0 and 2
        assert {n.split(".")[2] for n in first_names if n.startswith("model.layers.")} == {"0", "2"}


FAMILIES = {   # config, stage layout, the indexers' training stage (its KL terms are summed over the stages)
    # V4: 3 layers (hash-routed then learned MoE), mHC streams [B, S, n, H] between layers; stages of 2
    # and 1; the CSA indexer trains with everything else
    "v4_mhc_streams": ("configs/deepseek_v4/finetune_tiny.yaml", {"parallel.pp_offset": "[1,0]"}, "sparse"),
    # V3.2: 4 layers of MLA with the Lightning Indexer's top-k sparse attention (and MTP); stages of 2
    # and 2, in the dense warm-up: attention dense, only the indexers train
    "v32_sparse_attention": ("configs/deepseek_v32/finetune_tiny.yaml", {}, "dense_warmup"),
}


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_pipeline_carries_each_family_across_stages(family, tmp_path):
    """At pp=2 each family's boundary tensor crosses the stages and the run equals one process on
    the same 2 micro-batches."""
    config, stages, indexer_stage = FAMILIES[family]
    config = os.path.join(ROOT, config)
    base = sets(**{"train.indexer_stage": indexer_stage, "train.eval_every": 0, "train.exact_match_samples": 0, "logging.progress_bar": "false",
                   "logging.log_every": 1, "data.max_samples": 200, "train.max_steps": 2, "checkpoint.save_every": 0,
                   "train.micro_batch_size": 4})
    ref, out = str(tmp_path / "single"), str(tmp_path / "pp2")
    run(ref, 1, sets(**{"train.grad_accum_steps": 2}), config, base)
    warmup = indexer_stage == "dense_warmup"   # its steps' checkpoints show what the warm-up moved
    run(out, 2, sets(**{"parallel.pp": 2, "parallel.micro_batches": 2, **stages,
                        **({"checkpoint.save_every": 1} if warmup else {})}), config, base)
    a, b = curve(ref), curve(out)
    np.testing.assert_allclose([b[1], b[2]], [a[1], a[2]], rtol=1e-5, atol=0)
    kl = {r["step"]: r["indexer_kl"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r}
    ref_kl = {r["step"]: r["indexer_kl"] for r in read_metrics(os.path.join(ref, "metrics.jsonl")) if "loss" in r}
    np.testing.assert_allclose(kl[2], ref_kl[2], rtol=1e-5, atol=0)   # every layer's KL, from both stages
    wa, wb = full_weights(ref, str(tmp_path)), full_weights(out, str(tmp_path))
    assert wa.keys() == wb.keys()
    for n in wa:  # absolute, as tests/test_parallel_v4.py explains for V4's near-zero mHC gradients
        assert np.abs(wb[n] - wa[n]).max() <= 1e-5, n
    assert_plan_matches_each_rank(out)   # V4 with its own CPU constants (parallel/cpu_single.yaml)
    if warmup:   # step 2 moved the indexers of both stages, and kept every other weight bit-identical
        first = full_weights_at(os.path.join(out, "checkpoints", "step_00000001"), str(tmp_path))
        moved = {n for n in wb if not np.array_equal(wb[n], first[n])}
        assert all(".indexer." in n for n in moved), sorted(moved)[:3]
        assert {n.split(".")[2] for n in moved} == {"0", "1", "2", "3", "4"}   # 4 layers and the MTP layer
