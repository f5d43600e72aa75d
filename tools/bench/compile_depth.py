"""Compile time against depth, cell reuse on and off, in one invocation.

    python tools/bench/compile_depth.py [--layers 4 8 16 32 61] [--config configs/deepseek_v3/tiny.yaml]
        [--steps 3] [--set k=v ...] [--json out.json]

For each depth and each `model.cell_reuse` setting, a fresh process (`python -m
mindformers_ds.observe.measure`) builds the fixed-width model (tiny.yaml's width with every fused
op, seq 64, batch 4, `num_hidden_layers` = depth, its MTP layer kept) and runs the real training
step: first step (graph compilation plus one execution), the median steady step, peak RSS.
Compile = first step - steady step. Depths alternate reuse on/off so drift hits both alike. The
last line is exactly `compile ratio 32/4 layers: X.XX with cell reuse, Y.YY without`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from mindformers_ds.models.deepseek.config import FUSED_OPS  # noqa: E402
from tools.bench.train_throughput import run_json  # noqa: E402
from tools.bench.machine import describe_cpu  # noqa: E402


def measure(config: str, layers: int, reuse: bool, steps: int, sets) -> dict:
    cmd = [sys.executable, "-m", "mindformers_ds.observe.measure", "--config", config, "--steps", str(steps),
           "--batch", "4", "--set", "data.seq_length=64", "--set", f"model.num_hidden_layers={layers}",
           "--set", f"model.cell_reuse={'true' if reuse else 'false'}",
           "--set", f"model.fused_ops=[{','.join(FUSED_OPS)}]"]
    for s in sets:
        cmd += ["--set", s]
    r = run_json(cmd)
    if "error" not in r:
        r["compile_s"] = r["first_step_s"] - r["step_s"]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/deepseek_v3/tiny.yaml")
    ap.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16, 32, 61])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    print(describe_cpu(), flush=True)
    print(f"{'layers':>6} {'reuse':>5} {'first step s':>12} {'compile s':>9} {'step s':>7} {'peak RSS MB':>11}", flush=True)
    rows = {}
    for layers in a.layers:
        for reuse in ((True, False) if layers % 2 else (False, True)):
            r = rows[(layers, reuse)] = measure(a.config, layers, reuse, a.steps, a.set)
            if "error" in r:
                print(f"{layers:>6} {str(reuse):>5} error: {r['error']}", flush=True)
                continue
            print(f"{layers:>6} {str(reuse):>5} {r['first_step_s']:>12.1f} {r['compile_s']:>9.1f} {r['step_s']:>7.3f} "
                  f"{r['peak_rss_mb']:>11.0f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{k[0]}_{'reuse' if k[1] else 'noreuse'}": v for k, v in rows.items()}, f, indent=2)

    def ratio(reuse: bool) -> str:
        hi, lo = rows.get((32, reuse), {}), rows.get((4, reuse), {})
        return f"{hi['compile_s'] / lo['compile_s']:.2f}" if "compile_s" in hi and "compile_s" in lo else "n/a"
    print(f"compile ratio 32/4 layers: {ratio(True)} with cell reuse, {ratio(False)} without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
