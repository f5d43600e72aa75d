"""The machine a benchmark ran on, printed beside its figures: CPU model, cores and vector ISA
(AVX-512 or AVX2: the kernels' speed differs between the two kinds this project runs on)."""
from __future__ import annotations

import os


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo."""
    fields = {}
    try:
        with open("/proc/cpuinfo", "r") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags() -> set:
    return set(_cpuinfo().get("flags", "").split())


def describe_cpu() -> str:
    """e.g. `machine: AMD EPYC (family 25 model 17), 2 cores, AVX-512`: the model name alone does
    not tell an AVX2 EPYC from an AVX-512 one."""
    from mindformers_ds.observe.peak import cpu_model
    info = _cpuinfo()
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    family = f" (family {info['cpu family']} model {info['model']})" if "cpu family" in info and "model" in info else ""
    return f"machine: {cpu_model()}{family}, {os.cpu_count()} cores, {isa}"
