"""Exact resume: a run killed with SIGKILL (once in the middle of a checkpoint save, once between
saves) and resumed with `train.resume: auto` reproduces the uninterrupted run's losses and weights.
The killed run saves asynchronously (`checkpoint.async_save`: a background thread writes while
training goes on), the uninterrupted one synchronously: the checkpoints are the same."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from mindformers_ds.checkpoint import manager
from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
from mindformers_ds.utils.logging import read_metrics

DEMO = os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml")
SETS = ["train.max_steps=12", "train.micro_batch_size=4", "train.grad_accum_steps=2", "train.eval_every=0",
        "train.exact_match_samples=0", "data.max_samples=300", "checkpoint.save_every=3", "checkpoint.keep_last=3",
        "logging.log_every=1", "logging.progress_bar=false", "train.resume=auto", "model.hidden_size=64",
        "model.intermediate_size=128", "model.moe_intermediate_size=32", "lr_schedule.warmup_steps=4"]


def start(out, env=None, extra=()):
    args = [sys.executable, "-m", "mindformers_ds", "train", "--config", DEMO, "--set", f"train.output_dir={out}"]
    for s in [*SETS, *extra]:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r}


def wait_for(pred, proc, timeout=240):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout
        time.sleep(0.2)


def final_weights(out):
    with SafetensorsFile(os.path.join(manager.latest(os.path.join(out, "checkpoints")), "model.safetensors")) as f:
        return {n: f.get_f32(n) for n in f.keys()}


@pytest.mark.timeout(900)
def test_killed_and_resumed_run_matches_the_uninterrupted_one(tmp_path):
    ref_out, out = str(tmp_path / "ref"), str(tmp_path / "killed")
    ref = start(ref_out)

    # 1) SIGKILL in the middle of saving step 6 (in the background writer, training going on): the
    # model file is written, the rest is not
    asynchronous = ("checkpoint.async_save=true",)
    p = start(out, {"MFDS_FAULT_SAVE_PAUSE": "6:60"}, asynchronous)
    ckroot = os.path.join(out, "checkpoints")
    wait_for(lambda: os.path.isdir(ckroot) and any(n.startswith(".step_00000006") for n in os.listdir(ckroot)) and
             any(os.path.isfile(os.path.join(ckroot, n, "model.safetensors")) for n in os.listdir(ckroot)
                 if n.startswith(".step_00000006")), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert manager.complete_steps(ckroot) == [3]            # the half-written step 6 is not a checkpoint

    # 2) resume, then SIGKILL between saves, after step 8 has been logged
    p = start(out, extra=asynchronous)
    wait_for(lambda: os.path.isfile(os.path.join(out, "metrics.jsonl")) and max(losses(out), default=0) >= 8, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert manager.complete_steps(ckroot)[-1] == 6

    # 3) resume to the end (which waits for the last background write)
    p = start(out, extra=asynchronous)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    assert ref.wait(timeout=600) == 0, ref.stderr.read()

    a, b = losses(ref_out), losses(out)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    np.testing.assert_allclose([b[s] for s in range(1, 13)], [a[s] for s in range(1, 13)], rtol=1e-6, atol=0)
    wa, wb = final_weights(ref_out), final_weights(out)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=1e-6, atol=1e-7, err_msg=name)
    with SafetensorsFile(os.path.join(manager.latest(ckroot), "optimizer.safetensors")) as f:
        assert f.get_f32("optimizer.step") == 12
    saves = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r.get("type") == "save"]
    assert saves and all(r["async"] for r in saves) and all(r["blocked_s"] >= 0 for r in saves)
    # the tokens seen are part of the training state: counted across the two resumes as without them
    ref_state = manager.read_state(manager.latest(os.path.join(ref_out, "checkpoints")))
    assert manager.read_state(manager.latest(ckroot))["tokens_seen"] == ref_state["tokens_seen"] > 0
