"""The CPU matmul peak MFU is measured against: fp32 MindSpore MatMul, square, jitted.

    python tools/bench/gemm_peak.py [--n 1024] [--repeat 10]

Prints GFLOP/s of the best of `repeat` runs; the CPU presets in parallel/ quote it.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tools.bench.machine import describe_cpu  # noqa: E402


def measure_peak_tflops(n: int = 1024, repeat: int = 10) -> float:
    from mindformers_ds.observe.peak import measure_cpu_gemm_tflops
    return measure_cpu_gemm_tflops(n, repeat)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    print(describe_cpu(), flush=True)   # every figure names its machine
    t = measure_peak_tflops(a.n, a.repeat)
    print(f"fp32 MatMul {a.n}^3: {t * 1000:.1f} GFLOP/s")
