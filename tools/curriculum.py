"""DeepSeek's indexer curriculum on a demo fine-tune (train/curriculum.py): a base run with the
indexers frozen, the dense warm-up, then the sparse stage, each resuming the previous stage's
checkpoint. Prints, per stage, the training loss (mean of the first and of the last ten logged
steps), the held-out loss and exact match after the stage, and per sparse layer the indexer's
recall@k of dense attention mass and its KL (first logged step -> mean of the last three).

The base stage attends densely (`model.index_topk` = the sequence length), as DeepSeek's recipe
starts from a dense model; `--sparse-base` keeps the config's top-k there instead.

    python tools/curriculum.py --config configs/deepseek_v32/finetune_tiny.yaml --out runs/curriculum_v32
    python tools/curriculum.py --config configs/deepseek_v4/finetune_tiny.yaml --out runs/curriculum_v4

Writes <out>/curriculum.json (the same figures, machine-readable).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]   # the package, and tools/bench/machine.py
from mindformers_ds import config  # noqa: E402
from mindformers_ds.train.curriculum import deepseek_stages, run_curriculum  # noqa: E402
from mindformers_ds.train.setup import set_graph_mode  # noqa: E402
from mindformers_ds.utils.io import atomic_write_json  # noqa: E402
from bench.machine import describe_cpu  # noqa: E402


def _mean(records, key, part):
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values[:10] if part == "first" else values[-10:])) if values else None


def _indexer(records, key):
    rows = [r[key] for r in records if r.get(key)]
    if not rows:
        return None
    return {"first": np.round(rows[0], 3).tolist(), "last": np.round(np.mean(rows[-3:], 0), 3).tolist()}


def stage_figures(result) -> dict:
    s, steps = result.summary, result.steps
    return {"stage": result.stage.name, "indexer_stage": result.stage.indexer_stage,
            "steps": [steps[0]["step"], steps[-1]["step"]] if steps else None,
            "loss_first10": _mean(steps, "loss", "first"), "loss_last10": _mean(steps, "loss", "last"),
            "eval_loss": s.get("eval_loss"), "exact_match_before": s.get("exact_match_before"),
            "exact_match_after": s.get("exact_match_after"),
            "indexer_recall": _indexer(steps, "indexer_recall"), "indexer_kl": _indexer(steps, "indexer_kl"),
            "checkpoint": result.checkpoint}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True, help="a directory; each stage runs in <out>/<stage>")
    ap.add_argument("--base-steps", type=int, default=600)
    ap.add_argument("--warm-steps", type=int, default=100)
    ap.add_argument("--sparse-steps", type=int, default=200)
    ap.add_argument("--sparse-base", action="store_true",
                    help="run the base stage with the config's top-k (a random choice by the untrained indexer) "
                         "instead of dense attention")
    ap.add_argument("--set", action="append", default=[], help="a config key for every stage (KEY=VALUE)")
    a = ap.parse_args(argv)
    common = ["logging.log_every=1"] + a.set
    set_graph_mode()   # as `mfds train` does: the steps compile into graphs
    seq = config.load(a.config, a.set).data.seq_length   # a top-k this large picks every key: dense
    stages = deepseek_stages(a.base_steps, a.warm_steps, a.sparse_steps, 0 if a.sparse_base else seq)
    results = run_curriculum(a.config, a.out, stages, common)
    figures = {"config": a.config, "cpu": describe_cpu(), "python": platform.python_version(),
               "base_index_topk": 0 if a.sparse_base else seq, "stages": [stage_figures(r) for r in results]}
    print(f"\n{a.config}; {figures['cpu']}")
    for f in figures["stages"]:
        em = f["exact_match_after"]
        held_out = "n/a (no data.eval_file)" if f["eval_loss"] is None else f"{f['eval_loss']:.4f}"
        print(f"{f['stage']:>12} steps {f['steps'][0]}-{f['steps'][1]}: loss {f['loss_first10']:.4f} -> "
              f"{f['loss_last10']:.4f}; held-out loss {held_out}; exact match after "
              f"{'n/a' if em is None else f'{em:.1%}'}")
        for key in ("indexer_recall", "indexer_kl"):
            if f[key]:
                print(f"{'':>14}{key} per sparse layer {f[key]['first']} -> {f[key]['last']}")
    atomic_write_json(os.path.join(a.out, "curriculum.json"), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
