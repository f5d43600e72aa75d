"""The multi-rank part of `mfds report`: every rank's metrics (rank 0's `metrics.jsonl`, the
others' `metrics_rank{R}.jsonl`, from one run directory or several, one per node, merged by
rank), drawn as

* `rank_split`: per rank, the mean seconds per step in compute (the step graph), communication
  (the loss-sum and straggler all-reduces), data, host work (logging) and not running (the
  watchdog's late ticks), so one rank's odd split stands out;
* `rank_timeline`: ranks x steps, each cell the rank's own time in that step (data + host +
  not running): a straggler is a bright row segment, whatever the number of ranks;
* `expert_load_per_rank`: with expert parallelism, each expert-parallel rank's share of the
  routed tokens over the steps (its contiguous block of experts, summed over the MoE layers);

and listed: the straggler windows (rank 0's `stragglers` records) and the hang reports
(`hang.rank{R}.txt`) found in the directories.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..utils.logging import read_metrics
from .figures import _plt, _png
from .hang_watch import read_report

# the phases of train/trainer.py grouped as the split shows them
GROUPS = (("compute", ("step graph",)), ("communication", ("loss sums", "stragglers")), ("data", ("data",)),
          ("host", ("logging",)))


def rank_records(run_dirs: List[str]) -> Dict[int, List[Dict]]:
    """rank -> its step records (the compiling first step left out), over every directory."""
    ranks: Dict[int, List[Dict]] = {}
    for d in run_dirs:
        for path in glob.glob(os.path.join(d, "metrics*.jsonl")):
            m = re.fullmatch(r"metrics(?:_rank(\d+))?\.jsonl", os.path.basename(path))
            if not m:
                continue
            rank = int(m.group(1) or 0)
            recs = [r for r in read_metrics(path) if "phase_s" in r and not r.get("includes_compile")]
            if recs:
                ranks.setdefault(rank, []).extend(recs)
    return {r: sorted(v, key=lambda x: x["step"]) for r, v in sorted(ranks.items())}


def _own(rec: Dict) -> float:
    p = rec["phase_s"]
    return p.get("data", 0.0) + p.get("logging", 0.0) + rec.get("stalled_s", 0.0)


def rank_split(ranks: Dict[int, List[Dict]]) -> Optional[bytes]:
    if len(ranks) < 2:
        return None
    plt = _plt()
    names = [g for g, _ in GROUPS] + ["not running"]
    table = np.array([[np.mean([sum(r["phase_s"].get(p, 0.0) for p in phases) for r in recs]) for _, phases in GROUPS]
                      + [np.mean([r.get("stalled_s", 0.0) for r in recs])] for recs in ranks.values()])
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.35 * len(ranks)))
    left = np.zeros(len(ranks))
    for j, name in enumerate(names):
        ax.barh([f"rank {r}" for r in ranks], 1e3 * table[:, j], left=1e3 * left, label=name)
        left += table[:, j]
    ax.invert_yaxis(), ax.set_xlabel("ms per step (mean)"), ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Where each rank's step goes")
    return _png(fig)


def rank_timeline(ranks: Dict[int, List[Dict]]) -> Optional[bytes]:
    if len(ranks) < 2:
        return None
    steps = sorted({r["step"] for recs in ranks.values() for r in recs})
    col = {s: i for i, s in enumerate(steps)}
    grid = np.full((len(ranks), len(steps)), np.nan)
    for i, recs in enumerate(ranks.values()):
        for r in recs:
            grid[i, col[r["step"]]] = 1e3 * _own(r)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.3 * len(ranks)))
    im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="magma",
                   extent=(steps[0] - 0.5, steps[-1] + 0.5, len(ranks) - 0.5, -0.5))
    ax.set_yticks(range(len(ranks)), [f"rank {r}" for r in ranks]), ax.set_xlabel("step")
    fig.colorbar(im, ax=ax, label="own ms (data + host + not running)")
    ax.set_title("Each rank's own time per step")
    return _png(fig)


def expert_load_per_rank(steps: List[Dict], ep: int) -> Optional[bytes]:
    rows = [r for r in steps if r.get("expert_load")]
    if ep < 2 or not rows:
        return None
    x = np.array([r["step"] for r in rows])
    load = np.array([np.asarray(r["expert_load"], float).sum(axis=0) for r in rows])   # [steps, experts]
    shares = load.reshape(len(rows), ep, -1).sum(axis=2) / np.maximum(load.sum(axis=1, keepdims=True), 1e-12)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    for e in range(ep):
        ax.plot(x, 100 * shares[:, e], label=f"EP rank {e}")
    ax.axhline(100 / ep, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("step"), ax.set_ylabel("% of routed tokens"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax.set_title("Routed tokens per expert-parallel rank (all MoE layers)")
    return _png(fig)


def incidents(run_dirs: List[str], records: List[Dict]) -> Tuple[List[Dict], List[Dict]]:
    """(the straggler findings of rank 0's windows, the hang reports' headers) of a run."""
    stragglers = [{"window": f"{w['first_step']}-{w['step']}", **s}
                  for w in records if w.get("type") == "stragglers" for s in w["stragglers"]]
    hangs = []
    for d in run_dirs:
        for path in sorted(glob.glob(os.path.join(d, "hang.rank*.txt"))):
            head = read_report(path)
            if head is not None:
                hangs.append({**head, "file": path})
    return stragglers, hangs


def per_rank(run_dirs: List[str], kind: str) -> Dict[int, Dict]:
    """rank -> its last record of `kind`: "collectives" (observe/collective_inventory.py) or
    "profile" (its profiled kernel split: observe/graph_stragglers.py)."""
    found: Dict[int, Dict] = {}
    for d in run_dirs:
        for path in glob.glob(os.path.join(d, "metrics*.jsonl")):
            for r in read_metrics(path):
                if r.get("type") == kind and (kind != "collectives" or r.get("per_step")):
                    found[int(r["rank"])] = r
    return dict(sorted(found.items()))
