"""Checkpoint conversion: bit-exact round trips, FP8 against independent references, logits after
conversion, official release layout with MTP, bad input, resumption, bounded memory."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, build_hf, load_hf, random_ids, save_hf
from mindformers_ds.checkpoint import convert
from mindformers_ds.checkpoint.fp8 import E4M3_TABLE, block_dequant, decode_fp8, encode_e4m3
from mindformers_ds.checkpoint.reader import CheckpointReader
from mindformers_ds.checkpoint.safetensors_io import CheckpointError, SafetensorsFile
from mindformers_ds.checkpoint.synthetic import write_release
from mindformers_ds.checkpoint.verify import verify
from mindformers_ds.config import model_config_from_dict


def tensors_of(path):
    """name -> (dtype tag, raw bytes) of every tensor in a checkpoint directory."""
    r = CheckpointReader(path)
    try:
        return {n: (r.info(n)[0], r.get(n)[1].tobytes()) for n in r.names()}
    finally:
        r.close()


def release_cfg(**kw):
    with open(os.path.join(ROOT, "configs/deepseek_v3/tiny.yaml")) as f:
        d = yaml.safe_load(f)["model"]
    # hidden 200 and kv_a 146 / experts 140 rows: ragged 128x128 edge blocks everywhere
    d.update({"hidden_size": 200, "kv_lora_rank": 130, "moe_intermediate_size": 140, "num_hidden_layers": 3, **kw})
    return model_config_from_dict(d)


@pytest.fixture(scope="module")
def fp8_release(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fp8_release"))
    write_release(path, release_cfg(), fp8=True)
    return path


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,dtype", [("v3", torch.float32), ("v3", torch.bfloat16), ("v2", torch.float32),
                                        ("v32", torch.float32)])
def test_transformers_round_trip_is_bit_exact(kind, dtype, tmp_path):
    hf = build_hf(kind).to(dtype)
    src = save_hf(hf, str(tmp_path / "hf"))
    convert.hf_to_ms(src, str(tmp_path / "ms"), bar=False)
    convert.ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"), bar=False)
    a, b = tensors_of(src), tensors_of(str(tmp_path / "back"))
    assert a.keys() == b.keys() and a == b
    ms_names = CheckpointReader(str(tmp_path / "ms")).names()
    assert any(n.endswith("mlp.experts.gate_up_proj") for n in ms_names)       # stacked in the MS layout
    assert not any(re.search(r"experts\.\d+\.", n) for n in ms_names)
    with open(os.path.join(src, "config.json")) as f1, open(str(tmp_path / "back/config.json")) as f2:
        assert f1.read() == f2.read()


def test_release_round_trip_keeps_mtp_and_index(tmp_path):
    src = str(tmp_path / "rel")
    write_release(src, release_cfg(), fp8=False, dtype="BF16")
    convert.hf_to_ms(src, str(tmp_path / "ms"), bar=False, max_shard="1MB")
    ms_names = set(CheckpointReader(str(tmp_path / "ms")).names())
    for n in ("model.layers.3.eh_proj.weight", "model.layers.3.embed_tokens.weight",
              "model.layers.3.shared_head.head.weight", "model.layers.3.mlp.experts.gate_up_proj"):
        assert n in ms_names, n
    convert.ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"), bar=False)
    assert tensors_of(src) == tensors_of(str(tmp_path / "back"))
    with open(os.path.join(src, "model.safetensors.index.json")) as f1, \
            open(str(tmp_path / "back/model.safetensors.index.json")) as f2:
        assert json.load(f1) == json.load(f2)
    assert sorted(os.listdir(src)) == sorted(os.listdir(str(tmp_path / "back")))


def test_logits_after_conversion_match_transformers(tmp_path, hf_v3_dir):
    from mindformers_ds import DeepseekForCausalLM
    import mindspore as ms
    convert.hf_to_ms(hf_v3_dir, str(tmp_path / "ms"), dtype="fp32", bar=False)
    model = DeepseekForCausalLM.from_pretrained(str(tmp_path / "ms"))
    ids = random_ids(2, 32, model.config.vocab_size, seed=9)
    with torch.no_grad():
        ref = load_hf(hf_v3_dir)(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(model(ms.Tensor(ids)).asnumpy(), ref, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------
def e4m3_reference(code: int) -> float:
    """Independent float64 decode of one float8_e4m3fn byte from its bit fields."""
    s, e, m = code >> 7, (code >> 3) & 0xF, code & 7
    if e == 0xF and m == 7:
        return float("nan")
    v = (m / 8.0) * 2.0 ** -6 if e == 0 else (1 + m / 8.0) * 2.0 ** (e - 7)
    return -v if s else v


def test_fp8_decoder_matches_torch_on_all_256_codes():
    codes = np.arange(256, dtype=np.uint8)
    ours = decode_fp8(codes)
    ref = torch.from_numpy(codes.copy()).view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(ours[~np.isnan(ours)], ref[~np.isnan(ref)])
    assert all(np.isnan(E4M3_TABLE[c]) or E4M3_TABLE[c] == e4m3_reference(c) for c in range(256))


def test_fp8_encoder_matches_torch():
    x = np.concatenate([np.linspace(-500, 500, 20001), np.random.default_rng(0).standard_normal(5000) * 3,
                        [0.0, -0.0, 1e-9, 448.0, -448.0]]).astype(np.float32)
    ref = torch.from_numpy(np.clip(x, -448, 448)).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(encode_e4m3(x), ref)


def test_fp8_dequant_matches_float64_reference(fp8_release, tmp_path):
    out = str(tmp_path / "ms32")
    convert.hf_to_ms(fp8_release, out, dtype="fp32", bar=False)
    src, dst = CheckpointReader(fp8_release), CheckpointReader(out)
    name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"      # [146, 200]: ragged blocks both ways
    tag, codes = src.get(name)
    scale = src.get(name + "_scale_inv")[1]
    assert tag == "F8_E4M3" and codes.shape == (146, 200) and scale.shape == (2, 2)
    ref = np.vectorize(e4m3_reference)(codes.astype(np.int64))
    for i in range(146):
        for bj in range(2):
            ref[i, bj * 128:(bj + 1) * 128] *= np.float64(scale[i // 128, bj])
    got = dst.get(name)[1]
    assert dst.info(name)[0] == "F32"
    np.testing.assert_allclose(got, ref, rtol=1e-7, atol=0)
    # an expert weight (stacked in the output) too
    e_tag, e_codes = src.get("model.layers.2.mlp.experts.5.down_proj.weight")
    e_scale = src.get("model.layers.2.mlp.experts.5.down_proj.weight_scale_inv")[1]
    stacked = dst.get("model.layers.2.mlp.experts.down_proj")[1]
    np.testing.assert_array_equal(stacked[5], block_dequant(e_codes, e_scale))


def test_fp8_requantisation_restores_the_release(fp8_release, tmp_path):
    convert.hf_to_ms(fp8_release, str(tmp_path / "ms"), dtype="fp32", bar=False)
    convert.ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "fp8"), fp8=True, bar=False)
    a, b = tensors_of(fp8_release), tensors_of(str(tmp_path / "fp8"))
    fp8_names = [n for n, (t, _) in a.items() if t == "F8_E4M3"]
    assert fp8_names and all(a[n] == b[n] for n in fp8_names)              # same codes
    assert all(a[n + "_scale_inv"] == b[n + "_scale_inv"] for n in fp8_names)   # same scales
    with open(str(tmp_path / "fp8/config.json")) as f:
        assert json.load(f)["quantization_config"]["weight_block_size"] == [128, 128]
    ok, lines = verify(fp8_release, str(tmp_path / "fp8"), atol=0, rtol=0)
    assert ok, lines


# ---------------------------------------------------------------------------------------
def _broken_copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _assert_refused(src, dst, pattern):
    with pytest.raises(CheckpointError, match=pattern) as e:
        convert.hf_to_ms(src, dst, bar=False)
    assert "\n" not in str(e.value)
    assert not os.path.exists(dst) or not any(f.endswith((".safetensors", ".json")) for f in os.listdir(dst))
    return str(e.value)


def test_truncated_shard(fp8_release, tmp_path):
    src = _broken_copy(fp8_release, str(tmp_path / "src"))
    shard = os.path.join(src, "model-00002-of-00003.safetensors")
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    msg = _assert_refused(src, str(tmp_path / "out"), "truncated")
    assert msg.startswith(shard + ": tensor ")


def test_header_length_beyond_file_size(fp8_release, tmp_path):
    src = _broken_copy(fp8_release, str(tmp_path / "src"))
    shard = os.path.join(src, "model-00001-of-00003.safetensors")
    with open(shard, "r+b") as f:
        f.write(struct.pack("<Q", 10 ** 12))
    assert _assert_refused(src, str(tmp_path / "out"), "header length").startswith(shard)


def test_tensor_missing_from_index(fp8_release, tmp_path):
    src = _broken_copy(fp8_release, str(tmp_path / "src"))
    idx = os.path.join(src, "model.safetensors.index.json")
    data = json.load(open(idx))
    del data["weight_map"]["model.layers.1.self_attn.o_proj.weight"]
    del data["weight_map"]["model.layers.1.self_attn.o_proj.weight_scale_inv"]
    json.dump(data, open(idx, "w"))
    _assert_refused(src, str(tmp_path / "out"), "lacks tensor 'model.layers.1.self_attn.o_proj.weight'")


def test_index_pointing_outside_is_refused(fp8_release, tmp_path):
    src = _broken_copy(fp8_release, str(tmp_path / "src"))
    idx = os.path.join(src, "model.safetensors.index.json")
    data = json.load(open(idx))
    data["weight_map"]["model.norm.weight"] = "../../etc/passwd"
    json.dump(data, open(idx, "w"))
    msg = _assert_refused(src, str(tmp_path / "out"), "outside the checkpoint directory")
    assert msg.startswith(idx)


def test_shape_disagreeing_with_config(fp8_release, tmp_path):
    src = _broken_copy(fp8_release, str(tmp_path / "src"))
    cfg_path = os.path.join(src, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["q_lora_rank"] = 64
    json.dump(cfg, open(cfg_path, "w"))
    msg = _assert_refused(src, str(tmp_path / "out"), r"has shape \[96(, 200)?\] but config.json implies \[64(, 200)?\]")
    assert re.search(r"\.safetensors: tensor 'model\.layers\.0\.self_attn\.q_a_(proj|layernorm)\.weight'", msg)


def test_unknown_dtype(fp8_release, tmp_path):
    src = _broken_copy(fp8_release, str(tmp_path / "src"))
    shard = os.path.join(src, "model-00001-of-00003.safetensors")
    raw = open(shard, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n].replace(b'"dtype":"BF16"', b'"dtype":"Q4_K"', 1)
    open(shard, "wb").write(raw[:8] + header + raw[8 + n:])
    assert "unknown dtype 'Q4_K'" in _assert_refused(src, str(tmp_path / "out"), "unknown dtype")


def test_killed_conversion_resumes_from_its_work_directory(tmp_path):
    """A conversion killed (SIGKILL) half-way leaves DST absent and its finished shards in the work
    directory beside it; the same command again keeps those shards and completes."""
    from mindformers_ds.checkpoint.destination import work_dir
    cfg = release_cfg(hidden_size=512, moe_intermediate_size=512, n_routed_experts=16, n_group=4,
                      num_hidden_layers=4, vocab_size=4096)
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    write_release(src, cfg, fp8=False, dtype="BF16", layers_per_shard=1)
    work = work_dir(out)
    code = ("import sys; from mindformers_ds.checkpoint import convert; "
            "convert.hf_to_ms(sys.argv[1], sys.argv[2], dtype='fp32', bar=False, max_shard='8MB')")
    proc = subprocess.Popen([sys.executable, "-c", code, src, out], cwd=ROOT)
    shards = []
    while proc.poll() is None and len(shards) < 2:
        shards = sorted(f for f in os.listdir(work) if f.startswith("model-")) if os.path.isdir(work) else []
    proc.kill()
    proc.wait()
    assert len(shards) >= 2, "the conversion finished before it could be killed"
    assert not os.path.exists(out) and not os.path.isfile(os.path.join(work, "model.safetensors.index.json"))
    with pytest.raises(CheckpointError, match="without its index"):
        CheckpointReader(work)
    stamp = os.path.getmtime(os.path.join(work, shards[0]))
    convert.hf_to_ms(src, out, dtype="fp32", bar=False, max_shard="8MB")
    assert os.path.getmtime(os.path.join(out, shards[0])) == stamp        # kept, not rewritten
    assert not os.path.exists(work)
    convert.hf_to_ms(src, str(tmp_path / "clean"), dtype="fp32", bar=False, max_shard="8MB")
    assert tensors_of(out) == tensors_of(str(tmp_path / "clean"))


def test_workers_and_formats(tmp_path, fp8_release):
    convert.hf_to_ms(fp8_release, str(tmp_path / "one"), bar=False, max_shard="300KB")
    convert.hf_to_ms(fp8_release, str(tmp_path / "two"), bar=False, max_shard="300KB", workers=2)
    assert tensors_of(str(tmp_path / "one")) == tensors_of(str(tmp_path / "two"))
    # PyTorch .bin in (weights_only) and out; MindSpore .ckpt out
    from safetensors.torch import load_file
    src = save_hf(build_hf("v2"), str(tmp_path / "st"))
    os.makedirs(tmp_path / "bin_src")
    torch.save(load_file(os.path.join(src, "model.safetensors")), tmp_path / "bin_src/pytorch_model.bin")
    shutil.copy(os.path.join(src, "config.json"), tmp_path / "bin_src/config.json")
    convert.hf_to_ms(str(tmp_path / "bin_src"), str(tmp_path / "ms"), bar=False)
    convert.ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "bin_out"), fmt="bin", bar=False)
    ok, lines = verify(str(tmp_path / "bin_src"), str(tmp_path / "bin_out"))
    assert ok, lines
    convert.hf_to_ms(str(tmp_path / "bin_src"), str(tmp_path / "ckpt"), fmt="ckpt", dtype="bf16", bar=False)
    ok, lines = verify(str(tmp_path / "bin_src"), str(tmp_path / "ckpt"), rtol=1e-2, atol=1e-6)
    assert ok, lines


def test_verify_cli_reports_mismatch(tmp_path, hf_v2_dir):
    convert.hf_to_ms(hf_v2_dir, str(tmp_path / "ms"), dtype="bf16", bar=False)
    run = lambda *a: subprocess.run([sys.executable, "-m", "mindformers_ds.checkpoint.convert", "verify", *a],
                                    cwd=ROOT, capture_output=True, text=True, timeout=120)
    bad = run(hf_v2_dir, str(tmp_path / "ms"))
    assert bad.returncode == 1 and "MISMATCH" in bad.stdout
    good = run(hf_v2_dir, str(tmp_path / "ms"), "--rtol", "0.01", "--atol", "1e-6")
    assert good.returncode == 0 and "MATCH" in good.stdout


def test_peak_memory_is_bounded_by_the_largest_layer(tmp_path):
    """Convert a ~190 MB release whose largest layer is ~45 MB in a fresh process: peak RSS stays
    below 2 x the largest layer plus the interpreter's own footprint (measured by a no-op run)."""
    cfg = release_cfg(hidden_size=512, moe_intermediate_size=512, n_routed_experts=16, n_group=4,
                      num_hidden_layers=4, vocab_size=4096)
    src = str(tmp_path / "big")
    write_release(src, cfg, fp8=False, dtype="BF16", layers_per_shard=1)
    r = CheckpointReader(src)
    per_layer = {}
    for n in r.names():
        m = re.match(r"model\.layers\.(\d+)\.", n)
        key = m.group(1) if m else n
        per_layer[key] = per_layer.get(key, 0) + r.nbytes(n)
    largest = max(per_layer.values())
    total = sum(per_layer.values())
    # VmHWM of the child's own address space (ru_maxrss survives fork+exec: it would report pytest's)
    code = ("import sys; from mindformers_ds.checkpoint import convert; "
            "sys.argv[1] != '-' and convert.hf_to_ms(sys.argv[1], sys.argv[2], dtype='fp32', bar=False); "
            "print([int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    rss = lambda *args: int(subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                                           text=True, timeout=300, check=True).stdout.split()[-1])
    baseline = rss("-", "-")
    peak = rss(src, str(tmp_path / "out"))
    # fp32 output doubles the bytes of a bf16 layer: the bound is stated for the output layer
    assert total > 3 * largest and baseline < 150e6      # the converter does not import MindSpore
    assert peak - baseline < 2 * (2 * largest), (peak, baseline, largest)


class _RunsCode:
    """A pickle that would run a shell command when unpickled without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_holding_code_is_refused_without_suggesting_to_run_it(tmp_path):
    path = str(tmp_path / "pytorch_model.bin")
    torch.save({"w": torch.zeros(2), "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as e:
        CheckpointReader(path).names()
    msg = str(e.value)
    assert msg == (f"{path}: holds pickled objects or code besides tensors, so it is not loaded; convert it to "
                   "safetensors where it came from (where its code is trusted)")
    assert "weights_only" not in msg and not os.path.exists(tmp_path / "pwned") and not os.path.exists("pwned")
