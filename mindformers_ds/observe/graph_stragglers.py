"""Ranks that are slow inside the step graph, seen through the profiler's kernel times.

The straggler windows (stragglers.py) compare each rank's own time outside the graph: MindSpore
runs forward, backward, the gradient all-reduce and the update as one graph, so a rank that
computes slower there (a slower chip, a core shared with another job) makes every rank's step
equally long and is invisible to them. Its kernels are not: in the `train.profile` window every
rank's profiler times each kernel, and a collective's time includes the wait for the slowest
member. So per profiled step and rank:

    compute_ms    = the kernels' time that is not a collective's: what the rank itself costs
    collective_ms = {primitive: time}: mostly waiting for the slowest peer

At the window's end the ranks exchange (compute_ms, collective time) in one small world
all-reduce; a rank whose compute_ms exceeds the median of its peers' by `logging.straggler_factor`
is named, with what the others wait: `rank 1 is slow inside the step graph: 81.0 ms of kernels
per step vs median 24.3 ms (profiled steps 5-6); the others wait 61.2 ms per step in collectives,
it 3.1 ms`.
"""
from __future__ import annotations

import logging
import statistics
from typing import Callable, Dict, List, Optional

import numpy as np

log = logging.getLogger("mindformers_ds.train")
COLLECTIVE_OPS = ("AllReduce", "AllGather", "ReduceScatter", "AlltoAll", "AllToAll", "AlltoAllV", "Broadcast",
                  "Send", "Receive")


def kernel_split(top_ops: List[Dict], steps: int) -> Dict:
    """{"compute_ms", "collective_ms": {primitive: ms}, "collective_calls": {primitive: calls}}
    per profiled step, from the profiler's per-type table (profiling.top_operators, all rows)."""
    per = max(steps, 1)
    collective = {r["op_type"]: r for r in top_ops if r["op_type"] in COLLECTIVE_OPS}
    compute = sum(r["total_ms"] for r in top_ops if r["op_type"] not in COLLECTIVE_OPS)
    return {"compute_ms": round(compute / per, 3),
            "collective_ms": {k: round(r["total_ms"] / per, 3) for k, r in collective.items()},
            "collective_calls": {k: r["calls"] / per for k, r in collective.items()}}


def judge(rows: np.ndarray, factor: float) -> List[Dict]:
    """rows [world, 2] (compute ms, collective ms per step): the ranks whose compute exceeds the
    median of their peers' by `factor`, worst first."""
    found = []
    for r in range(rows.shape[0]):
        peers = [float(rows[p, 0]) for p in range(rows.shape[0]) if p != r]
        median = statistics.median(peers) if peers else 0.0
        if peers and rows[r, 0] > factor * median:
            waits = statistics.median(float(rows[p, 1]) for p in range(rows.shape[0]) if p != r)
            found.append({"rank": r, "compute_ms": round(float(rows[r, 0]), 3), "median_ms": round(median, 3),
                          "peers_wait_ms": round(waits, 3), "own_wait_ms": round(float(rows[r, 1]), 3)})
    return sorted(found, key=lambda s: -s["compute_ms"])


def exchange_and_judge(split: Dict, rank: int, world: int, steps: List[int], factor: float,
                       world_sum: Callable[[np.ndarray], np.ndarray]) -> Optional[Dict]:
    """Every rank calls this at the same step (a world collective); rank 0 gets the record."""
    table = np.zeros((world, 2), np.float32)
    table[rank] = split["compute_ms"], sum(split["collective_ms"].values())
    rows = world_sum(table)
    if rank != 0:
        return None
    found = judge(rows, factor)
    for s in found:
        log.warning("rank %d is slow inside the step graph: %.1f ms of kernels per step vs median %.1f ms (profiled "
                    "steps %d-%d); the others wait %.1f ms per step in collectives, it %.1f ms", s["rank"],
                    s["compute_ms"], s["median_ms"], steps[0], steps[1], s["peers_wait_ms"], s["own_wait_ms"])
    return {"type": "graph_stragglers", "steps": steps, "factor": factor,
            "compute_ms": [round(float(v), 3) for v in rows[:, 0]],
            "collective_ms": [round(float(v), 3) for v in rows[:, 1]], "stragglers": found}
