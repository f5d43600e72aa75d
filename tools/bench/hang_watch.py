"""The cost of seeing a multi-rank job: a dp=2 launch of the tiny parallel config with the hang
watchdog, its heartbeats, the launcher's judge, the straggler windows and the collective
inventory on (`train.hang_timeout_s=600`, `logging.straggler_every=20`,
`logging.collective_inventory=true`) against all off, in one invocation, rounds alternating (the
machine is noisy).

    python tools/bench/hang_watch.py [--steps 30] [--rounds 2]

Prints the median steady step time of each (rank 0's metrics, the compiling first step left
out) and the first step's time (where the inventory's IR dump falls), and their ratios; the last
lines are `observability on / off: X.XXXx step time` and `... X.XXXx first step`.
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
CFG = os.path.join(ROOT, "configs", "deepseek_v3", "parallel_tiny.yaml")


def run(out: str, steps: int, timeout: float):
    """(median steady step time, first step time) of one launch."""
    sets = [f"train.output_dir={out}", "parallel.dp=2", "train.micro_batch_size=4", f"train.max_steps={steps}",
            f"train.hang_timeout_s={timeout}", f"logging.straggler_every={20 if timeout else 0}",
            f"logging.collective_inventory={'true' if timeout else 'false'}",
            "checkpoint.save_final=false", "checkpoint.save_every=0",
            "train.eval_every=0", "logging.progress_bar=false", "train.exact_match_samples=0"]
    cmd = [sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "2", "--", "train", "--config", CFG,
           *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    times = [r["step_time"] for r in recs if "step_time" in r and not r.get("includes_compile")]
    first = [r["step_time"] for r in recs if "step_time" in r and r.get("includes_compile")]
    return statistics.median(times), first[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(describe_cpu(), flush=True)
    results = {"on": [], "off": []}
    firsts = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for name, timeout in (("off", 0), ("on", 600)) if k % 2 == 0 else (("on", 600), ("off", 0)):
                t, first = run(os.path.join(tmp, f"{name}{k}"), args.steps, timeout)
                results[name].append(t)
                firsts[name].append(first)
                print(f"round {k + 1} {name}: median step {t * 1000:.1f} ms, first step {first:.2f} s", flush=True)
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    f_on, f_off = statistics.median(firsts["on"]), statistics.median(firsts["off"])
    print(f"observability on / off: {on / off:.3f}x step time ({on * 1000:.1f} ms vs {off * 1000:.1f} ms)")
    print(f"observability on / off: {f_on / f_off:.3f}x first step ({f_on:.2f} s vs {f_off:.2f} s)")


if __name__ == "__main__":
    main()
