"""DeepSeek-V4 against transformers' DeepseekV4ForCausalLM: logits (every attention and MLP type,
sequence longer than the window and several compression blocks, batch 2), the indexer's choices,
the routed experts, one training step, checkpoint conversion (transformers / release names, FP8 +
FP4 quantised release), configs, and a fine-tune of the tiny config on the demo data."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import mindspore as ms
from mindspore import Tensor

from conftest import ROOT, random_ids
from mindformers_ds import config
from mindformers_ds.checkpoint import convert
from mindformers_ds.checkpoint.names import hf_to_internal, internal_to_hf
from mindformers_ds.checkpoint.reader import CheckpointReader
from mindformers_ds.checkpoint.v4_names import canonical_v4_name, release_v4_name
from mindformers_ds.config import ConfigError
from mindformers_ds.models.deepseek import DeepseekConfig, DeepseekForCausalLM
from mindformers_ds.models.deepseek.config import FUSED_OPS
from mindformers_ds.models.deepseek.shapes import parameter_specs
from mindformers_ds.train.optimizer import no_decay
from test_model_parity import _Load
from test_train_step import make_step, step_inputs

SEQ = 40   # > sliding_window 8; 10 CSA windows (rate 4) of which the indexer keeps 3; 5 HCA windows (rate 8)
V4_TINY = dict(vocab_size=64, hidden_size=32, moe_intermediate_size=16, num_hidden_layers=4, num_attention_heads=4,
               head_dim=16, q_lora_rank=24, num_experts_per_tok=2, n_routed_experts=4, n_shared_experts=1,
               layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                            "compressed_sparse_attention"],
               mlp_layer_types=["hash_moe", "moe", "moe", "moe"],
               compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
               sliding_window=8, o_groups=2, o_lora_rank=8, index_n_heads=2, index_head_dim=8, index_topk=3,
               hc_mult=2, hc_sinkhorn_iters=5, partial_rotary_factor=0.5, initializer_range=0.1,
               rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                "beta_fast": 32, "beta_slow": 1},
               max_position_embeddings=256, swiglu_limit=0.5)  # gate pre-activations reach 1.5: clipping in play


def build_hf_v4(seed: int = 0):
    """A random transformers V4 whose zero-initialised parts (sinks, position biases, mHC biases,
    router bias, hash table) get random values, so every one of them matters."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
    torch.manual_seed(seed)
    hf = DeepseekV4ForCausalLM(DeepseekV4Config(**V4_TINY)).float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if n.endswith(("sinks", "position_bias", ".base", "hc_base")):
                p.normal_(0, 0.5, generator=g)
            elif n.endswith("scale"):
                p.uniform_(0.5, 1.5, generator=g)
            elif n.endswith("norm.weight"):
                p.uniform_(0.8, 1.2, generator=g)
        for m in hf.modules():
            if hasattr(m, "e_score_correction_bias"):
                m.e_score_correction_bias.normal_(0, 0.05, generator=g)
            if hasattr(m, "tid2eid"):
                m.tid2eid.copy_(torch.stack([torch.randperm(m.num_experts, generator=g)[:m.top_k]
                                             for _ in range(m.tid2eid.shape[0])]))
    hf.config._attn_implementation = "eager"
    return hf


@pytest.fixture(scope="module")
def hf_v4(tmp_path_factory):
    hf = build_hf_v4()
    path = str(tmp_path_factory.mktemp("hf_v4"))
    hf.save_pretrained(path)
    return hf, path


def _reference_io(hf, ids):
    """transformers' logits, every indexer's inputs and picks, every router's expert choice."""
    seen, hooks = {}, []
    for i, layer in enumerate(hf.model.layers):
        comp = layer.self_attn.compressor
        if comp is not None and hasattr(comp, "indexer"):
            def hook(mod, args, out, i=i):
                seen[("index", i)] = (args[0].numpy().copy(), args[1].numpy().copy(), out.numpy().copy())
            hooks.append(comp.indexer.register_forward_hook(hook))

        def ghook(mod, args, out, i=i):
            seen[("gate", i)] = out[2].numpy().copy()
        hooks.append(layer.mlp.gate.register_forward_hook(ghook))
    with torch.no_grad():
        logits = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    for h in hooks:
        h.remove()
    return logits, seen


