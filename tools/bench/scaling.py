"""Data-parallel scaling on this machine: DP=2 (two msrun workers) against one process on the
same global batch, in one invocation, alternating.

    python tools/bench/scaling.py [--steps 12] [--rounds 2] [--global-batch 16]

Prints tokens/s of each, their ratio, and the share of a DP=2 step spent in the gradient
all-reduce (the same collectives timed alone on gradient-shaped tensors). The machine has
2 cores, so two workers share them: the ratio shows the executor's overhead, not a speed-up.
"""
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
WORKER = os.path.join(ROOT, "tools", "bench", "scaling_worker.py")
CFG = os.path.join(ROOT, "configs", "deepseek_v3", "parallel_tiny.yaml")


def run(out: str, dp: int, steps: int, global_batch: int, port: int) -> dict:
    os.makedirs(out, exist_ok=True)
    sets = [f"parallel.dp={dp}", f"train.micro_batch_size={global_batch // dp}", f"train.output_dir={out}"]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=ROOT)
    if dp == 1:
        cmd = [sys.executable, WORKER, CFG, out, str(steps), *sets]
    else:
        cmd = ["msrun", f"--worker_num={dp}", f"--local_worker_num={dp}", f"--master_port={port}",
               f"--log_dir={os.path.join(out, 'logs')}", "--join=True", "--cluster_time_out=120",
               WORKER, CFG, out, str(steps), *sets]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    with open(os.path.join(out, "scaling.json")) as f:
        return json.load(f)


def main() -> None:
    print(describe_cpu(), flush=True)   # every figure names its machine
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=16)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mfds_scaling_")
    single, dual = [], []
    for r in range(a.rounds):
        single.append(run(os.path.join(tmp, f"single{r}"), 1, a.steps, a.global_batch, 0))
        dual.append(run(os.path.join(tmp, f"dp2_{r}"), 2, a.steps, a.global_batch, 8600 + r))
        print(f"round {r + 1}: 1 process {single[-1]['tokens'] / single[-1]['step']:.0f} tok/s, "
              f"DP=2 {dual[-1]['tokens'] / dual[-1]['step']:.0f} tok/s, all-reduce {dual[-1]['comm'] * 1e3:.1f} ms "
              f"of a {dual[-1]['step'] * 1e3:.0f} ms step")
    s = statistics.median(x["tokens"] / x["step"] for x in single)
    d = statistics.median(x["tokens"] / x["step"] for x in dual)
    share = statistics.median(x["comm"] / x["step"] for x in dual)
    print(f"\nDP=2 / single process tokens/s: {d / s:.2f} (same global batch of {a.global_batch} rows; 2 cores)")
    print(f"share of a DP=2 step in the gradient all-reduce: {share:.1%}")


if __name__ == "__main__":
    main()
