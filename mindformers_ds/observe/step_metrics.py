"""What a training step's metrics record holds beyond the losses: throughput, model FLOPs and
MFU, the time split, peak memory, the experts' load, imbalance and router bias, and the trained
indexers' KL and recall.

Time split of a step (wall time from the end of the previous step's compute to the end of
this one's, saves and evaluations excluded):
  data     - building the batch and its host tensors;
  compute  - forward + backward + optimizer, up to the host sync on the loss;
  host     - the rest: logging, metrics, the progress bar, Python between steps.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from .flops import train_flops_per_token


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux >= 4.0: "5" to /proc/self/clear_refs), so a later
    peak is that of what ran since (the steps after the compiling one). False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def split_peak_rss():
    """Called at the end of the compiling first step: keeps its peak and restarts VmHWM; returns
    the function that, after the later steps, gives `first_step_peak_rss_mb`, `steps_peak_rss_mb`
    (None where the reset is not allowed) and `peak_rss_mb` (the whole process's)."""
    first, reset = rss_mb("VmHWM"), reset_peak_rss()

    def fields() -> dict:
        later = rss_mb("VmHWM")   # the later steps' own if the reset worked, else the whole run's
        return {"first_step_peak_rss_mb": first, "steps_peak_rss_mb": later if reset else None,
                "peak_rss_mb": max(first, later)}
    return fields


def rss_mb(field: str = "VmHWM") -> float:
    """A memory line of /proc/self/status in MB: VmHWM (peak resident set) or VmRSS (current).
    Not ru_maxrss for the peak: it survives fork+exec and would report the parent's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    return rss_mb("VmHWM")


def device_peak_mb() -> Optional[float]:
    """Peak device memory on an accelerator (None on CPU, where peak RSS is the figure)."""
    try:
        import mindspore as ms
        if ms.get_context("device_target") == "CPU":
            return None
        return float(ms.runtime.max_memory_allocated()) / 2 ** 20
    except Exception:  # older MindSpore or no runtime API: leave it out
        return None


class StepMetrics:
    def __init__(self, model_config, seq_length: int, peak_tflops: float, world: int):
        self.flops_per_token = train_flops_per_token(model_config, seq_length)
        self.peak = peak_tflops * 1e12
        self.world = world

    def timing(self, tokens: int, data_s: float, compute_s: float, step_s: float) -> Dict:
        flops = self.flops_per_token * tokens
        per_device = flops / self.world / max(step_s, 1e-12)
        rec = {"tokens_per_sec": tokens / max(step_s, 1e-12), "step_time": step_s,
               "time_data": data_s, "time_compute": compute_s, "time_host": max(step_s - data_s - compute_s, 0.0),
               "model_tflops_per_step": flops / 1e12, "tflops_per_device": per_device / 1e12,
               "mfu": per_device / self.peak, "peak_rss_mb": round(peak_rss_mb(), 1)}
        dev = device_peak_mb()
        if dev is not None:
            rec["device_peak_mb"] = round(dev, 1)
        return rec


def expert_stats(load: np.ndarray, biases: List[np.ndarray]) -> Dict:
    """Per MoE layer: tokens per expert, max/mean imbalance and the router's correction bias."""
    rec: Dict = {}
    if load.size:
        rec["expert_load"] = load.astype(int).tolist()
        rec["imbalance"] = (load.max(-1) / np.maximum(load.mean(-1), 1e-9)).round(4).tolist()
    if biases:
        rec["router_bias"] = [np.round(b.astype(np.float64), 6).tolist() for b in biases]
    return rec


def indexer_stats(table: np.ndarray) -> Dict:
    """The trained indexers' telemetry of a step (models/deepseek/indexer_loss.py): per layer with
    an indexer, the mean KL(attention || indexer) and the recall@k of dense attention mass."""
    rows = {i: (float(kl / n), float(recall / n))
            for i, (kl, recall, n) in enumerate(table.reshape(-1, 3) if table.size else []) if n > 0}
    if not rows:
        return {}
    return {"indexer_layers": list(rows), "indexer_kl": [round(kl, 6) for kl, _ in rows.values()],
            "indexer_recall": [round(r, 6) for _, r in rows.values()]}


def steady_state(records: List[Dict]) -> Dict:
    """Means over the steps after the first (whose compute time holds the compilation)."""
    if not records:
        return {}
    keys = ("tokens_per_sec", "mfu", "step_time", "time_data", "time_compute", "time_host")
    out = {f"mean_{k}": float(np.mean([r[k] for r in records])) for k in keys}
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in records)
    return out
