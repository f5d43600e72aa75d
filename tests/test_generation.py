"""Generation: KV-cache decoding equals full recomputation token for token; sampling controls;
the `mfds generate` and `mfds eval` commands on a trained checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, random_ids
from mindformers_ds import DeepseekForCausalLM
from mindformers_ds.checkpoint import manager
from mindformers_ds.generation import Generator, sample_next


@pytest.fixture(scope="module")
def model(hf_v3_dir):
    return DeepseekForCausalLM.from_pretrained(hf_v3_dir)


def test_kv_cache_equals_recompute(model):
    prompts = [list(random_ids(1, n, 320, seed=n)[0]) for n in (3, 9, 14, 6)]
    full = Generator(model, 40, batch_size=4).generate(prompts, 24)
    cached = Generator(model, 40, batch_size=4, use_cache=True).generate(prompts, 24)
    assert full == cached and all(len(x) == 24 for x in full)
    sampled_full = Generator(model, 40, 4).generate(prompts, 12, temperature=1.0, top_k=20, seed=3)
    sampled_cache = Generator(model, 40, 4, use_cache=True).generate(prompts, 12, temperature=1.0, top_k=20, seed=3)
    assert sampled_full == sampled_cache


def test_stops_at_eos_and_length(model):
    prompts = [list(random_ids(1, 5, 320, seed=1)[0])]
    free = Generator(model, 32, 1).generate(prompts, 10)[0]
    stopped = Generator(model, 32, 1).generate(prompts, 10, eos_id=free[3])[0]
    assert stopped == free[:free.index(free[3])]
    with pytest.raises(ValueError, match="does not fit max_length"):
        Generator(model, 8, 1).generate([list(range(8))], 2)
    assert len(Generator(model, 8, 1).generate([list(range(5))], 10)[0]) == 3   # fills the context, then stops


def test_sampling_controls():
    rng = np.random.default_rng(0)
    logits = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 4.9]])
    assert sample_next(logits, rng).tolist() == [1, 0]                                  # greedy
    assert sample_next(logits, rng, temperature=1.0, top_k=1).tolist() == [1, 0]      # top-1 = greedy
    assert sample_next(logits, rng, temperature=1.0, top_p=1e-6).tolist() == [1, 0]   # tiny nucleus = greedy
    draws = np.array([sample_next(logits, rng, temperature=1.0, top_k=2) for _ in range(400)])
    assert set(draws[:, 0]) == {1, 3} and set(draws[:, 1]) == {0, 3}                  # only the top two
    assert abs((draws[:, 1] == 0).mean() - 1 / (1 + np.exp(-0.1))) < 0.08


def test_generate_and_eval_cli(finished_run):
    cfg, _ = finished_run
    ck = manager.latest(os.path.join(cfg.train.output_dir, "checkpoints"))
    tok = os.path.join(ROOT, "tokenizers/demo/tokenizer.json")
    run = lambda *a: subprocess.run([sys.executable, "-m", "mindformers_ds", *a], cwd=ROOT, capture_output=True,
                                    text=True, timeout=300)
    g = run("generate", "--checkpoint", ck, "--tokenizer", tok, "--prompt", "Copy the sequence.\n\na7kz0",
            "--max-new-tokens", "6", "--max-length", "48")
    assert g.returncode == 0, g.stderr
    nc = run("generate", "--checkpoint", ck, "--tokenizer", tok, "--prompt", "Copy the sequence.\n\na7kz0",
             "--max-new-tokens", "6", "--max-length", "48", "--no-cache")
    assert nc.returncode == 0 and nc.stdout == g.stdout          # the cached and recomputing decoders agree
    e = run("eval", "--config", os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml"), "--checkpoint", ck,
            "--exact-match-samples", "16", "--set", "model.hidden_size=64", "--set", "model.moe_intermediate_size=32",
            "--set", "model.intermediate_size=128")
    assert e.returncode == 0, e.stderr
    res = json.loads(e.stdout)
    assert res["eval_loss"] > 0 and res["eval_ppl"] == pytest.approx(np.exp(res["eval_loss"]), rel=1e-6)
    assert res["exact_match_n"] == 16 and 0 <= res["exact_match"] <= 1
    # the same checkpoint as the shards of a dp=2 x tp=2 run: `mfds eval` reassembles it (through the
    # executor its run config names) and measures the same loss, bit for bit
    shapes = ["--set", "model.hidden_size=64", "--set", "model.moe_intermediate_size=32",
              "--set", "model.intermediate_size=128"]
    shards = os.path.join(cfg.train.output_dir, "as_shards")
    sp = run("convert", "split", ck, shards, "--config", os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml"),
             "--set", "parallel.dp=2", "--set", "parallel.tp=2", *shapes)
    assert sp.returncode == 0 and os.path.isfile(os.path.join(shards, "rank_3", "model.safetensors")), sp.stderr
    e2 = run("eval", "--config", os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml"), "--checkpoint", shards,
             "--exact-match-samples", "0", *shapes)
    assert e2.returncode == 0, e2.stderr
    assert json.loads(e2.stdout)["eval_loss"] == res["eval_loss"]
