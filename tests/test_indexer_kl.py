"""The indexers' distillation loss and recall (models/deepseek/indexer_loss.py) against an
independent numpy computation (tests/indexer_reference.py) of the whole attention layer:
V3.2's MLA + Lightning Indexer (packed samples, ragged visibility) and V4's CSA layer (the joint
softmax over sliding window, compressed entries and the sink), in both training stages."""
from __future__ import annotations

import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

import indexer_reference as ref
from conftest import ROOT
from mindformers_ds import config
from mindformers_ds.models.deepseek import build_model
from mindformers_ds.models.deepseek.masks import attention_mask
from mindformers_ds.models.deepseek.v4_attention import sliding_window_bias

SEQ = 40
SHARPEN = 6.0   # attention weights x6: peaked distributions, so the KL is not ~0 at random init


def _model(family: str, stage: str, sets=()):
    cfg = config.load(os.path.join(ROOT, f"configs/{family}/tiny.yaml"), list(sets), check_paths=False)
    model = build_model(cfg.model.model_config())
    model.init_weights(3)
    for p in model.get_parameters():
        if ".self_attn." in p.name and p.ndim >= 2:
            p.set_data(Tensor(p.asnumpy() * SHARPEN))
    model.set_indexer_stage(stage, 1.0)
    return model


class _V32Probe(nn.Cell):
    def __init__(self, model, layer):
        super().__init__(auto_prefix=False)
        self.rotary = model.model.rotary_emb
        self.attn = model.model.layers[layer].self_attn

    def construct(self, x, positions, mask):
        cos, sin = self.rotary(positions)
        out, stats = self.attn(x, cos, sin, mask)
        return out, stats, cos, sin


class _V4Probe(nn.Cell):
    def __init__(self, model, layer):
        super().__init__(auto_prefix=False)
        self.rotary = model.model.rotary_emb
        self.attn = model.model.layers[layer].self_attn

    def construct(self, x, positions, bias):
        main, compress = self.rotary(positions)
        out, stats = self.attn(x, main, compress, positions, bias, None)
        return out, stats, compress[0], compress[1]


def _close(ours, theirs, what):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=what)


@pytest.mark.parametrize("stage", ["dense_warmup", "sparse"])
def test_v32_kl_and_recall_equal_numpy_with_packed_samples(stage):
    model = _model("deepseek_v32", stage)
    b, h = 2, model.config.hidden_size
    x = np.random.default_rng(1).normal(0, 1, (b, SEQ, h)).astype(np.float32)
    segments = np.array([[0] * 25 + [1] * 15, [0] * SEQ], np.int32)       # row 0 packs two samples
    positions = np.array([list(range(25)) + list(range(15)), list(range(SEQ))], np.int32)
    mask = attention_mask(b, SEQ, Tensor(segments))
    out, stats, cos, sin = _V32Probe(model, 0)(Tensor(x), Tensor(positions), mask)
    want_out, want = ref.v32_attention(model.model.layers[0].self_attn, x.astype(np.float64),
                                       cos.asnumpy().astype(np.float64), sin.asnumpy().astype(np.float64),
                                       mask.asnumpy()[:, 0], stage)
    _close(out.asnumpy(), want_out, "attention output")
    stats = stats.asnumpy()
    assert stats[2] == b * SEQ and want[0] > 1.0   # every query counted; a KL well away from 0
    _close(stats, want, "KL sum, recall sum, queries")
    recall = stats[1] / stats[2]
    assert 0.2 < recall < 0.999, recall   # top-16 of up to 40 keys: neither nothing nor everything


@pytest.mark.parametrize("stage", ["dense_warmup", "sparse"])
def test_v4_csa_kl_is_over_the_joint_softmax_with_window_and_sink(stage):
    # 8 index heads: an entry scores exactly 0 (every head's relu at 0) rarely, so no query ties
    # at its top-k boundary (ref.top_k_mask checks), where the choice would be arbitrary
    model = _model("deepseek_v4", stage, ["model.index_n_heads=8"])
    c = model.config
    layer = list(c.layer_types).index("compressed_sparse_attention")
    attn = model.model.layers[layer].self_attn
    attn.sinks.set_data(Tensor(np.linspace(-1.0, 2.0, c.num_attention_heads).astype(np.float32)))
    b = 2
    x = np.random.default_rng(2).normal(0, 1, (b, SEQ, c.hidden_size)).astype(np.float32)
    positions = np.broadcast_to(np.arange(SEQ, dtype=np.int32), (b, SEQ)).copy()
    bias = sliding_window_bias(SEQ, c.sliding_window)
    out, stats, cos, sin = _V4Probe(model, layer)(Tensor(x), Tensor(positions), bias)
    q, k = np.arange(SEQ)[:, None], np.arange(SEQ)[None, :]
    window = np.broadcast_to((k <= q) & (k > q - c.sliding_window), (b, SEQ, SEQ))
    want_out, want = ref.v4_csa_attention(attn, x.astype(np.float64), cos.asnumpy().astype(np.float64),
                                          sin.asnumpy().astype(np.float64), positions, window, stage, c.rms_norm_eps)
    _close(out.asnumpy(), want_out, "attention output")
    stats = stats.asnumpy()
    # queries 0..2 see no closed window of 4 and are not counted
    assert stats[2] == b * (SEQ - (c.compress_rate_csa - 1)) and want[0] > 0.5
    _close(stats, want, "KL sum, recall sum, queries")
