"""Memory of ZeRO-1, recompute and sequence parallelism, measured per rank, beside the unsharded / plain run.

    python tools/bench/memory.py [--steps 2] [--only zero|recompute|sequence]

1. Optimizer state: `mfds launch --nproc 2` of the tiny V3 at dp=2, without and with
   `parallel.optimizer_shard`; per rank the optimizer state the trainer holds (its log line
   "optimizer state on rank R: X MB") and the step's peak RSS (metrics `peak_rss_mb`).
2. Recompute: one process on an activation-heavy shape (4 layers, hidden 128, 16 x 512 tokens),
   `parallel.recompute` false and true; peak RSS and the steady step time.
3. Sequence parallelism: tp=2 (2 workers) on the same shape with 8 rows, `parallel.sequence_parallel`
   false and true; per rank the peak RSS and the steady step time.
Every run also prints `mfds plan`'s per-rank estimate (the CPU constants of
parallel/cpu_single.yaml, the run's own layout) beside the measured peak.
Ratios are against the baseline run of the same invocation (the machine is noisy).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tools.bench.machine import describe_cpu  # noqa: E402
from mindformers_ds import config  # noqa: E402
from mindformers_ds.train.preflight import estimated_stage_peaks  # noqa: E402
CFG = os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml")
HEAVY = ["model.num_hidden_layers=4", "model.hidden_size=128", "data.seq_length=512",
         "model.max_position_embeddings=512", "train.micro_batch_size=16"]


def _run(out: str, sets, nproc: int, port: int) -> None:
    cmd = [sys.executable, "-m", "mindformers_ds"]
    if nproc > 1:
        cmd += ["launch", "--nproc", str(nproc), "--master-port", str(port), "--"]
    cmd += ["train", "--config", CFG, "--set", f"train.output_dir={out}", "--set", "checkpoint.save_every=0",
            "--set", "checkpoint.save_final=false", "--set", "train.eval_every=0"]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)


def _off_then_on(tmp: str, port: int, switch: str, sets):
    """Launch 2 workers with `switch` false, then true (the baseline first); yields (value, run dir)."""
    for k, value in enumerate((False, True)):
        out = os.path.join(tmp, f"{switch.split('.')[-1]}_{value}")
        _run(out, [*sets, f"{switch}={str(value).lower()}"], 2, port + 1 + k)
        yield value, out


def _records(out: str, rank: int):
    name = "metrics.jsonl" if rank == 0 else f"metrics_rank{rank}.jsonl"
    with open(os.path.join(out, name), encoding="utf-8") as f:
        return [r for r in (json.loads(line) for line in f) if "loss" in r]


def _peak_and_step(out: str, rank: int):
    """(peak RSS MB, mean step time s after the first, compiling, step) of one rank."""
    recs = _records(out, rank)
    return recs[-1]["peak_rss_mb"], sum(r["step_time"] for r in recs[1:]) / max(len(recs) - 1, 1)


def _plan_mb(out: str) -> float:
    """The planner's estimate for the run's (one-stage) layout, MB."""
    return estimated_stage_peaks(config.load(os.path.join(out, "config.yaml"), check_paths=False))[0] / 2 ** 20


def _opt_mb(out: str, rank: int, nproc: int) -> float:
    log = os.path.join(out, "train.log" if nproc == 1 else f"train_rank{rank}.log")
    m = re.search(r"optimizer state on rank \d+: ([0-9.]+) MB", open(log, encoding="utf-8").read())
    return float(m.group(1))


def main() -> None:
    print(describe_cpu(), flush=True)   # every figure names its machine
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--only", choices=("zero", "recompute", "sequence"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_mem_")
    port = 8950 + os.getpid() % 40
    for name, bench in (("zero", zero_bench), ("recompute", recompute_bench), ("sequence", sequence_bench)):
        if args.only in (None, name):
            port = bench(args.steps, tmp, port)
            print()


def zero_bench(steps: int, tmp: str, port: int) -> int:
    print("ZeRO-1, tiny V3, dp=2 (2 workers)")
    print(f"{'optimizer_shard':16s} {'rank':>4s} {'opt state MB':>13s} {'ratio':>6s} {'peak RSS MB':>12s} "
          f"{'plan MB':>8s}")
    base = {}
    for shard, out in _off_then_on(tmp, port, "parallel.optimizer_shard",
                                   ["parallel.dp=2", "train.micro_batch_size=4", f"train.max_steps={steps}"]):
        for rank in range(2):
            mb = _opt_mb(out, rank, 2)
            base.setdefault(rank, mb)
            print(f"{str(shard):16s} {rank:4d} {mb:13.3f} {mb / base[rank]:6.3f} "
                  f"{_records(out, rank)[-1]['peak_rss_mb']:12.1f} {_plan_mb(out):8.0f}", flush=True)
    return port + 2


def recompute_bench(steps: int, tmp: str, port: int) -> int:
    print("recompute, one process, 4 layers x hidden 128, 16 x 512 tokens")
    print(f"{'recompute':10s} {'peak RSS MB':>12s} {'ratio':>6s} {'step s':>7s} {'ratio':>6s} {'plan MB':>8s}")
    ref = None
    for rc in (False, True):
        out = os.path.join(tmp, f"recompute_{rc}")
        _run(out, HEAVY + [f"train.max_steps={steps + 1}", f"parallel.recompute={str(rc).lower()}"], 1, 0)
        rss, step = _peak_and_step(out, 0)
        ref = ref or (rss, step)
        print(f"{str(rc):10s} {rss:12.1f} {rss / ref[0]:6.3f} {step:7.2f} {step / ref[1]:6.3f} {_plan_mb(out):8.0f}",
              flush=True)
    return port


def sequence_bench(steps: int, tmp: str, port: int) -> int:
    print("sequence parallelism, tp=2 (2 workers), 4 layers x hidden 128, 8 x 512 tokens")
    print(f"{'sequence_parallel':18s} {'rank':>4s} {'peak RSS MB':>12s} {'ratio':>6s} {'step s':>7s} {'ratio':>6s} "
          f"{'plan MB':>8s}")
    base = {}
    for sp, out in _off_then_on(tmp, port, "parallel.sequence_parallel",
                                HEAVY + ["train.micro_batch_size=8", "parallel.tp=2", f"train.max_steps={steps + 1}"]):
        for rank in range(2):
            rss, step = _peak_and_step(out, rank)
            base.setdefault(rank, (rss, step))
            print(f"{str(sp):18s} {rank:4d} {rss:12.1f} {rss / base[rank][0]:6.3f} {step:7.2f} "
                  f"{step / base[rank][1]:6.3f} {_plan_mb(out):8.0f}", flush=True)
    return port + 2


if __name__ == "__main__":
    main()
