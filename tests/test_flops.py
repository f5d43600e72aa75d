"""Model FLOPs and parameter counts from the config, checked three independent ways: a hand
count for the tiny config, torch's FlopCounterMode on the transformers model, and DeepSeek's
published parameter counts."""
from __future__ import annotations

import os

import pytest

from conftest import ROOT, build_hf
from mindformers_ds import config
from mindformers_ds.models.deepseek.config import DeepseekConfig
from mindformers_ds.models.deepseek.shapes import parameter_specs
from mindformers_ds.observe.flops import forward_flops_per_token, parameter_counts, train_flops_per_token


def _model(rel: str) -> DeepseekConfig:
    return config.load(os.path.join(ROOT, rel), check_paths=False).model


def test_tiny_config_matches_a_hand_count():
    c = _model("configs/deepseek_v3/tiny.yaml")  # h=192, 4 heads, q_lora 96, kv_lora 64, nope 32, rope 16, v 32
    seq = 128
    # attention projections per layer: q_a 2*192*96 + q_b 2*96*4*48, kv_a 2*192*(64+16), kv_b 2*64*4*(32+32),
    # o 2*4*32*192
    attn_proj = 36864 + 36864 + 30720 + 32768 + 49152
    assert attn_proj == 186368
    scores = 2 * 4 * 48 * seq + 2 * 4 * 32 * seq            # QK^T and P.V over all 128 keys
    dense = 2 * 3 * 192 * 512                                # layer 0 (first_k_dense_replace=1)
    moe = 2 * 192 * 8 + 2 * 3 * 192 * 96 * 1 + 2 * 3 * 192 * 96 * 2  # router, 1 shared, top-2 routed
    head = 2 * 192 * 512
    main = 4 * (attn_proj + scores) + dense + 3 * moe + head
    mtp = 2 * 2 * 192 * 192 + attn_proj + scores + moe + head      # eh_proj, one MoE layer, shared head
    assert forward_flops_per_token(c, seq, include_mtp=False)["total"] == main == 2864128
    assert forward_flops_per_token(c, seq)["total"] == main + mtp
    assert train_flops_per_token(c, seq) == 3 * (main + mtp)


@pytest.mark.parametrize("kind", ["v3", "v2", "v32"])
def test_forward_flops_equal_torch_flop_counter_on_the_transformers_model(kind):
    """FlopCounterMode counts every matmul torch runs; with eager attention and eager experts
    (one matmul per expert over only its tokens) that is exactly our convention."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    hf = build_hf(kind)
    hf.config._attn_implementation = "eager"
    hf.config._experts_implementation = "eager"
    ours = DeepseekConfig.from_hf_dict(hf.config.to_dict())
    assert ours.index_topk == (8 if kind == "v32" else 0)
    batch, seq = 2, 40
    ids = torch.randint(0, hf.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        hf(input_ids=ids)
    expected = forward_flops_per_token(ours, seq, include_mtp=False)["total"] * batch * seq
    assert counter.get_total_flops() == expected


@pytest.mark.parametrize("rel, total_b, active_b", [
    ("configs/deepseek_v3/deepseek_v3_671b.yaml", 671, 37),        # DeepSeek-V3 report: 671B total, 37B active
    ("configs/deepseek_v2_lite/deepseek_v2_lite.yaml", 15.7, 2.4),  # DeepSeek-V2-Lite: 15.7B, 2.4B
])
def test_parameter_counts_match_the_published_figures(rel, total_b, active_b):
    n = parameter_counts(_model(rel))
    assert n["total"] / 1e9 == pytest.approx(total_b, rel=0.005)
    assert n["active"] / 1e9 == pytest.approx(active_b, rel=0.03)


def test_v3_671b_exact_parameter_count_with_mtp():
    """671B is the main model; the MTP module adds one MoE layer + eh_proj + norms (counted by
    hand here), and the release's "685B" also counts the MTP module's own copies of the
    embedding and head (2 x 129280 x 7168), which our model shares with the main model."""
    c = _model("configs/deepseek_v3/deepseek_v3_671b.yaml")
    main = parameter_counts(c)["total"]
    assert main == 671026419200
    h, e, inter = 7168, 256, 2048
    attn = h * 1536 + 1536 + 1536 * 128 * 192 + h * (512 + 64) + 512 + 512 * 128 * 256 + 128 * 128 * h
    moe = h * e + e + 3 * h * inter * (e + 1)
    mtp = attn + moe + 2 * h + 2 * h * h + 2 * h + h   # + input/post norms, enorm+hnorm, eh_proj, final norm
    assert parameter_counts(c, include_mtp=True)["total"] - main == mtp
    assert (main + mtp + 2 * 129280 * h) / 1e9 == pytest.approx(685, rel=0.002)


def test_v32_indexer_flops_hand_count_and_no_backward():
    c = _model("configs/deepseek_v32/tiny.yaml")   # 4 indexer heads of 32, q_lora 96, hidden 192
    seq = 64
    per_layer = 2 * 96 * 4 * 32 + 2 * 192 * 32 + 2 * 192 * 4 + 2 * 4 * 32 * seq + 2 * 4 * seq
    fwd = forward_flops_per_token(c, seq)
    assert fwd["indexer"] == 4 * per_layer and fwd["mtp_indexer"] == per_layer
    v3 = forward_flops_per_token(_model("configs/deepseek_v3/tiny.yaml"), seq)
    assert fwd["total"] == v3["total"] + 5 * per_layer
    assert train_flops_per_token(c, seq) == 3 * v3["total"] + 5 * per_layer


@pytest.mark.parametrize("rel", ["configs/deepseek_v3/bench_512.yaml", "configs/deepseek_v4/bench_512.yaml"])
def test_the_throughput_benchmarks_torch_model_is_the_configured_one(rel):
    """tools/bench/train_throughput.py compares against the transformers model torch_step.py builds
    from the same config: it must hold exactly the tensors ours has, by name and shape (MFU and tokens/s compare
    the same model) and the config's attention and MLP schedule."""
    import sys
    sys.path.insert(0, ROOT)
    from tools.bench.torch_step import hf_model
    mc = config.load(os.path.join(ROOT, rel), check_paths=False).model.model_config()
    hf = hf_model(mc)
    # the state dict: the router bias and V4's hash table are buffers there, tensors here
    assert {k: tuple(v.shape) for k, v in hf.state_dict().items()} == \
        {name: tuple(shape) for name, shape, _ in parameter_specs(mc)}
    assert sum(v.numel() for v in hf.state_dict().values()) == parameter_counts(mc)["total"]
    assert type(hf).__name__ == ("DeepseekV4ForCausalLM" if mc.is_v4 else "DeepseekV3ForCausalLM")
    if mc.is_v4:
        assert list(hf.config.layer_types) == list(mc.layer_types)
        assert list(hf.config.mlp_layer_types) == list(mc.mlp_layer_types)
        assert hf.config.hc_mult == 4 and hf.config.vocab_size == 32000
