"""The peak FLOP/s that MFU is measured against.

On CPU there is no published figure that means anything for MindSpore, so the peak is a
measured one: the best rate of a large float32 MatMul run by MindSpore itself in graph mode
(on this 2-core machine ~100-130 GFLOP/s). On Ascend the vendor's dense bf16 figure of the
device (the same numbers the cluster presets in parallel/ carry) is used; `logging.peak_tflops`
overrides either.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

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


def peak_tflops(configured: Optional[float], device: str, device_name: str = "Ascend 910B") -> float:
    """The MFU denominator per device: the configured value, else measured (CPU) or published (Ascend)."""
    if configured:
        return float(configured)
    if device == "CPU":
        value = measure_cpu_gemm_tflops()
        log.info("MFU peak: measured MindSpore fp32 GEMM rate %.1f GFLOP/s on this CPU", value * 1e3)
        return value
    value = ASCEND_PEAK_TFLOPS.get(device_name, ASCEND_PEAK_TFLOPS["Ascend 910B"])
    log.info("MFU peak: %.0f TFLOP/s (published dense bf16 peak of %s; set logging.peak_tflops to change)",
             value, device_name)
    return value
