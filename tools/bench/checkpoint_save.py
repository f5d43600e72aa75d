"""What saving a checkpoint every step costs, synchronous against asynchronous, on the bench model.

    python tools/bench/checkpoint_save.py [--config configs/deepseek_v3/bench_512.yaml] [--steps 6]
        [--rounds 1] [--nproc 1] [--set k=v ...]

`--nproc N` launches each run as `mfds launch --nproc N` with `parallel.dp=N` (each rank its
micro-batch as configured, so the global batch grows N-fold): every rank writes its shards
(parallel/shard_save.py), in the background with async_save; rank 0's metrics are read.

Three `mfds train` runs per round, alternated, each a fresh process on the same rows: no saving,
`checkpoint.save_every=1` synchronous, and the same with `checkpoint.async_save=true`. Wall time
per step = the step's own time plus what the loop was blocked by its save (metrics: the step
records' `step_time`, the save records' `blocked_s`), over the steps after the first (compile).
Prints each run and the ratios async / no-save and sync / no-save.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tools.bench.machine import describe_cpu  # noqa: E402

# bench_512 has no data of its own: the demo's rows (packed to its seq 512), the model unchanged
DEMO_DATA = ["data.train_file=data/demo/train.jsonl", "data.eval_file=data/demo/eval.jsonl",
             "data.tokenizer=tokenizers/demo/tokenizer.json", "data.format=alpaca", "data.packing=true"]
MODES = {"no save": ["checkpoint.save_every=0", "checkpoint.save_final=false"],
         "sync save": ["checkpoint.save_every=1", "checkpoint.async_save=false"],
         "async save": ["checkpoint.save_every=1", "checkpoint.async_save=true"]}


def per_step_wall(out: str) -> float:
    steps, blocked = {}, {}
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        for rec in map(json.loads, f):
            if "loss" in rec and "step_time" in rec:
                steps[rec["step"]] = rec["step_time"]
            elif rec.get("type") == "save":
                blocked[rec["step"]] = rec["blocked_s"]
    later = sorted(steps)[1:]   # the first step compiles
    return statistics.mean(steps[s] + blocked.get(s, 0.0) for s in later)


def run(out: str, config: str, steps: int, mode: str, sets, nproc: int = 1) -> float:
    cmd = [sys.executable, "-m", "mindformers_ds"]
    if nproc > 1:
        cmd += ["launch", "--nproc", str(nproc), "--"]
        sets = [f"parallel.dp={nproc}", *sets]
    cmd += ["train", "--config", config]
    for s in [f"train.output_dir={out}", f"train.max_steps={steps}", "train.eval_every=0",
              "train.exact_match_samples=0", "logging.progress_bar=false", "checkpoint.keep_last=2",
              *(DEMO_DATA if config.endswith("bench_512.yaml") else []), *MODES[mode], *sets]:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return per_step_wall(out)


def main() -> None:
    print(describe_cpu(), flush=True)   # every figure names its machine
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/deepseek_v3/bench_512.yaml")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_save_")
    times = {m: [] for m in MODES}
    for r in range(a.rounds):
        for mode in MODES:   # alternated: each mode sees the same drift of the machine
            t = run(os.path.join(tmp, f"{mode.replace(' ', '_')}_{r}"), a.config, a.steps, mode, a.set, a.nproc)
            times[mode].append(t)
            print(f"round {r + 1} {mode:10s} {t:7.3f} s per step (step + save blocking)", flush=True)
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"sync save / no save:  {med['sync save'] / med['no save']:.3f}x")
    print(f"async save / no save: {med['async save'] / med['no save']:.3f}x")


if __name__ == "__main__":
    main()
