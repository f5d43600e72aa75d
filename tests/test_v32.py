"""DeepSeek-V3.2 (Lightning Indexer + sparse MLA) against transformers' DeepseekV32ForCausalLM:
logits, the keys the indexer selects, the experts chosen, one training step, configs."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor

from conftest import ROOT, build_hf, random_ids, save_hf
from mindformers_ds import config
from mindformers_ds.checkpoint.names import hf_to_internal
from mindformers_ds.config import ConfigError
from mindformers_ds.models.deepseek import DeepseekConfig, DeepseekForCausalLM
from mindformers_ds.train.optimizer import no_decay
from test_train_step import make_step, step_inputs

SEQ = 40  # > index_topk = 8: most queries see more keys than the indexer keeps


@pytest.fixture(scope="module")
def hf_v32(tmp_path_factory):
    hf = build_hf("v32", seed=3)
    hf.config._attn_implementation = "eager"
    return hf, save_hf(hf, str(tmp_path_factory.mktemp("hf_v32")))


def _indexer_io(hf, ids):
    """Inputs and top-k output of every transformers indexer, and the gate choices."""
    seen, hooks = {}, []
    for i, layer in enumerate(hf.model.layers):
        def hook(mod, args, kwargs, out, i=i):
            seen[("index", i)] = (args[0].numpy().copy(), args[1].numpy().copy(), out.numpy().copy())
        hooks.append(layer.self_attn.indexer.register_forward_hook(hook, with_kwargs=True))
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None:
            def ghook(mod, args, out, i=i):
                seen[("gate", i)] = out[2].numpy().copy()
            hooks.append(gate.register_forward_hook(ghook))
    with torch.no_grad():
        logits = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    for h in hooks:
        h.remove()
    return logits, seen


class _Indexer(ms.nn.Cell):
    def __init__(self, model, layer):
        super().__init__(auto_prefix=False)
        self.rotary = model.model.rotary_emb
        self.indexer = model.model.layers[layer].self_attn.indexer

    def construct(self, x, q_resid, position_ids, mask):
        cos, sin = self.rotary(position_ids)
        return self.indexer(x, q_resid, cos, sin, mask)[0]


def test_logits_indexer_choices_and_routing_match_transformers(hf_v32):
    hf, path = hf_v32
    model = DeepseekForCausalLM.from_pretrained(path)
    assert model.config.model_type == "deepseek_v32" and model.config.index_topk == 8
    ids = random_ids(2, SEQ, hf.config.vocab_size, seed=5)
    ref, seen = _indexer_io(hf, ids)
    ours = model(Tensor(ids)).asnumpy()
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)

    # every layer's indexer, fed transformers' inputs, keeps the same keys for every query
    pos = Tensor(np.tile(np.arange(SEQ, dtype=np.int32), (2, 1)))
    causal = Tensor(np.tril(np.ones((SEQ, SEQ), bool))[None, None])
    for i in range(hf.config.num_hidden_layers):
        x, q_resid, chosen_ref = seen[("index", i)]
        chosen = _Indexer(model, i)(Tensor(x), Tensor(q_resid), pos, causal).asnumpy()
        for s in range(SEQ):  # queries with fewer than 8 visible keys also pick masked ones: compare the visible
            for b in range(2):
                ours_set = {int(t) for t in chosen[b, s] if t <= s}
                ref_set = {int(t) for t in chosen_ref[b, s] if t <= s}
                assert ours_set == ref_set, (i, b, s)
                assert len(ref_set) == min(8, s + 1)

    # the experts chosen: our per-layer loads equal transformers' choices counted
    from test_model_parity import _Load
    loads = _Load(model)(Tensor(ids)).asnumpy()
    moe = [i for i in range(hf.config.num_hidden_layers) if i >= hf.config.first_k_dense_replace]
    for row, i in enumerate(moe):
        counts = np.bincount(seen[("gate", i)].reshape(-1), minlength=hf.config.n_routed_experts)
        np.testing.assert_array_equal(loads[row], counts)


def test_sparse_attention_changes_the_logits(hf_v32):
    """The indexer is not a no-op here: keeping every key (index_topk >= seq) gives other logits."""
    _, path = hf_v32
    ids = Tensor(random_ids(2, SEQ, 320, seed=5))
    sparse = DeepseekForCausalLM.from_pretrained(path)(ids).asnumpy()
    with open(os.path.join(path, "config.json")) as f:
        d = json.load(f)
    dense = DeepseekForCausalLM(DeepseekConfig.from_hf_dict(dict(d, index_topk=SEQ)))
    from mindformers_ds.checkpoint.pretrained import load_weights
    load_weights(dense, path)
    assert np.abs(dense(ids).asnumpy() - sparse).max() > 1e-2


@pytest.mark.parametrize("fused_ops", [(), ("mla_attention", "sparse_mla_attention", "index_topk")],
                         ids=["composite", "kernels"])
def test_one_step_matches_pytorch_and_leaves_the_indexer_frozen(hf_v32, fused_ops):
    """One training step against transformers, with the masked dense composite and with the
    kernels that cost O(S k) in the attention: the top-k attention (ops/cpu/sparse_attention.cc)
    over the keys the indexer kernel (ops/cpu/index_topk.cc) picks."""
    hf, path = hf_v32
    model = DeepseekForCausalLM.from_pretrained(path, fused_ops=fused_ops)
    kinds = {type(c).__name__ for _, c in model.cells_and_names()}
    assert ("FusedSparseMlaAttention" in kinds) == ("FusedIndexTopk" in kinds) == bool(fused_ops)
    names = {p.name for p in model.trainable_params()}
    assert not any(".indexer." in n for n in names)
    before = {p.name: p.asnumpy().copy() for p in model.get_parameters() if ".indexer." in p.name}
    assert len(before) == 5 * (hf.config.num_hidden_layers + model.config.num_nextn_predict_layers)
    step, _, _, _ = make_step(model)
    ids = random_ids(2, SEQ, model.config.vocab_size, seed=11)
    labels = ids.copy()
    labels[:, :12] = -100
    outs, norm, _ = step(*step_inputs(ids, labels), Tensor(1e-3, ms.float32))

    ref_model = build_hf("v32", seed=3)
    ref_model.config._attn_implementation = "eager"
    ref_model.train()
    named = [(n, p) for n, p in ref_model.named_parameters()]
    topt = torch.optim.AdamW([{"params": [p for n, p in named if not no_decay(n)], "weight_decay": 0.1},
                              {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}],
                             lr=1e-3, betas=(0.9, 0.95), eps=1e-6)
    out = ref_model(torch.tensor(ids, dtype=torch.long), labels=torch.tensor(labels, dtype=torch.long))
    out.loss.backward()
    tnorm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 1.0).item()
    topt.step()
    loss = float(outs[1].asnumpy()) / float(outs[2].asnumpy())
    assert abs(loss - out.loss.item()) < 1e-4 * out.loss.item()
    assert abs(float(norm.asnumpy()) - tnorm) < 1e-4 * tnorm
    ref = hf_to_internal({n: p.detach().numpy() for n, p in ref_model.state_dict().items()},
                         model.config.n_routed_experts)
    for p in model.trainable_params():
        r = ref[p.name]
        assert np.abs(p.asnumpy() - r).max() <= 1e-4 * np.abs(r).max(), p.name
    for p in model.get_parameters():
        if p.name in before:
            np.testing.assert_array_equal(p.asnumpy(), before[p.name])
            np.testing.assert_array_equal(p.asnumpy(), ref[p.name])


def test_v32_configs_load_and_bad_fields_are_named(tmp_path):
    tiny = config.load(os.path.join(ROOT, "configs/deepseek_v32/tiny.yaml"), check_paths=False).model
    assert tiny.model_type == "deepseek_v32" and tiny.index_topk > 0
    big = config.load(os.path.join(ROOT, "configs/deepseek_v32/671b.yaml"), check_paths=False).model
    assert (big.index_topk, big.index_n_heads, big.index_head_dim) == (2048, 64, 128)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_config: %s\nmodel:\n  index_topk: 0\n" % os.path.join(ROOT, "configs/deepseek_v32/tiny.yaml"))
    with pytest.raises(ConfigError) as e:
        config.load(str(bad), check_paths=False)
    assert str(bad) in str(e.value) and "model.index_topk" in str(e.value)
    hf = {"model_type": "deepseek_v32", "num_hidden_layers": 3, "first_k_dense_replace": 1,
          "mlp_layer_types": ["dense", "dense", "sparse"], "index_topk": 4}
    with pytest.raises(ConfigError) as e:
        DeepseekConfig.from_hf_dict(hf, source="v32/config.json")
    assert "v32/config.json" in str(e.value) and "mlp_layer_types" in str(e.value)


@pytest.mark.timeout(900)
def test_tiny_v32_fine_tunes_on_the_demo_data_with_the_loss_falling(tmp_path):
    from mindformers_ds.train.trainer import Trainer
    sets = [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=30", "train.micro_batch_size=8",
            "train.eval_every=0", "train.exact_match_samples=0", "data.max_samples=320", "checkpoint.save_every=0",
            "logging.progress_bar=false", "logging.log_every=1", "model.hidden_size=64", "model.moe_intermediate_size=32",
            "model.intermediate_size=128", "optimizer.lr=3e-3"]
    cfg = config.load(os.path.join(ROOT, "configs/deepseek_v32/finetune_tiny.yaml"), sets)
    os.chdir(ROOT)
    Trainer(cfg).run()
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r and "type" not in r]
    assert len(losses) >= 25
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"V3.2 tiny fine-tune: loss {first:.3f} -> {last:.3f}")
    assert last < 0.7 * first
