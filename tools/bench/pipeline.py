"""The pipeline's bubble: measured idle share of each stage beside the schedule's theory.

    python tools/bench/pipeline.py [--micro 2 4 8] [--steps 4]

Launches `mfds launch --nproc 2` (pp=2) on the tiny 4-layer V3 for 1F1B and for the interleaved
schedule (2 virtual stages) at each micro-batch count, and reads every stage's `pipeline_idle`
(the share of the step's schedule that stage waited, exchanges included; mean over the steps
after the first) from its metrics file. Theory: (p-1)/(m+p-1) for 1F1B, (p-1)/(v*m+p-1)
interleaved; on 2 CPU cores the two stages also share the cores, and each tick's all-reduce is
counted as idle, so the measured share is above the theory's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tools.bench.machine import describe_cpu  # noqa: E402
from mindformers_ds.parallel.pipeline_schedule import theory_bubble_1f1b, theory_bubble_interleaved  # noqa: E402

CFG = os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml")


def idle_of(out: str, rank: int):
    name = "metrics.jsonl" if rank == 0 else f"metrics_rank{rank}.jsonl"
    with open(os.path.join(out, name), encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if '"pipeline_idle"' in line]
    steady = [r["pipeline_idle"] for r in recs if not r.get("includes_compile")]
    return sum(steady) / max(len(steady), 1)


def run(micro: int, virtual: int, steps: int, port: int) -> list:
    out = tempfile.mkdtemp(prefix="bench_pp_")
    cmd = [sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "2", "--master-port", str(port), "--",
           "train", "--config", CFG, "--set", f"train.output_dir={out}/run", "--set", "model.num_hidden_layers=4",
           "--set", "parallel.pp=2", "--set", f"parallel.micro_batches={micro}", "--set",
           f"parallel.virtual_stages={virtual}", "--set", "train.micro_batch_size=2", "--set",
           f"train.max_steps={steps}", "--set", "checkpoint.save_every=0", "--set", "checkpoint.save_final=false"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return [idle_of(f"{out}/run", r) for r in range(2)]


def main() -> None:
    print(describe_cpu(), flush=True)   # every figure names its machine
    ap = argparse.ArgumentParser()
    ap.add_argument("--micro", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    port = 8900 + os.getpid() % 50
    print(f"{'schedule':12s} {'m':>3s} {'theory':>7s} {'stage 0':>8s} {'stage 1':>8s}")
    for micro in args.micro:
        for name, virtual in (("1f1b", 1), ("interleaved", 2)):
            port += 1
            theory = theory_bubble_1f1b(2, micro) if virtual == 1 else theory_bubble_interleaved(2, micro, virtual)
            idle = run(micro, virtual, args.steps, port)
            print(f"{name:12s} {micro:3d} {theory:7.3f} {idle[0]:8.3f} {idle[1]:8.3f}", flush=True)


if __name__ == "__main__":
    main()