class _Indexer(ms.nn.Cell):
    def __init__(self, model, layer):
        super().__init__(auto_prefix=False)
        self.rotary = model.model.rotary_emb
        self.indexer = model.model.layers[layer].self_attn.compressor.indexer

    def construct(self, x, q_resid, positions):
        cos, sin = self.rotary(positions)[1]
        return self.indexer(x, q_resid, cos, sin, positions)[:2]


def test_parameters_are_the_shape_table_and_transformers_names(hf_v4):
    hf, path = hf_v4
    model = DeepseekForCausalLM.from_pretrained(path)
    ours = {p.name: tuple(p.shape) for p in model.get_parameters()}
    assert ours == {n: tuple(s) for n, s, _ in parameter_specs(model.config)}
    ref = hf_to_internal({k: v.numpy() for k, v in hf.state_dict().items()}, 4)
    assert ours == {n: tuple(v.shape) for n, v in ref.items()}
    r = CheckpointReader(path)  # transformers writes release names; they map to ours and back
    assert len(r.stored) > 50
    for canonical, stored in r.stored.items():
        assert canonical_v4_name(stored) == canonical and release_v4_name(canonical) == stored
    r.close()


# every fused kernel on: those that compute a V4 case (RMSNorm, SwiGLU, the MoE dispatch and
# grouped matmul, the head + loss, the clip, mHC's Sinkhorn); the rest fall back by themselves
WITH_KERNELS = [pytest.param({}, id="composite"), pytest.param({"fused_ops": FUSED_OPS}, id="fused")]


