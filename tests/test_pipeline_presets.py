"""The pipeline shapes of the big cluster presets run: each preset in parallel/ with pp > 1 is
launched scaled down under real msrun — the same pp, the same pp_offset pattern, schedule
(virtual stages) and recompute, on a tiny-width model of the preset's family whose layer count
gives every stage the preset's offsets (pp * k + sum(pp_offset) layers), one worker per stage —
and must complete 2 steps with every stage's shards saved. The issue asked for up to 4 workers;
8 tiny workers fit this 2-core machine (the pp=8 preset: 171 s, measured), so presets up to pp=8
run; pp=16 (V4-Pro: 16 V4 workers, ~1.1 GB each, compiling on 2 cores) is reported as skipped."""
from __future__ import annotations

import glob
import os

import pytest

from conftest import ROOT
from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
from mindformers_ds.parallel.config import stage_layer_counts
from mindformers_ds.parallel.presets import load_preset
from mindformers_ds.utils.logging import read_metrics
from test_depth import v4_depth
from test_pipeline_msrun import run, sets

MAX_WORKERS = 8
TINY = {False: "configs/deepseek_v3/parallel_tiny.yaml", True: "configs/deepseek_v4/finetune_tiny.yaml"}


def _pipelined_presets():
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "parallel", "*.yaml"))):
        p = load_preset(path, ROOT)
        if p.run.parallel.pp > 1:
            out.append(os.path.basename(path))
    return out


def scaled_layout(name: str):
    """(tiny config, --set pairs, stage layer counts) of a preset's pipeline on one worker per stage."""
    p = load_preset(os.path.join(ROOT, "parallel", name), ROOT)
    par, model = p.run.parallel, p.run.model.model_config()
    offset = par.pp_offset or [0] * par.pp
    per_stage = 1 - min(offset)                 # the smallest base that keeps every stage >= 1 layer
    layers = par.pp * per_stage + sum(offset)
    layout = {"parallel.pp": par.pp, "parallel.micro_batches": par.pp * max(par.virtual_stages, 1),
              "parallel.virtual_stages": par.virtual_stages, "parallel.recompute": str(par.recompute).lower(),
              "model.num_hidden_layers": layers, "train.micro_batch_size": 2}
    if par.pp_offset is not None:
        layout["parallel.pp_offset"] = "[" + ",".join(map(str, par.pp_offset)) + "]"
    if model.is_v4:   # V4 names every layer's attention and MoE kind: the three kinds in turn
        layout.update(kv.split("=", 1) for kv in v4_depth(layers))
    return TINY[model.is_v4], layout, stage_layer_counts(layers, par.pp, par.pp_offset)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", _pipelined_presets())
def test_preset_pipeline_runs_scaled_down(name, tmp_path):
    config, layout, counts = scaled_layout(name)
    pp = layout["parallel.pp"]
    if pp > MAX_WORKERS:
        pytest.skip(f"{name}: pp={pp} needs {pp} workers, one per stage; this machine runs at most {MAX_WORKERS}")
    base = sets(**{"train.eval_every": 0, "train.exact_match_samples": 0, "logging.progress_bar": "false",
                   "logging.log_every": 1, "data.max_samples": 100, "train.max_steps": 2, "checkpoint.save_every": 0})
    out = str(tmp_path / "run")
    run(out, pp, sets(**layout), os.path.join(ROOT, config), base)
    steps = [r["step"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]
    assert steps == [1, 2]
    ck = os.path.join(out, "checkpoints", "step_00000002")
    assert sorted(d for d in os.listdir(ck) if d.startswith("rank_")) == [f"rank_{r}" for r in range(pp)]
    layers = int(layout["model.num_hidden_layers"])
    assert min(counts) >= 1 and sum(counts) == layers
    start = 0
    for stage, n in enumerate(counts):   # each stage's shard holds its own layers (MTP on the last)
        with SafetensorsFile(os.path.join(ck, f"rank_{stage}", "model.safetensors")) as f:
            held = {int(k.split(".")[2]) for k in f.keys() if k.startswith("model.layers.")}
        decoder = {i for i in held if i < layers}
        assert decoder == set(range(start, start + n)), (stage, sorted(held))
        assert stage == pp - 1 or held == decoder
        start += n
