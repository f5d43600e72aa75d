"""The peak FLOP/s that MFU is measured against.

On CPU there is no published figure that means anything for MindSpore, so the peak is a
measured one: the best rate of a large float32 MatMul run by MindSpore itself in graph mode
(2-core machines of this kind: ~100-320 GFLOP/s, AVX2 to AVX-512). Measured at start-up it
varied 34-63 GFLOP/s between runs on a shared CPU, which made MFU incomparable across runs, so
it is measured once per machine (CPU model, cores, MindSpore version) and cached with its date
and method in `$MFDS_CACHE_DIR` (default `~/.cache/mindformers_ds`)/cpu_gemm_peak.json; delete
the file to measure again. On Ascend the vendor's dense bf16 figure of the device (the same
numbers the cluster presets in parallel/ carry) is used; `logging.peak_tflops` overrides
either. The log says which one a run used.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import time
from typing import Dict, Optional

import numpy as np

log = logging.getLogger(__name__)

# Vendor-published dense bf16/fp16 peaks, TFLOP/s per device as MindSpore sees it.
ASCEND_PEAK_TFLOPS = {
    "Ascend 910B": 313.0,     # 910B3 (Atlas 800T A2)
    "Ascend 910B2": 376.0,
    "Ascend 910C": 376.0,     # per die: MindSpore addresses each of the 910C's two dies as a device (752 per chip)
}
_measured: Optional[float] = None


def measure_cpu_gemm_tflops(n: int = 1024, repeat: int = 8) -> float:
    """Best observed float32 GEMM rate of MindSpore on this CPU, TFLOP/s (cached per process)."""
    global _measured
    if _measured is not None:
        return _measured
    from mindspore import Tensor
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal((n, n)).astype(np.float32))
    b = Tensor(rng.standard_normal((n, n)).astype(np.float32))
    matmul = _matmul_cell()
    matmul(a, b).asnumpy()  # compile
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        matmul(a, b).asnumpy()
        best = min(best, time.perf_counter() - t0)
    _measured = 2.0 * n ** 3 / best / 1e12
    return _measured


def _matmul_cell():
    from mindspore import nn, ops

    class MatMul(nn.Cell):
        def construct(self, x, y):
            return ops.matmul(x, y)
    return MatMul()


METHOD = "MindSpore fp32 1024x1024x1024 MatMul in graph mode, best of 8"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", "r") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_path() -> str:
    root = os.environ.get("MFDS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mindformers_ds")
    return os.path.join(root, "cpu_gemm_peak.json")


def cached_cpu_peak() -> Dict:
    """{tflops, measured (date), method, machine, cached: bool}: this machine's cached GEMM peak,
    measured now (and cached) when there is none for this CPU, core count and MindSpore."""
    import mindspore as ms
    machine = f"{cpu_model()}, {os.cpu_count()} cores, MindSpore {ms.__version__}"
    path = _cache_path()
    try:
        with open(path, "r", encoding="utf-8") as f:
            entry = json.load(f).get(machine)
        if entry and float(entry["tflops"]) > 0:
            return dict(entry, machine=machine, cached=True, path=path)
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no cache yet, or an unreadable one: measure
    entry = {"tflops": measure_cpu_gemm_tflops(), "measured": datetime.date.today().isoformat(), "method": METHOD}
    try:
        from ..utils.io import atomic_write_json
        doc = {}
        if os.path.isfile(path):
            try:
                with open(path, "r", encoding="utf-8") as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                doc = {}
        doc[machine] = entry
        atomic_write_json(path, doc)
    except OSError as e:  # a read-only home: measure every run, and say so
        log.warning("could not cache the GEMM peak in %s (%s)", path, e)
    return dict(entry, machine=machine, cached=False, path=path)


def peak_tflops(configured: Optional[float], device: str, device_name: str = "Ascend 910B") -> float:
    """The MFU denominator per device: the configured value, else measured (CPU) or published (Ascend)."""
    if configured:
        log.info("MFU peak: %.3g TFLOP/s per device (logging.peak_tflops)", configured)
        return float(configured)
    if device == "CPU":
        p = cached_cpu_peak()
        how = "cached from" if p["cached"] else "measured now,"
        log.info("MFU peak: %.1f GFLOP/s, %s %s on %s (%s; %s)", p["tflops"] * 1e3, how, p["measured"],
                 p["machine"], p["method"], p["path"])
        return float(p["tflops"])
    value = ASCEND_PEAK_TFLOPS.get(device_name, ASCEND_PEAK_TFLOPS["Ascend 910B"])
    log.info("MFU peak: %.0f TFLOP/s (published dense bf16 peak of %s; set logging.peak_tflops to change)",
             value, device_name)
    return value