@pytest.mark.parametrize("overrides", WITH_KERNELS)
def test_logits_indexer_choices_and_routing_match_transformers(hf_v4, overrides):
    hf, path = hf_v4
    model = DeepseekForCausalLM.from_pretrained(path, **overrides)
    assert type(model).__name__ == "DeepseekV4ForCausalLM"
    ids = random_ids(2, SEQ, 64, seed=5)
    ref, seen = _reference_io(hf, ids)
    ours = model(Tensor(ids)).asnumpy()
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)

    pos = Tensor(np.tile(np.arange(SEQ, dtype=np.int32), (2, 1)))
    checked = 0
    for i in (1, 3):  # the CSA layers: fed transformers' inputs, our indexer keeps the same entries
        x, q_resid, picks_ref = seen[("index", i)]
        visible, picks = _Indexer(model, i)(Tensor(x), Tensor(q_resid), pos)
        visible, picks = visible.asnumpy(), picks.asnumpy()
        for b in range(2):
            for t in range(SEQ):
                ref_set = {int(w) for w in picks_ref[b, t] if w >= 0}
                ours_set = {int(w) for w in picks[b, t] if visible[b, t, w]}
                assert ours_set == ref_set, (i, b, t)
                assert len(ref_set) == min(3, (t + 1) // 4)
                checked += len(ref_set)
    assert checked > 300

    loads = _Load(model)(Tensor(ids)).asnumpy()  # experts chosen: per-layer loads = transformers' choices
    for i in range(4):
        np.testing.assert_array_equal(loads[i], np.bincount(seen[("gate", i)].reshape(-1), minlength=4))
    hash_choice = seen[("gate", 0)].reshape(2, SEQ, 2)
    table = hf.model.layers[0].mlp.gate.tid2eid.numpy()
    np.testing.assert_array_equal(hash_choice, table[ids])  # layer 0 routes by token id


@pytest.mark.parametrize("overrides", WITH_KERNELS)
def test_one_step_matches_pytorch(hf_v4, overrides):
    hf, path = hf_v4
    model = DeepseekForCausalLM.from_pretrained(path, **overrides)
    frozen = {p.name: p.asnumpy().copy() for p in model.get_parameters() if not p.requires_grad}
    assert any(".indexer." in n for n in frozen) and any(n.endswith("tid2eid") for n in frozen)
    step, _, _, _ = make_step(model, fused_clip=bool(overrides))
    ids = random_ids(2, SEQ, 64, seed=11)
    labels = ids.copy()
    labels[:, :12] = -100
    outs, norm, _ = step(*step_inputs(ids, labels), Tensor(1e-3, ms.float32))

    ref_model = build_hf_v4()
    ref_model.train()
    named = list(ref_model.named_parameters())
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
    ref = hf_to_internal({n: p.detach().numpy() for n, p in ref_model.state_dict().items()}, 4)
    moved = 0
    for p in model.trainable_params():
        r = ref[p.name]
        assert np.abs(p.asnumpy() - r).max() <= 1e-4 * np.abs(r).max(), p.name
        moved += 1
    assert moved > 100
    for p in model.get_parameters():
        if p.name in frozen:  # the indexers and hash tables: untouched on both sides
            np.testing.assert_array_equal(p.asnumpy(), frozen[p.name])
            if not p.name.endswith("e_score_correction_bias"):
                np.testing.assert_array_equal(p.asnumpy(), ref[p.name])


def _tensors(path):
    """canonical name -> (dtype tag, bytes)"""
    r = CheckpointReader(path)
    try:
        return {n: (r.info(n)[0], r.get(n)[1].tobytes()) for n in r.names()}
    finally:
        r.close()


def test_round_trip_is_bit_exact_and_transformers_reloads_it(hf_v4, tmp_path):
    hf, src = hf_v4
    convert.hf_to_ms(src, str(tmp_path / "ms"), bar=False)
    convert.ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"), bar=False)
    a, b = _tensors(src), _tensors(str(tmp_path / "back"))
    assert a.keys() == b.keys() and a == b
    from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
    with SafetensorsFile(os.path.join(src, "model.safetensors")) as f1, \
            SafetensorsFile(str(tmp_path / "back" / "model.safetensors")) as f2:
        assert sorted(f1.keys()) == sorted(f2.keys())   # the names transformers wrote, restored
    ms_side = CheckpointReader(str(tmp_path / "ms"))
    assert ms_side.info("model.layers.1.mlp.experts.gate_up_proj")[1] == (4, 32, 32)
    assert ms_side.info("model.layers.0.mlp.gate.tid2eid")[0] == "I64"
    ms_side.close()
    from transformers import AutoModelForCausalLM
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "back"), torch_dtype=torch.float32).eval()
    ids = torch.tensor(random_ids(2, SEQ, 64, seed=2), dtype=torch.long)
    with torch.no_grad():
        np.testing.assert_array_equal(back(ids).logits.numpy(), hf(ids).logits.numpy())


