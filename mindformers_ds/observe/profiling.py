"""`train.profile: {start_step, steps}`: the MindSpore profiler around those steps.

The profiler starts before step `start_step` (0-based, so compilation can be left out by
starting at 1 or later) and stops after `steps` steps; its analysed output (a Chrome trace,
`ASCEND_PROFILER_OUTPUT/trace_view.json`, and per-operator tables) lands in
`<output_dir>/profile/`, and the operators that took the most time are written to
`profile/top_ops.json` and the log. In a launched job every rank profiles (rank R into
`profile_rank{R}/`) and writes its kernel time split into compute and collectives as a
`{"type": "profile"}` record; the ranks then compare their compute (graph_stragglers.py).
"""
from __future__ import annotations

import csv
import glob
import logging
import os
from typing import Callable, Dict, List, Optional

from ..utils.io import atomic_write_json

log = logging.getLogger(__name__)


class ProfileWindow:
    """`exchange(split, steps) -> record or None`: called on every rank at the window's end with
    this rank's kernel split (graph_stragglers.py); its record, if any, joins `records`."""

    def __init__(self, start_step: int, steps: int, out_dir: str, enabled: bool = True, rank: int = 0,
                 exchange: Optional[Callable[[Dict, List[int]], Optional[Dict]]] = None):
        self.start, self.stop_at = start_step, start_step + steps
        # every rank profiles its own kernels (a launched job); rank 0 where one process writes
        self.out_dir = os.path.join(out_dir, "profile" if rank == 0 else f"profile_rank{rank}")
        self.enabled = enabled and steps > 0
        self.rank, self.exchange = rank, exchange
        self.prof = None
        self.records: List[Dict] = []   # metrics records of the window, once it is analysed

    def before_step(self, step: int) -> None:
        if self.enabled and step == self.start and self.prof is None:
            from mindspore.profiler import Profiler
            os.makedirs(self.out_dir, exist_ok=True)
            self.prof = Profiler(output_path=self.out_dir, start_profile=False)
            self.prof.start()
            log.info("profiler on for steps %d..%d -> %s", self.start + 1, self.stop_at, self.out_dir)

    def after_step(self, step: int) -> Optional[List[Dict]]:
        """Stops and analyses after the window's last step; returns the top operators then."""
        if self.prof is None or step + 1 < self.stop_at:
            return None
        return self.close()

    def close(self) -> Optional[List[Dict]]:
        if self.prof is None:
            return None
        self.prof.stop()
        self.prof.analyse()
        self.prof = None
        self.enabled = False
        every = top_operators(self.out_dir, limit=None)
        top = every[:20]
        atomic_write_json(os.path.join(self.out_dir, "top_ops.json"), top)
        for row in top[:5]:
            log.info("profile: %-24s %6.1f%% of op time (%d calls, %.3f ms each)", row["op_type"],
                     100 * row["share"], row["calls"], row["avg_ms"])
        from .graph_stragglers import kernel_split
        steps = [self.start + 1, self.stop_at]
        split = kernel_split(every, self.stop_at - self.start)
        self.records.append({"type": "profile", "rank": self.rank, "steps": steps, **split})
        if self.exchange is not None:
            judged = self.exchange(split, steps)
            if judged is not None:
                self.records.append(judged)
        return top


def top_operators(profile_dir: str, limit: Optional[int] = 20) -> List[Dict]:
    """Operator types by total time, from the profiler's per-type table (CPU or device); every
    type with `limit` None."""
    rows: List[Dict] = []
    for path in glob.glob(os.path.join(profile_dir, "**", "*op_type_info*.csv"), recursive=True):
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    rows.append({"op_type": r["op_type"], "calls": int(float(r["type_occurrences"])),
                                 "total_ms": float(r["total_compute_time"]), "avg_ms": float(r["avg_time(ms)"])})
                except (KeyError, ValueError):
                    continue
    total = sum(r["total_ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["total_ms"] / total
    return sorted(rows, key=lambda r: -r["total_ms"])[:limit]
