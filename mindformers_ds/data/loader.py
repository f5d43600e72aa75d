"""Deterministic, resumable batches sharded over data-parallel ranks.

The order of rows in epoch e is a permutation drawn from (seed, e); step t of training uses
global rows [t*G, (t+1)*G) of that endless sequence, G = micro_batch * grad_accum * dp. So the
batch of any step is a pure function of (seed, step): a resumed run sees exactly the data
the uninterrupted run would have, with no loader state to save. Within a step, micro-batch
a of rank r holds rows [(a*dp + r)*mb, ... + mb).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from .packing import Rows, target_count


@dataclass
class StepBatch:
    micro_batches: List[Dict[str, np.ndarray]]   # this rank's micro-batches for the step
    lm_tokens: int                               # targets in the whole global batch
    mtp_tokens: List[int]                        # per MTP depth, whole global batch
    global_indices: np.ndarray                   # row indices of the global batch (for logs)


class BatchLoader:
    def __init__(self, rows: Rows, micro_batch: int, grad_accum: int = 1, dp: int = 1, dp_rank: int = 0,
                 seed: int = 0, shuffle: bool = True, mtp_depth: int = 0):
        if len(rows) == 0:
            raise ValueError("no rows to train on")
        self.rows = rows
        self.mb, self.accum, self.dp, self.rank = micro_batch, grad_accum, dp, dp_rank
        self.seed, self.shuffle, self.mtp_depth = seed, shuffle, mtp_depth
        self.global_rows = micro_batch * grad_accum * dp
        self._perm_cache: Dict[int, np.ndarray] = {}

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            n = len(self.rows)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._perm_cache = {epoch: order}  # keep one epoch; steps move forward
        return self._perm_cache[epoch]

    def global_indices(self, step: int) -> np.ndarray:
        n = len(self.rows)
        flat = np.arange(step * self.global_rows, (step + 1) * self.global_rows)
        out = np.empty_like(flat)
        for epoch in np.unique(flat // n):
            sel = flat // n == epoch
            out[sel] = self._epoch_order(int(epoch))[flat[sel] % n]
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.global_rows / len(self.rows)

    def batch(self, step: int) -> StepBatch:
        idx = self.global_indices(step)
        everything = self.rows.take(idx)
        lm = target_count(everything.labels, everything.segment_ids, 1)
        mtp = [target_count(everything.labels, everything.segment_ids, 2 + d) for d in range(self.mtp_depth)]
        micro = []
        for a in range(self.accum):
            start = (a * self.dp + self.rank) * self.mb
            part = self.rows.take(idx[start:start + self.mb])
            micro.append({"input_ids": part.input_ids, "labels": part.labels,
                          "position_ids": part.position_ids, "segment_ids": part.segment_ids})
        return StepBatch(micro, lm, mtp, idx)
