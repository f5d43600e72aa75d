"""The block contract: an attention type added in one file (tests/plain_attention_block.py, its
cell, facts and config part) is built per layer by the model and picked up by the parameter
table, the layout table, the FLOP counter and the planner with no edit in mindformers_ds/."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

import plain_attention_block as block
from conftest import ROOT, random_ids
from mindformers_ds import config
from mindformers_ds.errors import ConfigError
from mindformers_ds.models.deepseek import DeepseekForCausalLM, results as R
from mindformers_ds.models.deepseek.config import DeepseekConfig
from mindformers_ds.models.deepseek.masks import attention_mask
from mindformers_ds.models.deepseek.shapes import parameter_count, parameter_specs
from mindformers_ds.observe.flops import forward_flops_per_token, layer_flops
from mindformers_ds.config import ParallelConfig
from mindformers_ds.parallel.comm import ParallelContext
from mindformers_ds.parallel.layout import layout_table
from mindformers_ds.parallel.parallelize import parallelize
from mindformers_ds.plan.memory import estimate_memory, layer_activation_bytes

CFG = os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml")   # 2 layers: dense, then MoE
SEQ = 32


def model_config(types):
    sets = [f"model.attention_types=[{','.join(types)}]"] if types else []
    return config.load(CFG, sets).model.model_config()


@pytest.fixture(scope="module")
def configs():
    return model_config(["mla", block.NAME]), model_config([])


def test_nothing_in_the_package_names_the_test_block():
    for path in glob.glob(os.path.join(ROOT, "mindformers_ds", "**", "*.py"), recursive=True):
        assert block.NAME not in open(path).read(), path


def test_parameter_and_layout_tables_hold_the_block(configs):
    c, mla = configs
    specs = {n: (s, r) for n, s, r in parameter_specs(c)}
    h = c.hidden_size
    attn = "model.layers.1.self_attn."
    assert {n for n in specs if n.startswith(attn)} == {attn + f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert specs[attn + "q_proj.weight"] == ((h, h), "linear_col") and specs[attn + "o_proj.weight"] == ((h, h), "linear_row")
    # layer 0 and the MTP layer stay MLA
    assert attn.replace(".1.", ".0.") + "kv_b_proj.weight" in specs and attn.replace(".1.", ".2.") + "kv_b_proj.weight" in specs
    model = DeepseekForCausalLM(c)
    assert {p.name: tuple(p.shape) for p in model.get_parameters()} == {n: tuple(s) for n, (s, _) in specs.items()}
    assert model.num_parameters() == parameter_count(c)
    assert type(model.model.layers[1].self_attn) is block.PlainAttention
    table = layout_table(c, ParallelConfig(dp=1, tp=2))
    assert table[attn + "q_proj.weight"].split == {"tp": 0} and table[attn + "o_proj.weight"].split == {"tp": 1}
    # the executor splits the block from its facts' roles alone: the block's code knows no parallelism
    ctx = ParallelContext(2, 1, 1, 2, 1)
    done = parallelize(model, table, ctx)
    assert done["column-parallel linear"] >= 3 and done["row-parallel linear"] >= 1
    assert model.model.layers[1].self_attn.q_proj.weight.shape == (h // 2, h)
    assert model.model.layers[1].self_attn.o_proj.weight.shape == (h, h // 2)
    assert {p.name: tuple(p.shape) for p in model.get_parameters()} == \
        {n: t.local_shape(ctx.sizes()) for n, t in table.items()}
    back = DeepseekConfig.from_hf_dict(c.to_hf_dict())
    assert back.attention_types == c.attention_types and "attention_types" not in mla.to_hf_dict()


def test_flop_counter_and_planner_count_the_block(configs):
    c, mla = configs
    h, nh = c.hidden_size, c.num_attention_heads
    ours, base = forward_flops_per_token(c, SEQ), forward_flops_per_token(mla, SEQ)
    mla_layer = layer_flops(mla, SEQ, 1)
    assert ours["attn_proj"] == base["attn_proj"] - mla_layer["attn_proj"] + 8 * h * h
    assert ours["attn_scores"] == base["attn_scores"] - mla_layer["attn_scores"] + 4 * h * SEQ
    assert ours["total"] == sum(v for k, v in ours.items() if k != "total")
    batch, B = 2, 4
    t = batch * SEQ
    acts = layer_activation_bytes(c, 1, t, batch, SEQ, 1, False, B)
    assert acts["attention"] == B * t * 2 * h + B * t * 4 * h + 4 * batch * nh * SEQ * SEQ
    par = ParallelConfig(dp=1, tp=1)
    with_block, without = estimate_memory(c, par, batch, SEQ)[0], estimate_memory(mla, par, batch, SEQ)[0]
    assert with_block.params == parameter_count(c)
    mla_acts = layer_activation_bytes(mla, 1, t, batch, SEQ, 1, False, B)["attention"]
    assert with_block.activations - without.activations == pytest.approx(acts["attention"] - mla_acts)


def test_the_block_computes_plain_attention_and_trains(configs):
    from test_train_step import make_step, step_inputs
    c, _ = configs
    model = DeepseekForCausalLM(c)
    model.init_weights(0)
    cell = model.model.layers[1].self_attn
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, c.hidden_size)).astype(np.float32)
    w = {n: getattr(cell, n).weight.asnumpy().astype(np.float64) for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    nh, d = c.num_attention_heads, block.head_dim(c)
    heads = lambda t: t.reshape(2, 8, nh, d).transpose(0, 2, 1, 3)
    q, k, v = (heads(x @ w[n].T) for n in ("q_proj", "k_proj", "v_proj"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + np.where(np.tril(np.ones((8, 8))) > 0, 0.0, -1e9)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = (p @ v).transpose(0, 2, 1, 3).reshape(2, 8, -1) @ w["o_proj"].T
    got = cell(Tensor(x), None, None, attention_mask(2, 8)).asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    step, *_ = make_step(model)
    before = cell.q_proj.weight.asnumpy().copy()
    ids = random_ids(2, 16, c.vocab_size, seed=1)
    outs, norm, finite = step(*step_inputs(ids, ids), Tensor(1e-3, ms.float32))
    assert bool(finite.asnumpy()) and np.isfinite(float(R.named(outs)[R.LM_SUM].asnumpy()))
    assert np.abs(cell.q_proj.weight.asnumpy() - before).max() > 0


def test_unknown_type_and_the_blocks_own_checks_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^--set: model.attention_types has unknown types \['nope'\]; known: "
                                          r"\['mla', 'plain_mha'\]"):
        model_config(["mla", "nope"])
    with pytest.raises(ConfigError, match=r"model.attention_types lists 1 layers but num_hidden_layers=2"):
        model_config(["mla"])
    with pytest.raises(ConfigError, match=r"model.num_attention_heads=3 must divide model.hidden_size=64 for plain_mha"):
        config.load(CFG, [f"model.attention_types=[mla,{block.NAME}]", "model.num_attention_heads=3"])


def test_generation_recomputes_where_a_layer_has_no_cache(configs, caplog):
    """The block has no KV-cache path: generate says so and recomputes, and equals greedy
    decoding by repeated full forwards."""
    c, _ = configs
    model = DeepseekForCausalLM(c)
    model.init_weights(0)
    prompt = random_ids(1, 6, c.vocab_size, seed=2)
    with caplog.at_level("INFO"):
        out = model.generate(Tensor(prompt), max_new_tokens=3)
    assert "KV cache is not implemented for attention types ['plain_mha']" in caplog.text
    ids = prompt
    for _ in range(3):
        logits = model(Tensor(ids)).asnumpy()
        ids = np.concatenate([ids, logits[:, -1].argmax(-1).reshape(1, 1).astype(ids.dtype)], 1)
    np.testing.assert_array_equal(np.asarray(out.asnumpy() if hasattr(out, "asnumpy") else out), ids)
