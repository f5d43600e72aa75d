"""The MindSpore model against transformers' DeepseekV3/V2ForCausalLM (fp32, random weights).

Logits must agree within 1e-4 max-abs; the experts chosen for every token must be the same:
(1) each MoE router, fed the exact hidden states transformers' router saw, picks the same set;
(2) the per-layer expert loads our model counts in its own forward equal transformers' loads.
"""
from __future__ import annotations

import json
import os

import numpy as np

from mindformers_ds.models.deepseek import results as R
import pytest
import torch
import mindspore as ms
from mindspore import nn

from conftest import build_hf, random_ids, save_hf
from mindformers_ds.models.deepseek import DeepseekConfig, DeepseekForCausalLM
from mindformers_ds.checkpoint.pretrained import load_weights

CASES = {
    # all V3 features: q LoRA, YaRN (mscale), sigmoid + bias, noaux_tc groups, dense + MoE layers
    "v3_yarn": ("v3", {}),
    # plain RoPE, non-interleaved pairs, no groups, un-normalised weights
    "v3_plain_rope": ("v3", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                 rope_interleave=False, n_group=1, topk_group=1, norm_topk_prob=False)),
    # V2-Lite: no q LoRA, softmax greedy router, two shared experts, YaRN with mscale 0.707
    "v2_lite": ("v2", {}),
    # V2 with the group-limited greedy router
    "v2_group_limited": ("v2", dict(n_group=4, topk_group=2, topk_method="group_limited_greedy")),
}


class _Load(nn.Cell):
    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, ids):
        return self.model.forward_train(ids, ids)[R.LOAD]


def _capture_routing(hf, ids):
    """Gate inputs and chosen experts of every transformers MoE layer."""
    seen = {}
    hooks = []
    for i, layer in enumerate(hf.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is None:
            continue

        def hook(mod, args, out, i=i):
            seen[i] = (args[0].detach().reshape(-1, args[0].shape[-1]).numpy().copy(), out[2].numpy().copy())
        hooks.append(gate.register_forward_hook(hook))
    with torch.no_grad():
        logits = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    for h in hooks:
        h.remove()
    return logits, seen


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_routing_match_transformers(case, tmp_path):
    kind, overrides = CASES[case]
    hf = build_hf(kind, seed=3, **overrides)
    path = save_hf(hf, str(tmp_path / case))
    model = DeepseekForCausalLM.from_pretrained(path)
    ids = random_ids(2, 40, hf.config.vocab_size, seed=5)

    ref, routing = _capture_routing(hf, ids)
    ours = model(ms.Tensor(ids)).asnumpy()
    assert ours.shape == (2, 40, hf.config.vocab_size)
    assert np.abs(ref).max() > 0.5, "logits too small for the comparison to mean anything"
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)

    moe_layers = sorted(routing)
    assert moe_layers == [i for i in range(hf.config.num_hidden_layers) if i >= hf.config.first_k_dense_replace]
    loads = _Load(model)(ms.Tensor(ids)).asnumpy()
    for row, i in enumerate(moe_layers):
        gate_in, hf_idx = routing[i]
        _, idx, _ = model.model.layers[i].mlp.gate(ms.Tensor(gate_in))
        assert [set(r) for r in idx.asnumpy().tolist()] == [set(r) for r in hf_idx.tolist()], f"layer {i}"
        hf_load = np.bincount(hf_idx.reshape(-1), minlength=hf.config.n_routed_experts)
        np.testing.assert_array_equal(loads[row], hf_load)


def test_every_feature_moves_the_logits(hf_v3_dir):
    """The parity above is meaningful: switching off one V3 feature changes logits by >> 1e-4."""
    base = DeepseekForCausalLM.from_pretrained(hf_v3_dir)
    ids = ms.Tensor(random_ids(2, 40, base.config.vocab_size, seed=1))
    ref = base(ids).asnumpy()
    for change in (dict(rope_scaling=None), dict(routed_scaling_factor=1.0), dict(rope_interleave=False),
                   dict(n_group=1, topk_group=1)):
        other = DeepseekForCausalLM.from_pretrained(hf_v3_dir, **change)
        assert np.abs(other(ids).asnumpy() - ref).max() > 1e-3, change


def test_save_pretrained_is_loadable_by_transformers(hf_v3_dir, tmp_path):
    model = DeepseekForCausalLM.from_pretrained(hf_v3_dir)
    out = model.save_pretrained(str(tmp_path / "saved"))
    from conftest import load_hf
    hf = load_hf(out)
    ids = random_ids(1, 33, model.config.vocab_size, seed=2)
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(model(ms.Tensor(ids)).asnumpy(), ref, atol=1e-4, rtol=0)
    again = DeepseekForCausalLM.from_pretrained(out)
    for a, b in zip(model.get_parameters(), again.get_parameters()):
        assert a.name == b.name
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_labels_give_the_transformers_loss(hf_v2_dir):
    model = DeepseekForCausalLM.from_pretrained(hf_v2_dir)
    hf = __import__("conftest").load_hf(hf_v2_dir)
    ids = random_ids(2, 36, model.config.vocab_size, seed=7)
    labels = ids.copy()
    labels[:, :9] = -100
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long), labels=torch.tensor(labels, dtype=torch.long)).loss.item()
    loss = float(model(ms.Tensor(ids), ms.Tensor(labels)).asnumpy())
    assert abs(loss - ref) < 1e-5 * abs(ref)