def _release_with_fp8_and_fp4(hf, path):
    """The V4 release layout: release names without `model.`, attention projections in FP8 e4m3
    (128 x 128 blocks, UE8M0 scales), routed experts in FP4 e2m1 (two per byte, [1, 32] UE8M0
    blocks), an MTP block. Returns the float32 each quantised weight stands for, computed with
    torch's float8 types and transformers' FP4 dequantiser (independent of our decoders)."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    from mindformers_ds.checkpoint.safetensors_io import write_safetensors
    rng = np.random.default_rng(7)
    items, expected = [], {}
    e8m0 = lambda shape: rng.integers(118, 132, shape, dtype=np.uint8)  # noqa: E731
    per_expert = internal_to_hf({n: t.numpy() for n, t in hf.state_dict().items()})
    for name, arr in per_expert.items():
        stored = release_v4_name(name)
        stored = stored[len("model."):] if stored.startswith("model.") else stored
        attn_linear = ".attn.w" in stored and stored.endswith(".weight") and ".indexer." not in stored \
            and ".compressor." not in stored
        if attn_linear or ".experts." in stored:
            r, c = arr.shape
            base = stored[:-len(".weight")]
            if attn_linear:
                codes = rng.integers(0, 256, (r, c), dtype=np.uint8)
                codes[(codes & 0x7F) == 0x7F] = 0                     # no NaN codes
                scale = e8m0((-(-r // 128), -(-c // 128)))
                f8 = torch.from_numpy(codes.copy()).view(torch.float8_e4m3fn).float()
                s = torch.from_numpy(scale.copy()).view(torch.float8_e8m0fnu).float()
                ref = (f8 * s.repeat_interleave(128, 0)[:r].repeat_interleave(128, 1)[:, :c]).numpy()
                items += [(stored, "F8_E4M3", codes), (base + ".scale", "F8_E8M0", scale)]
            else:
                packed = rng.integers(0, 256, (r, c // 2), dtype=np.uint8)
                scale = e8m0((r, -(-c // 32)))
                if c % 32 == 0:
                    ref = Fp8Dequantize(None)._dequantize_one(torch.from_numpy(packed.view(np.int8).copy()),
                                                              torch.from_numpy(scale.copy()), torch.float32).numpy()
                else:  # down_proj: 16 columns, one ragged block per row
                    from mindformers_ds.checkpoint.fp4 import E2M1_TABLE
                    vals = np.stack([E2M1_TABLE[packed & 0xF], E2M1_TABLE[packed >> 4]], -1).reshape(r, c)
                    ref = vals * np.ldexp(1.0, scale.astype(np.int32) - 127).astype(np.float32)
                items += [(stored, "I8", packed.view(np.int8)), (base + ".scale", "F8_E8M0", scale)]
            expected[canonical_v4_name(stored)] = ref.astype(np.float32)
        else:
            tag = "I64" if arr.dtype == np.int64 else "F32"
            items.append((stored, tag, arr))
    mtp = [("mtp.0.attn.wq_a.weight", "F8_E4M3", rng.integers(0, 120, (24, 32), dtype=np.uint8)),
           ("mtp.0.attn.wq_a.scale", "F8_E8M0", e8m0((1, 1))),
           ("mtp.0.hc_head_fn", "F32", rng.normal(size=(2, 64)).astype(np.float32))]
    items += mtp
    os.makedirs(path, exist_ok=True)
    write_safetensors(os.path.join(path, "model.safetensors"), items, {"format": "pt"})
    cfg = hf.config.to_dict()
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
                                  "scale_fmt": "ue8m0", "expert_dtype": "fp4"}
    cfg["num_nextn_predict_layers"] = 1
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return expected, {n: (t, a.tobytes()) for n, t, a in mtp}


def test_quantised_release_decodes_to_the_reference_and_keeps_mtp(hf_v4, tmp_path):
    hf, _ = hf_v4
    src = str(tmp_path / "release")
    expected, mtp = _release_with_fp8_and_fp4(hf, src)
    convert.hf_to_ms(src, str(tmp_path / "ms"), dtype="fp32", bar=False)
    r = CheckpointReader(str(tmp_path / "ms"))
    fp4 = fp8 = 0
    for name, ref in expected.items():
        if ".experts." in name:
            prefix, e, proj = name.rsplit(".", 3)[0], int(name.split(".")[-3]), name.split(".")[-2]
            stacked = r.get(prefix + (".down_proj" if proj == "down_proj" else ".gate_up_proj"))[1]
            inter = stacked.shape[1] // 2
            got = stacked[e] if proj == "down_proj" else stacked[e, :inter] if proj == "gate_proj" else stacked[e, inter:]
            fp4 += 1
        else:
            got = r.get(name)[1]
            fp8 += 1
        np.testing.assert_array_equal(got, ref, err_msg=name)
    assert fp4 == 4 * 3 * 4 and fp8 == 5 * 4
    for name, (tag, raw) in mtp.items():
        assert r.info(name)[0] == tag and r.get(name)[1].tobytes() == raw
    r.close()
    with open(tmp_path / "ms" / "config.json") as f:
        assert "quantization_config" not in json.load(f)
    convert.ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"), bar=False)
    back = _tensors(str(tmp_path / "back"))
    for name, (tag, raw) in mtp.items():
        assert back[name] == (tag, raw)
    model = DeepseekForCausalLM.from_pretrained(str(tmp_path / "ms"))
    assert np.isfinite(model(Tensor(random_ids(1, 16, 64))).asnumpy()).all()


def test_v4_configs_load_and_bad_fields_are_named(tmp_path):
    tiny = config.load(os.path.join(ROOT, "configs/deepseek_v4/tiny.yaml"), check_paths=False).model
    assert tiny.is_v4 and set(tiny.layer_types) == {"sliding_attention", "compressed_sparse_attention",
                                                    "heavily_compressed_attention"}
    assert set(tiny.mlp_layer_types) == {"hash_moe", "moe"}
    flash = config.load(os.path.join(ROOT, "configs/deepseek_v4/flash.yaml"), check_paths=False).model
    pro = config.load(os.path.join(ROOT, "configs/deepseek_v4/pro.yaml"), check_paths=False).model
    assert (flash.hidden_size, flash.num_attention_heads, flash.head_dim, flash.o_groups) == (4096, 64, 512, 8)
    assert (pro.hidden_size, pro.num_attention_heads, pro.o_groups, pro.o_lora_rank) == (7168, 128, 16, 1024)
    # the published Flash hyper-parameters read the same through transformers' own config class
    from transformers import DeepseekV4Config
    ref = DeepseekV4Config(**{k: v for k, v in flash.to_hf_dict().items() if k not in ("architectures", "model_type",
                                                                                      "aux_loss_alpha")})
    assert DeepseekConfig.from_hf_dict(ref.to_dict()).to_hf_dict() == flash.to_hf_dict()
    # and they are transformers' defaults (but for the release's compress YaRN, absent from them)
    defaults = DeepseekConfig.from_hf_dict(DeepseekV4Config().to_dict()).to_hf_dict()
    ours = flash.to_hf_dict()
    assert {k: v for k, v in defaults.items() if k != "rope_parameters"} == \
        {k: v for k, v in ours.items() if k != "rope_parameters"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_config: %s\nmodel:\n  layer_types: [sliding_attention, dense]\n"
                   % os.path.join(ROOT, "configs/deepseek_v4/tiny.yaml"))
    with pytest.raises(ConfigError) as e:
        config.load(str(bad), check_paths=False)
    assert str(bad) in str(e.value) and "model.layer_types" in str(e.value)
    with pytest.raises(ConfigError) as e:
        DeepseekConfig.from_hf_dict(dict(ref.to_dict(), num_key_value_heads=4), source="v4/config.json")
    assert "v4/config.json" in str(e.value) and "num_key_value_heads" in str(e.value)


@pytest.mark.timeout(900)
def test_tiny_v4_fine_tunes_on_the_demo_data_with_the_loss_falling(tmp_path):
    from mindformers_ds.train.trainer import Trainer
    sets = [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=30", "train.micro_batch_size=8",
            "train.eval_every=0", "train.exact_match_samples=0", "data.max_samples=320", "checkpoint.save_every=0",
            "logging.progress_bar=false", "logging.log_every=1", "optimizer.lr=3e-3"]
    cfg = config.load(os.path.join(ROOT, "configs/deepseek_v4/finetune_tiny.yaml"), sets)
    os.chdir(ROOT)
    Trainer(cfg).run()
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        records = [r for r in map(json.loads, f) if "loss" in r and "type" not in r]
    losses = [r["loss"] for r in records]
    assert len(losses) >= 25 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"V4 tiny fine-tune: loss {first:.3f} -> {last:.3f}")
    assert last < 0.7 * first
