"""DeepSeek's indexer curriculum as one call: a base fine-tune with the indexers frozen, standing
in for the pretrained model (dense when its top-k covers every key, as DeepSeek's starting point
was), the dense warm-up (only the indexers train, by their KL), then the sparse stage (top-k
attention, everything trains). Each stage is a
separate run in its own directory that resumes the previous stage's last checkpoint
(`train.resume=<step dir>`), so it crosses the stage boundary the way a user would: the weights
load, the optimizer starts fresh (train/indexer_training.py says why) and the global step goes on.

`train.max_steps` counts from the start of the whole curriculum (a resumed run keeps the step),
so a stage of n steps ends at the previous stage's last step + n.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from .. import config


@dataclass(frozen=True)
class Stage:
    name: str
    indexer_stage: str           # frozen | dense_warmup | sparse
    steps: int
    overrides: Sequence[str] = ()   # this stage's `--set` keys (its learning rate, schedule, ...)


@dataclass
class StageResult:
    stage: Stage
    output_dir: str
    checkpoint: str              # the stage's last step directory: the next stage resumes it
    summary: Dict                # the trainer's summary (losses, eval, exact match)
    steps: List[Dict] = field(default_factory=list)   # metrics.jsonl's per-step records


def deepseek_stages(base_steps: int, warm_steps: int, sparse_steps: int, dense_topk: int = 0) -> List[Stage]:
    """The three stages with DeepSeek's learning-rate ratio between them (V3.2 report: the warm-up
    at 1e-3; the sparse stage far lower than the base): a constant rate after the base run, whose
    own cosine schedule has ended. `dense_topk` > 0 runs the base with `model.index_topk` that
    large: at least the sequence length, every key is chosen and the base is dense, as DeepSeek's
    starting point was (a dense model); 0 keeps the config's top-k, whose choice an untrained
    indexer then makes at random."""
    constant = ["lr_schedule.type=constant", "lr_schedule.warmup_steps=0"]
    return [Stage("base", "frozen", base_steps, [f"model.index_topk={dense_topk}"] if dense_topk else []),
            Stage("dense_warmup", "dense_warmup", warm_steps, constant + ["optimizer.lr=1e-3"]),
            Stage("sparse", "sparse", sparse_steps, constant + ["optimizer.lr=3e-4"])]


def step_records(output_dir: str) -> List[Dict]:
    """The per-step training records of a run's metrics.jsonl (evaluations left out)."""
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if "loss" in r and "type" not in r]


def run_curriculum(config_path: str, root: str, stages: Sequence[Stage],
                   common: Sequence[str] = ()) -> List[StageResult]:
    """Run the stages in order in this process, under `root/<stage name>`; `common` applies to all."""
    from .trainer import Trainer
    results: List[StageResult] = []
    last_step, resume = 0, None
    for stage in stages:
        last_step += stage.steps
        out = os.path.join(root, stage.name)
        keys = list(common) + [f"train.output_dir={out}", f"train.max_steps={last_step}",
                               f"train.indexer_stage={stage.indexer_stage}"]   # the last step is always saved
        keys += [f"train.resume={resume}"] if resume else []
        cfg = config.load(config_path, keys + list(stage.overrides))
        summary = Trainer(cfg).run()
        resume = summary["checkpoint"]
        results.append(StageResult(stage, out, resume, summary, step_records(out)))
    return results
