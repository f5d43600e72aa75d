"""Text tables for `mfds plan`."""
from __future__ import annotations

from typing import List

from .estimate import Plan
from .memory import GB


def format_plan(p: Plan, device: str, device_memory_gb: float) -> str:
    lay = p.layout
    lines = [f"layout: dp={lay['dp']} tp={lay['tp']} ep={lay['ep']} pp={lay['pp']} micro_batches={lay['micro_batches']}"
             f" recompute={lay['recompute']} optimizer_shard={lay['optimizer_shard']}",
             f"memory per device (GB; {device}, {device_memory_gb:g} GB):",
             "  stage    params  weights    grads  optimizer  activations  runtime    total"]
    for m in p.memory:
        lines.append(f"  {m.stage:5d} {m.params / 1e9:8.3f}B {m.weights / GB:8.2f} {m.grads / GB:8.2f} "
                     f"{m.optimizer / GB:10.2f} {m.activations / GB:12.2f} {m.runtime / GB:8.2f} {m.total / GB:8.2f}")
    lines.append(f"  worst stage: {p.peak_memory_gb:.2f} GB -> {'fits' if p.fits else 'DOES NOT FIT'}")
    lines.append("communication per device per step: " + ", ".join(
        f"{k} {v / GB:.2f} GB ({p.comm_s[k]:.3f} s)" for k, v in p.comm_bytes.items()))
    lines.append(f"step time: {p.step_s:.3f} s = compute {p.compute_s:.3f} + bubble {p.bubble_s:.3f} "
                 f"+ comm {sum(p.comm_s.values()):.3f} (not overlapped); MFU {p.mfu:.1%}")
    return "\n".join(lines)


def format_ranking(plans: List[Plan]) -> str:
    if not plans:
        return "no valid layout fits this cluster"
    lines = ["rank  dp  tp  ep  pp  micro  recompute  peak GB   step s    MFU"]
    for i, p in enumerate(plans, 1):
        lay = p.layout
        lines.append(f"{i:4d} {lay['dp']:3d} {lay['tp']:3d} {lay['ep']:3d} {lay['pp']:3d} {lay['micro_batches']:6d} "
                     f"{str(lay['recompute']):>10} {p.peak_memory_gb:8.2f} {p.step_s:8.3f} {p.mfu:6.1%}")
    return "\n".join(lines)
