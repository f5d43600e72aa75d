"""Training throughput of this stack against PyTorch 2.13 + transformers on the same model.

    python tools/bench/train_throughput.py [--config configs/deepseek_v3/bench_512.yaml]
        [--steps 10] [--rounds 1] [--no-compile] [--composite] [--set k=v ...] [--json out.json]

Each stack trains the same config (DeepSeek-V3 bench_512.yaml: hidden 512, 8 layers, 16 experts
top-4, vocab 32000, seq 512, batch 4, fp32; or configs/deepseek_v4/bench_512.yaml, its V4 peer)
on the same random batch in a fresh process (so peak RSS is its own): this stack's jitted step
(python -m mindformers_ds.observe.measure, with its fused CPU kernels unless --composite), the
transformers DeepseekV3ForCausalLM (DeepseekV4ForCausalLM for V4) in PyTorch eager, and under
torch.compile. Rounds alternate the stacks; per stack the median step time over all its steps is
reported. Prints tokens/s, tokens per CPU-second, MFU against the measured GEMM peak, peak RSS
(and that of the steps after the first alone: compiling can be the peak), first-step (compile)
time, and our ratio to each baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tools.bench.machine import describe_cpu  # noqa: E402


from mindformers_ds.models.deepseek.config import FUSED_OPS  # noqa: E402  (every fused op)


def run_json(cmd, timeout=3600):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def gemm_peaks(n: int = 1024, repeat: int = 10) -> dict:
    """This CPU's fp32 matmul rate through MindSpore (graph mode) and through torch, TFLOP/s."""
    import time
    import mindspore as ms
    import torch
    from mindformers_ds.observe.peak import measure_cpu_gemm_tflops
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return {"mindspore": measure_cpu_gemm_tflops(n, repeat), "torch": 2.0 * n ** 3 / best / 1e12}


def main() -> int:
    print(describe_cpu(), flush=True)   # every figure names its machine
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/deepseek_v3/bench_512.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="override for this stack's run (e.g. model.fused_ops)")
    ap.add_argument("--composite", action="store_true",
                    help="this stack without its fused CPU kernels (model.fused_ops=[]), the reference path")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    peaks = gemm_peaks()
    peak = max(peaks.values())
    print("fp32 GEMM peak (MFU denominator, the best of both): " +
          ", ".join(f"{k} {v * 1e3:.0f} GFLOP/s" for k, v in peaks.items()), flush=True)
    sets = ([] if a.composite else [f"model.fused_ops=[{','.join(FUSED_OPS)}]"]) + a.set
    stacks = {"mindformers_ds": [sys.executable, "-m", "mindformers_ds.observe.measure", "--config", a.config,
                                 "--steps", str(a.steps), *sum((["--set", s] for s in sets), [])],
              "torch eager": [sys.executable, "tools/bench/torch_step.py", "--config", a.config, "--steps", str(a.steps)]}
    if not a.no_compile:
        stacks["torch.compile"] = stacks["torch eager"] + ["--compile"]
    runs = {k: [] for k in stacks}
    for r in range(a.rounds):
        for name, cmd in stacks.items():
            res = run_json(cmd)
            print(f"round {r + 1} {name}: " + (res["error"] if "error" in res else
                  f"{res['tokens_per_sec']:.0f} tok/s, first step {res['first_step_s']:.1f} s, "
                  f"peak RSS {res['peak_rss_mb']:.0f} MB (first step {res['first_step_peak_rss_mb']:.0f}, "
                  f"later steps {res['steps_peak_rss_mb'] or float('nan'):.0f})"), flush=True)
            runs[name].append(res)
    summary = {"machine": describe_cpu(), "gemm_peak_tflops": peak, "gemm_peaks": peaks, "config": a.config, "stacks": {}}
    print(f"\n{'stack':16s} {'tok/s':>8s} {'tok/CPU-s':>10s} {'MFU':>6s} {'peak RSS MB':>12s} {'steps RSS MB':>13s} "
          f"{'first step s':>13s}")
    for name, rs in runs.items():
        ok = [x for x in rs if "error" not in x]
        if not ok:
            print(f"{name:16s} failed: {rs[0]['error']}")
            summary["stacks"][name] = {"error": rs[0]["error"]}
            continue
        step = statistics.median([t for x in ok for t in x["step_times"]])
        tokens = ok[0]["batch"] * ok[0]["seq"]
        s = {"tokens_per_sec": tokens / step, "tokens_per_cpu_sec": statistics.median([x["tokens_per_cpu_sec"] for x in ok]),
             "mfu": ok[0]["tflops"] * ok[0]["step_s"] / step / peak, "peak_rss_mb": max(x["peak_rss_mb"] for x in ok),
             "first_step_s": statistics.median([x["first_step_s"] for x in ok]), "params": ok[0]["params"],
             "steps_peak_rss_mb": max(x["steps_peak_rss_mb"] or 0.0 for x in ok)}
        summary["stacks"][name] = s
        print(f"{name:16s} {s['tokens_per_sec']:8.0f} {s['tokens_per_cpu_sec']:10.0f} {s['mfu']:6.1%} "
              f"{s['peak_rss_mb']:12.0f} {s['steps_peak_rss_mb']:13.0f} {s['first_step_s']:13.1f}")
    ours = summary["stacks"].get("mindformers_ds", {})
    for base in ("torch eager", "torch.compile"):
        b = summary["stacks"].get(base, {})
        if "tokens_per_sec" in ours and "tokens_per_sec" in b:
            ratio = ours["tokens_per_sec"] / b["tokens_per_sec"]
            mem = ours["peak_rss_mb"] / b["peak_rss_mb"]
            summary[f"ratio_vs_{base}"] = {"tokens_per_sec": ratio, "peak_rss": mem}
            print(f"mindformers_ds / {base}: tokens/s {ratio:.2f}x, peak RSS {mem:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
