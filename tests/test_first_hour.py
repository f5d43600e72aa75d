"""What a new user meets in the first hour (issue 15): runs that must not damage earlier state,
the transformers-saved model that must convert, errors that name the right input, Ctrl-C, and
the configs that must not run. Each test reproduces a failure of the code before the fix."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, build_hf, random_ids
from mindformers_ds import config
from mindformers_ds.checkpoint import convert, manager
from mindformers_ds.checkpoint.reader import CheckpointReader
from mindformers_ds.checkpoint.safetensors_io import CheckpointError
from mindformers_ds.checkpoint.verify import verify
from mindformers_ds.config import ConfigError
from mindformers_ds.utils.logging import read_metrics

DEMO = os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml")
SMALL = ["model.hidden_size=64", "model.moe_intermediate_size=32", "model.intermediate_size=128",
         "model.num_hidden_layers=2", "data.max_samples=300", "train.micro_batch_size=8"]


def mfds(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "mindformers_ds", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def sets(*items):
    return [x for item in items for x in ("--set", item)]


def tree_digest(path):
    """Every file under `path` with its bytes' hash: 'nothing on disk changed' made checkable."""
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            full = os.path.join(d, f)
            out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------
# A run interrupted with Ctrl-C (items 9, 14, 15), then refused (1) and resumed (6)
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """`mfds train` stopped by a real SIGINT after a few checkpoints (save_every 3)."""
    out = str(tmp_path_factory.mktemp("interrupted") / "run")
    proc = subprocess.Popen([sys.executable, "-m", "mindformers_ds", "train", "--config", DEMO,
                             *sets(*SMALL, f"train.output_dir={out}", "train.max_steps=100000",
                                   "checkpoint.save_every=3", "logging.log_every=2", "train.exact_match_samples=8",
                                   "train.eval_every=0", "logging.progress_bar=true")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # MindSpore's default level (conftest silences it for the suite)
                            env={k: v for k, v in os.environ.items() if k != "GLOG_v"})
    deadline = time.time() + 240
    while time.time() < deadline and len(manager.complete_steps(os.path.join(out, "checkpoints"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return out, proc.returncode, stdout, stderr


def test_sigint_says_where_it_stopped_and_how_to_resume(interrupted):
    out, code, _, stderr = interrupted
    last = stderr.strip().splitlines()[-1]
    newest = manager.latest(os.path.join(out, "checkpoints"))
    assert code == 130
    assert last.startswith("stopped at step ") and last.endswith(
        f"(interrupted); the newest checkpoint is {newest}; resume with --set train.resume=auto"), last
    done = int(last.split()[3])
    assert done >= int(os.path.basename(newest).split("_")[1])


def test_progress_shows_evaluation_and_compile_and_mindspore_logs_go_to_a_file(interrupted):
    out, _, stdout, stderr = interrupted
    console = stdout + stderr                                     # log lines on stdout, bars on stderr
    assert "exact match before" in stderr                        # the evaluation's own bar
    assert "compiling the training step (first step)..." in console
    assert "first step done in " in console
    assert "[WARNING]" not in console and "ANALYZER" not in console  # MindSpore's lines are not on the console
    assert "ANALYZER" in open(os.path.join(out, "mindspore.log")).read()


def test_a_directory_holding_a_run_is_refused_and_left_untouched(interrupted):
    out = interrupted[0]
    before = tree_digest(out)
    r = mfds("train", "--config", DEMO, *sets(*SMALL, f"train.output_dir={out}", "train.max_steps=5"))
    assert r.returncode == 2
    steps = manager.complete_steps(os.path.join(out, "checkpoints"))
    assert r.stderr.strip() == (f"error: --set: train.output_dir={out!r} already holds a run (checkpoints of steps "
                                f"{', '.join(map(str, steps[-3:]))}); continue it with --set train.resume=auto, or "
                                f"give a new train.output_dir")
    older = manager.step_dir(os.path.join(out, "checkpoints"), steps[0])
    r = mfds("train", "--config", DEMO, *sets(*SMALL, f"train.output_dir={out}", f"train.resume={older}"))
    assert r.returncode == 2 and f"holds newer checkpoints (step {steps[-1]})" in r.stderr
    assert tree_digest(out) == before


def test_prune_never_removes_the_checkpoint_just_saved(tmp_path):
    root = str(tmp_path)
    for s in (30, 40, 5):
        os.makedirs(manager.step_dir(root, s))
        open(os.path.join(manager.step_dir(root, s), manager.STATE_FILE), "w").write(json.dumps({"step": s}))
    manager.prune(root, keep_last=2, keep=5)
    assert manager.complete_steps(root) == [5, 30, 40]


@pytest.fixture(scope="module")
def resumed(interrupted):
    out = interrupted[0]
    start = manager.complete_steps(os.path.join(out, "checkpoints"))[-1]
    r = mfds("train", "--config", DEMO, *sets(*SMALL, f"train.output_dir={out}", "train.resume=auto",
                                               f"train.max_steps={start + 4}", "checkpoint.save_every=3",
                                               "logging.log_every=2", "train.exact_match_samples=8"))
    assert r.returncode == 0, r.stderr
    return out, start + 4


def test_resume_continues_and_the_report_counts_steps_with_the_final_eval(resumed):
    out, last = resumed
    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    evals = [r for r in records if r.get("type") == "eval"]
    assert any(r["step"] == last and "eval_loss" in r for r in evals)       # the final eval is on the curve
    assert any(r["step"] == last and "exact_match" in r for r in evals)
    assert manager.complete_steps(os.path.join(out, "checkpoints"))[-1] == last
    r = mfds("report", out)
    assert r.returncode == 0, r.stderr
    page = open(os.path.join(out, "report", "index.html")).read()
    logged = len([x for x in records if "loss" in x and x.get("type") is None])
    assert logged < last and f"<tr><th>steps</th><td>{last}</td></tr>" in page


def test_checkpoint_errors_name_the_newest_step(resumed):
    out, last = resumed
    newest = manager.latest(os.path.join(out, "checkpoints"))
    r = mfds("generate", "--checkpoint", os.path.join(out, "checkpoints", "step_99999"), "--prompt", "x")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {os.path.join(out, 'checkpoints', 'step_99999')}: no such checkpoint "
                                f"directory; the newest checkpoint in {os.path.join(out, 'checkpoints')} is {newest}")
    r = mfds("generate", "--checkpoint", out, "--prompt", "x")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {out}: is a run directory, not a checkpoint; give a step directory, "
                                f"e.g. --checkpoint {newest} (the newest)")
    assert {"tokenizer.json", "run_config.yaml"} <= set(os.listdir(newest))   # usable on its own


# ---------------------------------------------------------------------------------------
# Validation before anything is created (items 3, 7, 18, 19, 20)
# ---------------------------------------------------------------------------------------
def test_vocab_error_blames_set_and_creates_nothing(tmp_path):
    out = str(tmp_path / "run")
    r = mfds("train", "--config", DEMO, *sets(f"train.output_dir={out}", "model.vocab_size=100"))
    assert r.returncode == 2 and not os.path.exists(out)
    assert r.stderr.strip().startswith("error: --set: model.vocab_size=100 is smaller than the tokenizer's ")


def test_launch_layout_error_blames_set():
    r = mfds("launch", "--nproc", "2", "--", "train", "--config", "configs/deepseek_v3/parallel_tiny.yaml",
             "--set", "parallel.dp=4")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --set: parallel.dp*tp*pp=4 must equal the number of workers (2)"


def test_duplicate_keys_and_sections_are_refused(tmp_path):
    key = tmp_path / "key.yaml"
    key.write_text(f"base_config: {DEMO}\ntrain:\n  max_steps: 2\n  max_steps: 3\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(key))
    assert str(e.value) == (f"{key}: line 4: duplicate key 'train.max_steps' (first given at line 3); "
                            f"give each key once")
    section = tmp_path / "section.yaml"
    section.write_text(f"base_config: {DEMO}\ntrain:\n  max_steps: 2\nlogging:\n  log_every: 1\ntrain:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"line 6: duplicate section 'train' \(first given at line 2\)"):
        config.load(str(section))


def test_a_model_that_cannot_fit_is_refused_before_any_allocation(tmp_path):
    out = str(tmp_path / "run")
    r = mfds("train", "--config", DEMO, *sets(f"train.output_dir={out}", "model.hidden_size=100000000"), timeout=60)
    assert r.returncode == 2 and not os.path.exists(out)
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {DEMO} with --set model.hidden_size: the run needs an "
                                                f"estimated ")
    assert "GiB but this machine has " in line and line.endswith("--set train.check_memory=false to run anyway")


def test_integer_fields_have_bounds():
    with pytest.raises(ConfigError, match=r"^--set: train.max_steps=10{30} is out of range: integer fields must "
                                          r"be within \+-2147483647"):
        config.load(DEMO, [f"train.max_steps={10 ** 30}"])


# ---------------------------------------------------------------------------------------
# Conversion (items 2 and 4)
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transformers_saved(tmp_path_factory):
    """A V3 saved by transformers as it is: config num_nextn_predict_layers=1, no MTP weights."""
    path = str(tmp_path_factory.mktemp("hf_saved"))
    model = build_hf("v3")
    assert model.config.num_nextn_predict_layers == 1
    model.save_pretrained(path)
    return path, model


def test_transformers_saved_model_converts_without_mtp(transformers_saved, tmp_path):
    src, hf = transformers_saved
    r = mfds("convert", "hf-to-ms", src, str(tmp_path / "ms"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (f"note: {src}: no MTP weights although config.json says "
                                        f"num_nextn_predict_layers=1 (transformers' save_pretrained writes none); "
                                        f"converted without MTP (num_nextn_predict_layers=0)")
    assert json.load(open(tmp_path / "ms" / "config.json"))["num_nextn_predict_layers"] == 0
    from mindformers_ds import DeepseekForCausalLM
    import mindspore as ms
    ids = random_ids(2, 12, 320)
    ours = DeepseekForCausalLM.from_pretrained(str(tmp_path / "ms"))(ms.Tensor(ids)).asnumpy()
    with torch.no_grad():
        ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_missing_main_model_tensor_is_still_an_error(transformers_saved, tmp_path):
    src, _ = transformers_saved
    from safetensors.numpy import load_file, save_file
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in os.listdir(src):
        if not f.endswith(".safetensors"):
            open(broken / f, "wb").write(open(os.path.join(src, f), "rb").read())
    tensors = load_file(os.path.join(src, "model.safetensors"))
    del tensors["model.layers.1.input_layernorm.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks tensor 'model.layers.1.input_layernorm.weight' \(1 missing"):
        convert.hf_to_ms(str(broken), str(tmp_path / "out"), bar=False)


def test_training_from_a_checkpoint_without_mtp_drops_or_initialises_it(transformers_saved):
    from mindformers_ds.train.preflight import resolve_missing_mtp
    src, _ = transformers_saved
    cfg = config.load(DEMO, [f"model.pretrained={src}", "model.vocab_size=512"])
    assert cfg.model.num_nextn_predict_layers == 1
    dropped, note = resolve_missing_mtp(cfg)
    assert dropped.model.num_nextn_predict_layers == 0 and note.endswith(
        "training without MTP modules (model.missing_mtp=drop; set init to train fresh ones)")
    kept, note = resolve_missing_mtp(config.rebuild(cfg, overrides=["model.missing_mtp=init"]))
    assert kept.model.num_nextn_predict_layers == 1 and note.endswith("fresh weights (model.missing_mtp=init)")


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf_fp32"))
    from conftest import save_hf
    return save_hf(build_hf("v2"), path)


def test_converting_over_an_earlier_conversion(fp32_model, tmp_path):
    dst = str(tmp_path / "out")
    convert.hf_to_ms(fp32_model, dst, bar=False, max_shard="100KB")
    shards = sorted(f for f in os.listdir(dst) if f.startswith("model-"))
    assert len(shards) >= 3
    before = tree_digest(dst)
    r = mfds("convert", "hf-to-ms", fp32_model, dst, "--dtype", "bf16", "--no-progress")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {dst}: destination is not empty (")
    assert r.stderr.strip().endswith("pass --overwrite to replace it, or choose another directory")
    assert tree_digest(dst) == before
    r = mfds("convert", "hf-to-ms", fp32_model, dst, "--dtype", "bf16", "--no-progress", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(dst)) == ["config.json", "generation_config.json", "model.safetensors"]  # no old shard/index
    ok, lines = verify(fp32_model, dst)
    assert not ok and lines[-1].endswith("dtype changes; MISMATCH") and " 0 dtype changes" not in lines[-1]
    r = mfds("convert", "hf-to-ms", fp32_model, dst, "--format", "ckpt", "--no-progress", "--overwrite")
    assert r.returncode == 0 and sorted(os.listdir(dst)) == ["config.json", "generation_config.json", "model.ckpt"]


def test_verify_refuses_an_index_that_disagrees_with_the_files(fp32_model, tmp_path):
    dst = str(tmp_path / "out")
    convert.hf_to_ms(fp32_model, dst, bar=False, max_shard="100KB")
    single = str(tmp_path / "single")
    convert.hf_to_ms(fp32_model, single, bar=False)
    # what the old converter left: a new single file beside the old shards and their index
    os.replace(os.path.join(single, "model.safetensors"), os.path.join(dst, "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"the index and the files disagree: 'model.safetensors' is not listed"):
        CheckpointReader(dst)
    r = mfds("convert", "verify", fp32_model, dst)
    assert r.returncode == 2 and "the index and the files disagree" in r.stderr


# ---------------------------------------------------------------------------------------
# The planner and the CLI (items 5, 13, 16)
# ---------------------------------------------------------------------------------------
def test_plan_applies_set_with_and_without_config():
    preset = "parallel/v3_671b_64x16_a3.yaml"
    for extra in ([], ["--config", "configs/deepseek_v3/deepseek_v3_671b.yaml"]):
        r = mfds("plan", "--cluster", preset, *extra, "--set", "parallel.tp=8", "--set", "parallel.dp=16", "--json")
        assert r.returncode == 0, r.stderr
        layout = json.loads(r.stdout)["plan"]["layout"]
        assert (layout["dp"], layout["tp"]) == (16, 8)
    r = mfds("plan", "--cluster", preset, "--set", "parallel.tp=8")
    assert r.returncode == 2 and r.stderr.startswith("error: --set: parallel.dp*tp*pp=2048 must equal")


def test_every_cli_option_has_help_and_its_default():
    import argparse
    from mindformers_ds.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, path + [name])
            elif not isinstance(action, argparse._HelpAction):
                yield path, action, parser
    seen = 0
    for path, action, parser in walk(build_parser(), ["mfds"]):
        where = " ".join(path) + " " + (action.option_strings or [action.dest])[0]
        assert action.help, f"{where} has no help text"
        if action.option_strings and action.default is not None:
            assert f"(default: {action.default})" in " ".join(parser.format_help().split()), where
        seen += 1
    assert seen > 60


def test_mfu_peak_is_measured_once_per_machine_and_cached(tmp_path, monkeypatch):
    from mindformers_ds.observe import peak
    monkeypatch.setenv("MFDS_CACHE_DIR", str(tmp_path))
    first = peak.cached_cpu_peak()
    assert not first["cached"] and first["tflops"] > 0 and first["method"] == peak.METHOD
    monkeypatch.setattr(peak, "measure_cpu_gemm_tflops", lambda *a, **k: pytest.fail("measured again"))
    second = peak.cached_cpu_peak()
    assert second["cached"] and second["tflops"] == first["tflops"] and second["measured"] == first["measured"]
    doc = json.load(open(tmp_path / "cpu_gemm_peak.json"))
    assert list(doc) == [first["machine"]] and str(os.cpu_count()) in first["machine"]


# ---------------------------------------------------------------------------------------
# model.generate, the transformers way (item 11)
# ---------------------------------------------------------------------------------------
def test_model_generate_matches_transformers_generate(hf_v3_dir):
    from conftest import load_hf
    from mindformers_ds import DeepseekForCausalLM
    ours = DeepseekForCausalLM.from_pretrained(hf_v3_dir)
    ref = load_hf(hf_v3_dir)
    ids = random_ids(2, 7, 320, seed=4)
    with torch.no_grad():
        want = ref.generate(torch.tensor(ids, dtype=torch.long), max_new_tokens=10, do_sample=False,
                            pad_token_id=0).numpy()
    got = ours.generate(ids, max_new_tokens=10, pad_token_id=0).asnumpy()
    np.testing.assert_array_equal(got, want)
    # the recomputing decoder agrees, and EOS ends a row (kept, then padding) as transformers does
    assert np.array_equal(ours.generate(ids, max_new_tokens=10, pad_token_id=0, use_cache=False).asnumpy(), got)
    eos = int(got[0, 7 + 3])
    stopped = ours.generate(ids[:1], max_new_tokens=10, eos_token_id=eos, pad_token_id=0).asnumpy()[0]
    first = 7 + list(got[0, 7:]).index(eos)
    assert list(stopped[:first + 1]) == list(got[0, :first + 1]) and set(stopped[first + 1:]) <= {0}


def test_a_converted_checkpoint_carries_the_tokenizer(fp32_model, tmp_path):
    import shutil
    src = str(tmp_path / "src")
    shutil.copytree(fp32_model, src)
    tok = os.path.join(ROOT, "tokenizers/demo/tokenizer.json")
    shutil.copyfile(tok, os.path.join(src, "tokenizer.json"))
    convert.hf_to_ms(src, str(tmp_path / "ms"), bar=False)
    convert.ms_to_hf(str(tmp_path / "ms"), str(tmp_path / "back"), bar=False)
    for out in ("ms", "back"):
        assert open(tmp_path / out / "tokenizer.json", "rb").read() == open(tok, "rb").read()
