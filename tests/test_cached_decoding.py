"""Cached decoding for the families whose attention keeps more than MLA latents: V3.2 (the
Lightning Indexer's keys, scored by every new query to pick its top-k cached positions) and V4
(the sliding window's ring, the compressors' open windows and closed entries, CSA's indexer keys).
Each decode step's logits equal a full recomputation of the sequence so far, token for token, over
50 new tokens that cross the sliding window and several compression boundaries."""
from __future__ import annotations

import os

import numpy as np
import pytest
import mindspore as ms

from conftest import ROOT
from mindformers_ds import config
from mindformers_ds.generation import Generator, NextTokenLogits
from mindformers_ds.kv_cache import CachedDecoder
from mindformers_ds.models.deepseek import DeepseekForCausalLM

LENGTH, NEW = 64, 50
PROMPT_LENS = (5, 9)


def _model(family: str, *overrides):
    # init 0.1 (not 0.02): attention far from uniform, so a wrong cache entry moves the logits
    cfg = config.load(os.path.join(ROOT, f"configs/{family}/tiny.yaml"),
                      ["model.initializer_range=0.1", *overrides], check_paths=False)
    mc = cfg.model.model_config()
    model = DeepseekForCausalLM.family_for(mc)(mc)
    model.init_weights(3)
    return model


def _decode_against_recompute(model):
    """Greedy decoding of two prompts of different lengths: the cached decoder's logits and the
    recomputed ones at every step -> (worst |difference|, largest |logit|, tokens)."""
    rng = np.random.default_rng(0)
    ids = np.zeros((len(PROMPT_LENS), LENGTH), np.int32)
    lens = np.array(PROMPT_LENS)
    for i, n in enumerate(lens):
        ids[i, :n] = rng.integers(5, model.config.vocab_size, n)
    recompute, cached = NextTokenLogits(model), CachedDecoder(model, len(lens), LENGTH)
    logits = cached.prefill(ids, lens)
    worst, scale, rows = 0.0, 0.0, np.arange(len(lens))
    for step in range(NEW):
        ref = recompute(ms.Tensor(ids), ms.Tensor((lens - 1).astype(np.int32))).asnumpy()
        worst, scale = max(worst, float(np.abs(ref - logits).max())), max(scale, float(np.abs(ref).max()))
        token = ref.argmax(-1)
        assert np.array_equal(token, logits.argmax(-1)), f"step {step}: cached {logits.argmax(-1)} vs {token}"
        ids[rows, lens] = token
        lens = lens + 1
        logits = cached.decode(token, lens - 1)
    return worst, scale, ids


@pytest.mark.parametrize("family,overrides", [
    ("deepseek_v32", ("model.index_topk=4",)),   # 4 of up to 59 keys: the indexer's choice matters
    ("deepseek_v4", ()),                          # window 16, CSA every 4 (top-4), HCA every 16
])
def test_cached_decoding_equals_recomputation(family, overrides):
    model = _model(family, *overrides)
    worst, scale, ids = _decode_against_recompute(model)
    assert scale > 1.0 and worst <= 1e-5 * scale, (worst, scale)
    c, longest = model.config, max(PROMPT_LENS) + NEW
    if c.is_v4:   # past the window, over three HCA entries and a dozen CSA entries
        assert longest > c.sliding_window and longest >= 3 * c.compress_rate_hca and longest >= 12 * c.compress_rate_csa
    else:         # most queries see far more keys than the indexer keeps
        assert longest > 10 * c.index_topk
    # the public entry decodes with the cache for both families now, and agrees with recomputation
    prompts = [list(ids[0, :5]), list(ids[1, :9])]
    cached_gen = Generator(model, LENGTH, batch_size=2, use_cache=True)
    assert cached_gen.use_cache
    assert cached_gen.generate(prompts, 12) == Generator(model, LENGTH, batch_size=2).generate(prompts, 12)


@pytest.mark.parametrize("family", ["deepseek_v32", "deepseek_v4"])
def test_cached_decoding_follows_the_dense_warmup(family):
    """While the indexers warm up the model attends densely (train.indexer_stage=dense_warmup):
    the cached decoder does too, so it agrees with recomputation, and not with sparse decoding."""
    from mindformers_ds.train.indexer_training import apply_indexer_stage
    model = _model(family, "model.index_topk=1")   # one key or entry: sparse and dense differ
    prompts = [[7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20]]
    sparse = Generator(model, 40, batch_size=2, use_cache=True).generate(prompts, 24)
    apply_indexer_stage(model, "dense_warmup", 1.0)
    dense = Generator(model, 40, batch_size=2).generate(prompts, 24)
    assert Generator(model, 40, batch_size=2, use_cache=True).generate(prompts, 24) == dense != sparse
