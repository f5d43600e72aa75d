"""One executor interface, chosen from `parallel.executor`: `auto` resolves by device; the
Ascend executor (whole model, semi-auto strategies from the layout table, AutoParallel) is
reached from `mfds train` and `mfds launch`. On one CPU process MindSpore runs semi-auto over
one device, so the path trains and must equal the explicit executor bit for bit; under msrun
MindSpore refuses the CPU backend and the run says so in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from mindformers_ds import config
from mindformers_ds.checkpoint import manager
from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
from mindformers_ds.errors import ConfigError
from mindformers_ds.parallel.executors import AscendExecutor, ExplicitExecutor, executor_for, resolve_executor
from mindformers_ds.utils.logging import read_metrics

CFG = os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml")


def _sets(out, executor, extra=()):
    pairs = [f"train.output_dir={out}", "train.max_steps=2", "train.eval_every=0", "train.exact_match_samples=0",
             "logging.progress_bar=false", "logging.log_every=1", "checkpoint.save_every=2", "data.max_samples=100",
             f"parallel.executor={executor}", *extra]
    return [a for p in pairs for a in ("--set", p)]


def _train(out, executor, cfg=CFG):
    r = subprocess.run([sys.executable, "-m", "mindformers_ds", "train", "--config", cfg, *_sets(out, executor)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out


def test_auto_is_ascend_on_ascend_and_explicit_elsewhere():
    assert resolve_executor("auto", "Ascend") == "ascend" and resolve_executor("auto", "CPU") == "explicit"
    assert resolve_executor("explicit", "Ascend") == "explicit" and resolve_executor("ascend", "CPU") == "ascend"
    par = config.load(CFG).parallel
    assert type(executor_for(par, "CPU")) is ExplicitExecutor and type(executor_for(par, "Ascend")) is AscendExecutor


def test_ascend_executor_layout_errors_name_the_field():
    cfg = config.load(CFG, ["parallel.executor=ascend", "parallel.dp=2"])
    with pytest.raises(ConfigError, match=r"parallel.dp\*tp\*pp=2 must equal the number of workers \(4\)"):
        AscendExecutor().check(cfg, 4)
    cfg = config.load(CFG, ["parallel.executor=ascend", "train.grad_accum_steps=2"])
    with pytest.raises(ConfigError, match=r"^--set: train.grad_accum_steps=2: .*parallel.micro_batches"):
        AscendExecutor().check(cfg, 1)


@pytest.mark.parametrize("cfg", [CFG, os.path.join(ROOT, "configs/deepseek_v4/finetune_tiny.yaml")], ids=["v3", "v4"])
def test_ascend_executor_trains_one_process_exactly_as_the_explicit_one(tmp_path, cfg):
    runs = {ex: _train(tmp_path / ex, ex, cfg) for ex in ("explicit", "ascend")}
    losses = {ex: [m["loss"] for m in read_metrics(str(out / "metrics.jsonl")) if "loss" in m] for ex, out in runs.items()}
    assert len(losses["ascend"]) == 2 and losses["ascend"] == losses["explicit"]
    files = {ex: SafetensorsFile(os.path.join(manager.latest(str(out / "checkpoints")), "model.safetensors"))
             for ex, out in runs.items()}
    assert files["ascend"].keys() == files["explicit"].keys()
    for k in files["explicit"].keys():
        np.testing.assert_array_equal(files["ascend"].get_f32(k), files["explicit"].get_f32(k), err_msg=k)
    assert "executor: ascend" in open(runs["ascend"] / "train.log").read()
    with open(runs["ascend"] / "strategy" / "param_layout.json", encoding="utf-8") as f:   # every parameter once
        assert sorted(json.load(f)["params"]) == sorted(files["explicit"].keys())


def test_ascend_executor_under_msrun_stops_at_mindspore_refusal_in_one_line(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "2", "--cluster-timeout", "60", "--", "train", "--config", CFG,
                        *_sets(out, "ascend", ["parallel.dp=2"])], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if "parallel.executor=ascend" in ln]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"error: {CFG}: parallel.executor=ascend: MindSpore refuses semi-auto parallel here")
    assert "Invalid communication backend: CPU" in lines[0] and lines[0].endswith("use parallel.executor=explicit")
    # it got there through our code: model built whole, strategies set, the step compiling
    log = open(out / "train_rank0.log").read()
    assert "executor: ascend" in log and "compiling the training step" in log


def test_native_collectives_are_chosen_by_backend_capability():
    """HCCL/NCCL run every collective the executor uses natively; mccl (CPU) all-reduces over
    any group but all-gathers only over the world and has no reduce-scatter: those are emulated
    (the path the msrun tests run)."""
    from mindformers_ds.parallel.collectives import native
    for device in ("Ascend", "GPU"):
        assert all(native(device, op, world) for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all",
                                                         "send_recv") for world in (True, False))
    assert native("CPU", "all_reduce", False) and native("CPU", "all_gather", True)
    assert not native("CPU", "all_gather", False) and not native("CPU", "reduce_scatter", True)
    assert not native("CPU", "send_recv", True) and not native("CPU", "all_to_all", True)


def test_ascend_executor_split_is_refused_and_a_distributed_checkpoint_says_how_to_merge(tmp_path):
    """The Ascend executor loads one full checkpoint (MindSpore slices it): `mfds convert split`
    under it is refused in one line; resuming from MindSpore's per-device slices names the merge."""
    from mindformers_ds.checkpoint.safetensors_io import CheckpointError
    from mindformers_ds.train.setup import DistEnv
    cfg = config.load(CFG, ["parallel.executor=ascend"])
    with pytest.raises(ConfigError, match=r"^--set: parallel.executor=ascend loads one full checkpoint"):
        AscendExecutor().split_checkpoint(str(tmp_path / "a"), str(tmp_path / "b"), cfg)
    step = tmp_path / "step_00000002"
    (step / "rank_0").mkdir(parents=True)
    (step / "rank_0" / "checkpoint.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"step_00000002: a MindSpore distributed checkpoint .*unified_safetensors"):
        AscendExecutor().load(str(step), "model.safetensors", [], None, DistEnv())
