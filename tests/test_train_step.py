"""The training step against PyTorch: AdamW semantics, one full step on the transformers model,
gradient accumulation, the LR schedule and the NaN guard."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Parameter, Tensor

from conftest import load_hf, random_ids
from mindformers_ds.checkpoint.names import hf_to_internal
from mindformers_ds.models.deepseek import DeepseekForCausalLM
from mindformers_ds.train.optimizer import AdamW, no_decay
from mindformers_ds.train.schedule import learning_rate
from mindformers_ds.models.deepseek import results as R
from mindformers_ds.train.step import (AccumulateGrads, ApplyStep, GradStep, LossCell, TrainStep,
                                       router_bias_parameters,
                                       router_bias_rows)


def make_step(model, lr_eps=1e-6, wd=0.1, clip=1.0, bias_rate=0.0, fused_clip=False):
    weights = model.trainable_params()
    opt = AdamW(weights, (0.9, 0.95), lr_eps, wd)
    grad = GradStep(LossCell(model), weights)
    apply = ApplyStep(opt, router_bias_parameters(model), bias_rate, clip, bias_rows=router_bias_rows(model),
                      fused_ops=["grad_clip"] if fused_clip else [])
    return TrainStep(grad, apply), grad, apply, opt


def step_inputs(ids, labels, n_micro=1):
    b, s = ids.shape
    n_tok = float((labels[:, 1:] != -100).sum())
    return [Tensor(ids), Tensor(labels), Tensor(np.tile(np.arange(s, dtype=np.int32), (b, 1))),
            Tensor(np.ones((b, s), np.int32)), Tensor(1.0 / n_tok, ms.float32), Tensor(1.0, ms.float32),
            Tensor(1.0 / n_micro, ms.float32)]


def test_adamw_matches_torch_over_steps():
    rng = np.random.default_rng(0)
    shapes = {"w.weight": (5, 7), "norm.weight": (7,), "b.bias": (5,)}
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    params = [Parameter(Tensor(v), name=k) for k, v in init.items()]
    opt = AdamW(params, (0.8, 0.9), 1e-8, 0.3)
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    topt = torch.optim.AdamW([{"params": [tparams["w.weight"]], "weight_decay": 0.3},
                              {"params": [tparams["norm.weight"], tparams["b.bias"]], "weight_decay": 0.0}],
                             lr=0.01, betas=(0.8, 0.9), eps=1e-8)
    for step in range(4):
        grads = {k: rng.normal(size=s).astype(np.float32) * (step + 1) for k, s in shapes.items()}
        lr = 0.01 * (1 - 0.1 * step)
        for g in topt.param_groups:
            g["lr"] = lr
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        topt.step()
        opt(tuple(Tensor(grads[p.name]) for p in params), Tensor(lr, ms.float32), Tensor(True))
    for p in params:
        np.testing.assert_allclose(p.asnumpy(), tparams[p.name].detach().numpy(), rtol=2e-6, atol=1e-7)
    assert float(opt.step.asnumpy()) == 4
    # a skipped update (apply=False) changes nothing, not even the step count
    before = [p.asnumpy().copy() for p in params]
    opt(tuple(Tensor(np.ones(p.shape, np.float32)) for p in params), Tensor(0.1, ms.float32), Tensor(False))
    assert float(opt.step.asnumpy()) == 4
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.asnumpy(), b)


def test_no_decay_groups():
    assert no_decay("model.layers.0.input_layernorm.weight") and no_decay("model.norm.weight")
    assert no_decay("model.layers.3.mlp.gate.e_score_correction_bias") and no_decay("x.o_proj.bias")
    assert not no_decay("model.layers.0.self_attn.q_a_proj.weight") and not no_decay("lm_head.weight")


def test_one_step_matches_pytorch_adamw(hf_v3_dir):
    """Same weights, same batch: loss, grad norm and every updated weight agree with a
    transformers + torch.optim.AdamW step (eps 1e-6: with eps 1e-8 the first Adam step
    g/(|g|+eps) amplifies float32 noise of gradients near 1e-8 beyond 1e-4)."""
    model = DeepseekForCausalLM.from_pretrained(hf_v3_dir)
    step, _, _, _ = make_step(model)
    ids = random_ids(2, 40, model.config.vocab_size, seed=11)
    labels = ids.copy()
    labels[:, :12] = -100
    lr = 1e-3
    outs, norm, finite = step(*step_inputs(ids, labels), Tensor(lr, ms.float32))

    hf = load_hf(hf_v3_dir)
    hf.train()
    named = list(hf.named_parameters())
    topt = torch.optim.AdamW([{"params": [p for n, p in named if not no_decay(n)], "weight_decay": 0.1},
                              {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-6)
    out = hf(torch.tensor(ids, dtype=torch.long), labels=torch.tensor(labels, dtype=torch.long))
    out.loss.backward()
    tnorm = torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0).item()
    topt.step()

    outs = R.named(outs)
    loss = float(outs[R.LM_SUM].asnumpy()) / float(outs[R.LM_COUNT].asnumpy())
    assert abs(loss - out.loss.item()) < 1e-5 * out.loss.item()
    assert abs(float(norm.asnumpy()) - tnorm) < 1e-4 * tnorm and tnorm > 1.0  # clipping was active
    ref = hf_to_internal({n: p.detach().numpy() for n, p in hf.state_dict().items()}, model.config.n_routed_experts)
    for p in model.trainable_params():
        r = ref[p.name]
        assert np.abs(p.asnumpy() - r).max() <= 1e-4 * np.abs(r).max(), p.name


def test_gradient_accumulation_equals_one_big_batch(hf_v2_dir):
    ids = random_ids(4, 24, 320, seed=2)
    labels = ids.copy()
    labels[:2, :10] = -100  # uneven token counts per micro-batch: the token-mean must still be exact
    big = DeepseekForCausalLM.from_pretrained(hf_v2_dir)
    step, _, _, _ = make_step(big)
    step(*step_inputs(ids, labels), Tensor(1e-3, ms.float32))

    acc = DeepseekForCausalLM.from_pretrained(hf_v2_dir)
    _, grad, apply, _ = make_step(acc)
    n_tok = float((labels[:, 1:] != -100).sum())
    total, loads = None, None
    for half in (slice(0, 2), slice(2, 4)):
        inp = step_inputs(ids[half], labels[half], n_micro=2)
        inp[4] = Tensor(1.0 / n_tok, ms.float32)
        outs, g = grad(*inp)
        total = g if total is None else AccumulateGrads()(total, g)
        outs = R.named(outs)
        loads = outs[R.LOAD].asnumpy() if loads is None else loads + outs[R.LOAD].asnumpy()
    apply(total, Tensor(loads), Tensor(1.0, ms.float32), Tensor(1e-3, ms.float32))
    for a, b in zip(big.trainable_params(), acc.trainable_params()):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=0, atol=2e-6 * max(1.0, np.abs(a.asnumpy()).max()))


@pytest.mark.parametrize("fused_clip", [False, True], ids=["composite", "kernels"])
def test_non_finite_step_changes_nothing(hf_v2_dir, fused_clip):
    model = DeepseekForCausalLM.from_pretrained(hf_v2_dir)
    step, _, _, opt = make_step(model, fused_clip=fused_clip)
    before = [p.asnumpy().copy() for p in model.get_parameters()]
    ids = random_ids(2, 16, 320)
    inp = step_inputs(ids, ids)
    inp[4] = Tensor(float("nan"), ms.float32)  # poisons the loss and every gradient
    outs, norm, finite = step(*inp, Tensor(1e-3, ms.float32))
    assert not bool(finite.asnumpy()) and math.isnan(float(R.named(outs)[R.LOSS].asnumpy()))
    for p, b in zip(model.get_parameters(), before):
        np.testing.assert_array_equal(p.asnumpy(), b)
    assert float(opt.step.asnumpy()) == 0


def test_lr_schedule():
    kw = dict(base_lr=1.0, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [learning_rate(s, kind="cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(4, kind="cosine", **kw) == 1.0
    assert abs(learning_rate(9, kind="cosine", **kw) - (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))) < 1e-12
    assert abs(learning_rate(14, kind="cosine", **kw) - 0.1) < 1e-12
    assert abs(learning_rate(9, kind="linear", **kw) - 0.55) < 1e-12
    assert learning_rate(100, kind="constant", **kw) == 1.0
