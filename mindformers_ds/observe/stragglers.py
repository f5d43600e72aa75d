"""Straggler detection: which rank makes the others wait, and in which phase.

Every `logging.straggler_every` steps the ranks exchange what each spent *on its own* per step
over the window (one small all-reduce of a [world, K] table, each rank filling its row, so
every rank sees every row). A rank whose own time exceeds the median of its peers' by
`logging.straggler_factor`, and by at least a tenth of the step, for `logging.straggler_steps`
consecutive windows is named in the log and in the metrics:
`rank 1 is a straggler: 0.91 s of its own per step vs median 0.03 s (step 1.20 s, steps 21-40);
phase step graph (not running) 0.88 s vs 0.00 s`.

A rank's own time is
* the phases that wait for no peer: the data and the host's logging work, and
* the time its process did not run at all, in any phase: the watchdog (hang_watch.py) ticks
  every 0.25 s, and a tick that comes D late means the process was stopped, swapped out or
  starved of CPU for D (lateness under 0.1 s is jitter and is not counted).

Why not the step time: in synchronous data parallelism every rank's step lasts as long as the
slowest one's (the others wait in the collectives), so step times are equal. And MindSpore runs
forward, backward, the gradient all-reduce and the update as one graph, so the time a rank
computes inside it cannot be told from the time it waits inside it. A rank that is slower
*inside* the graph but running (a slower chip) is therefore not seen here: in the
`train.profile` window every rank's kernel times are compared instead (graph_stragglers.py).
"""
from __future__ import annotations

import logging
from statistics import median
from typing import Callable, Dict, List, Optional

import numpy as np

log = logging.getLogger("mindformers_ds.train")

OWN_PHASES = ("data", "logging")   # the phases that wait for no peer (train/trainer.py)
STALL_PHASES = ("data", "step graph", "loss sums", "logging", "eval", "save")
# a row: steps, wall seconds, the own phases' seconds, the seconds not running in each phase
ROW = 2 + len(OWN_PHASES) + len(STALL_PHASES)


class StragglerDetector:
    def __init__(self, rank: int, world: int, logging_cfg, exchange: Callable[[np.ndarray], np.ndarray],
                 progress=None):
        """`logging_cfg`: straggler_every / straggler_factor / straggler_steps (config.LoggingConfig);
        `exchange(table)`: the [world, ROW] table summed over every rank (a world all-reduce);
        `progress` (hang_watch.Progress): the exchange is marked as a phase of its own, so the time
        a rank waits in it for a straggler is not counted as that rank's own."""
        self.rank, self.world = rank, world
        self.every, self.factor = logging_cfg.straggler_every, logging_cfg.straggler_factor
        self.windows = logging_cfg.straggler_steps
        self.exchange, self.progress = exchange, progress
        self.row = np.zeros(ROW, np.float64)
        self.first = None
        self.streak = [0] * world

    def add_step(self, step: int, wall_s: float, spent: Dict[str, float], stalled: Dict[str, float]) -> Optional[Dict]:
        """Account one step; at a window's end, exchange and judge (every rank at the same step):
        the window's metrics record, else None."""
        if self.first is None:
            self.first = step
        own = [spent.get(p, 0.0) for p in OWN_PHASES]
        self.row += np.array([1.0, wall_s, *own, *[stalled.get(p, 0.0) for p in STALL_PHASES]])
        if step % self.every:
            return None
        table = np.zeros((self.world, ROW), np.float32)
        table[self.rank] = self.row
        if self.progress is not None:
            self.progress.enter("stragglers", step, "all_reduce(world) of the straggler windows")
        table = np.asarray(self.exchange(table), np.float64)
        if self.progress is not None:
            self.progress.enter("logging", step)
        rec = self._judge(table, self.first, step)
        self.row[:] = 0.0
        self.first = None
        return rec

    def _judge(self, table: np.ndarray, first: int, last: int) -> Dict:
        steps = np.maximum(table[:, 0:1], 1.0)
        per_step = table / steps
        wall = float(per_step[:, 1].mean())
        own_cols = per_step[:, 2:2 + len(OWN_PHASES)]
        stall_cols = per_step[:, 2 + len(OWN_PHASES):]
        own = own_cols.sum(axis=1) + stall_cols.sum(axis=1)
        # the phase columns a straggler is explained by: its own phases, then not running in each phase
        names = [*OWN_PHASES, *[f"{p} (not running)" for p in STALL_PHASES]]
        cols = np.concatenate([own_cols, stall_cols], axis=1)
        found: List[Dict] = []
        for r in range(self.world):
            peers = [own[q] for q in range(self.world) if q != r]
            med = median(peers) if peers else own[r]
            slow = own[r] > self.factor * med and own[r] - med > 0.1 * wall
            self.streak[r] = self.streak[r] + 1 if slow else 0
            if slow and self.streak[r] >= self.windows:
                excess = [cols[r, j] - median([cols[q, j] for q in range(self.world) if q != r]) for j in range(len(names))]
                j = int(np.argmax(excess))
                phase_med = cols[r, j] - excess[j]
                found.append({"rank": r, "own_s": round(float(own[r]), 4), "median_s": round(float(med), 4),
                              "phase": names[j], "phase_s": round(float(cols[r, j]), 4),
                              "phase_median_s": round(float(phase_med), 4), "windows": self.streak[r]})
                if self.rank == 0:
                    log.warning("rank %d is a straggler: %.2f s of its own per step vs median %.2f s (step %.2f s, "
                                "steps %d-%d); phase %s %.2f s vs %.2f s", r, own[r], med, wall, first, last,
                                names[j], cols[r, j], phase_med)
        return {"type": "stragglers", "step": last, "first_step": first, "step_s": round(wall, 4),
                "own_s": [round(float(x), 4) for x in own], "stragglers": found}
