"""Aux-loss-free balancing, the sequence-wise balance loss and multi-token prediction."""
from __future__ import annotations

import os

import numpy as np
import yaml
import mindspore as ms
from mindspore import Tensor, nn

from conftest import ROOT, random_ids
from mindformers_ds.config import model_config_from_dict
from mindformers_ds.models.deepseek import DeepseekForCausalLM
from mindformers_ds.models.deepseek import results as R
from mindformers_ds.models.deepseek.model import attention_mask
from test_train_step import make_step, step_inputs


def tiny(**overrides) -> DeepseekForCausalLM:
    with open(os.path.join(ROOT, "configs/deepseek_v3/tiny.yaml")) as f:
        d = yaml.safe_load(f)["model"]
    d.update({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 128, **overrides})
    model = DeepseekForCausalLM(model_config_from_dict(d))
    model.init_weights(0)
    return model


def test_bias_moves_a_skewed_router_toward_balance():
    model = tiny(bias_update_rate=0.01, num_nextn_predict_layers=0)
    gate = model.model.layers[1].mlp.gate
    u = np.random.default_rng(0).normal(size=64).astype(np.float32)
    u /= np.linalg.norm(u)
    # every token leans toward u, and experts 0 and 1 like u: a router that sends everything to them
    model.model.embed_tokens.weight.set_data(Tensor(model.model.embed_tokens.weight.asnumpy() + 0.1 * u))
    w = gate.weight.asnumpy()
    w[0] += 2.0 * u
    w[1] += 1.5 * u
    gate.weight.set_data(Tensor(w))
    step, *_ = make_step(model, bias_rate=0.01)
    ids = random_ids(4, 32, 128)
    ratios = []
    for i in range(40):
        bias_before = gate.e_score_correction_bias.asnumpy().copy()
        outs, _, _ = step(*step_inputs(ids, ids), Tensor(0.0, ms.float32))  # lr 0: only the bias moves
        load = R.named(outs)[R.LOAD].asnumpy()[0]
        ratios.append(load.max() / load.mean())
        expected = bias_before + 0.01 * np.sign(load.mean() - load)
        np.testing.assert_allclose(gate.e_score_correction_bias.asnumpy(), expected, atol=1e-7)
    assert ratios[0] >= 3.5, ratios[:3]
    assert np.mean(ratios[-10:]) < 0.6 * ratios[0], ratios


def test_router_bias_is_not_trained_by_gradients():
    model = tiny()
    names = {p.name for p in model.trainable_params()}
    biases = [p.name for p in model.get_parameters() if p.name.endswith("e_score_correction_bias")]
    assert biases and not names & set(biases)


def test_sequence_balance_loss_matches_hand_computation():
    model = tiny(aux_loss_alpha=0.5)
    moe = model.model.layers[1].mlp
    rng = np.random.default_rng(1)
    b, s, e, k = 2, 6, 8, 2
    scores = rng.uniform(0.05, 0.95, (b * s, e)).astype(np.float32)
    idx = np.stack([rng.choice(e, k, replace=False) for _ in range(b * s)]).astype(np.int32)
    got = float(moe.balance_loss(Tensor(scores), Tensor(idx), b).asnumpy())
    probs = (scores / scores.sum(-1, keepdims=True)).reshape(b, s, e).mean(1)
    counts = np.stack([np.bincount(idx.reshape(b, s * k)[i], minlength=e) for i in range(b)])
    f = counts * e / (k * s)
    want = 0.5 * (f * probs).sum(-1).mean()
    assert abs(got - want) < 1e-6


class _Pieces(nn.Cell):
    """Main logits and MTP-depth-1 logits computed from the model's modules, outside forward_train."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, ids):
        m = self.model
        out = m.backbone(ids)
        hidden = out[R.HIDDEN]
        nxt = ms.ops.concat((ids[:, 1:], ms.ops.zeros((ids.shape[0], 1), ids.dtype)), 1)
        h1, _, _ = m.model.layers[m.num_layers].mtp_forward(m.model.embed_tokens(nxt), hidden, out[R.LAYER_INPUTS])
        return m.head(hidden), m.head(m.model.layers[m.num_layers].shared_head(h1))


def _nll(logits, targets):
    z = logits.astype(np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    valid = targets != -100
    picked = np.take_along_axis(z, np.where(valid, targets, 0)[..., None], -1)[..., 0]
    return ((lse - picked) * valid).sum() / valid.sum()


def test_mtp_adds_its_weighted_loss():
    model = tiny(num_nextn_predict_layers=1, mtp_loss_factor=0.3, aux_loss_alpha=0.0)
    ids = random_ids(2, 20, 128, seed=4)
    labels = ids.copy()
    labels[:, :5] = -100
    main_logits, mtp_logits = (x.asnumpy() for x in _Pieces(model)(Tensor(ids)))
    ignore = np.full((2, 1), -100)
    main_t = np.concatenate([labels[:, 1:], ignore], 1)             # position i predicts token i+1
    mtp_t = np.concatenate([labels[:, 2:], ignore, ignore], 1)      # depth 1: position i predicts token i+2
    want = _nll(main_logits, main_t) + 0.3 * _nll(mtp_logits, mtp_t)
    got = float(model(Tensor(ids), Tensor(labels)).asnumpy())
    assert abs(got - want) < 1e-5 * want
    plain = tiny(num_nextn_predict_layers=0, aux_loss_alpha=0.0)
    assert abs(float(plain(Tensor(ids), Tensor(labels)).asnumpy()) - _nll(main_logits, main_t)) < 1e-5


def test_packed_segments_do_not_attend_or_predict_across():
    seg = np.array([[1, 1, 1, 2, 2, 0]], np.int32)
    mask = attention_mask(1, 6, Tensor(seg)).asnumpy()[0, 0]
    want = np.tril(np.ones((6, 6), bool)) & (seg[0][:, None] == seg[0][None, :])
    np.testing.assert_array_equal(mask, want)
