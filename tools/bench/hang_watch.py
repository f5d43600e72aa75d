"""The cost of seeing a multi-rank job: a dp=2 launch of the tiny parallel config with the hang
watchdog, its heartbeats, the launcher's judge and the straggler windows on (the defaults:
`train.hang_timeout_s=600`, `logging.straggler_every=20`) against off, in one invocation, rounds
alternating (the machine is noisy).

    python tools/bench/hang_watch.py [--steps 30] [--rounds 2] [--only inventory]

`--only inventory`: the hang watch and the straggler windows on in both, the collective
inventory (`logging.collective_inventory`, off by default) alone switched.

Prints the median steady step time of each (rank 0's metrics, the compiling first step left
out) and the first step's time (where the inventory's IR dump falls), and the median of the
rounds' on/off ratios; the last
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


def run(out: str, steps: int, on: bool, only: str = ""):
    """(median steady step time, first step time) of one launch: `on` is the defaults (hang watch
    and straggler windows), or with `only` the collective inventory switched on beside them."""
    watch = on or only == "inventory"
    inventory = on and only == "inventory"
    sets = [f"train.output_dir={out}", "parallel.dp=2", "train.micro_batch_size=4", f"train.max_steps={steps}",
            f"train.hang_timeout_s={600 if watch else 0}", f"logging.straggler_every={20 if watch else 0}",
            f"logging.collective_inventory={'true' if inventory else 'false'}",
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
    ap.add_argument("--only", choices=["inventory"], default="")
    args = ap.parse_args()
    print(describe_cpu(), flush=True)
    results = {"on": [], "off": []}
    firsts = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for name in ("off", "on") if k % 2 == 0 else ("on", "off"):
                t, first = run(os.path.join(tmp, f"{name}{k}"), args.steps, name == "on", args.only)
                results[name].append(t)
                firsts[name].append(first)
                print(f"round {k + 1} {name}: median step {t * 1000:.1f} ms, first step {first:.2f} s", flush=True)
    # the ratio within each round (its two runs back to back), then their median: the machine
    # drifts between rounds by more than the effect (measured: 104 -> 137 ms off, rounds 3-4)
    ratio = statistics.median(a / b for a, b in zip(results["on"], results["off"]))
    f_ratio = statistics.median(a / b for a, b in zip(firsts["on"], firsts["off"]))
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    f_on, f_off = statistics.median(firsts["on"]), statistics.median(firsts["off"])
    what = "collective inventory" if args.only else "hang + straggler detection"
    print(f"{what} on / off: {ratio:.3f}x step time (median of the rounds' ratios; medians "
          f"{on * 1000:.1f} ms vs {off * 1000:.1f} ms)")
    print(f"{what} on / off: {f_ratio:.3f}x first step (medians {f_on:.2f} s vs {f_off:.2f} s)")


if __name__ == "__main__":
    main()
