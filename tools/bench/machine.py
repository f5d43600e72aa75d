"""The machine a benchmark ran on, printed beside its figures: CPU model, cores and vector ISA
(AVX-512 or AVX2: the kernels' speed differs between the two kinds this project runs on)."""
from __future__ import annotations

import os


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", "r") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def describe_cpu() -> str:
    from mindformers_ds.observe.peak import cpu_model
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"machine: {cpu_model()}, {os.cpu_count()} cores, {isa}"
