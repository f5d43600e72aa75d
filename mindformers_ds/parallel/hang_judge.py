"""The launcher's verdict on a hang: which rank stopped making progress, and what the others wait in.

Inputs, all written by the workers' watchdogs (observe/hang_watch.py), plus /proc:
* `hang.rank{R}.txt` in the run directory: a rank whose phase outlasted `train.hang_timeout_s`;
* `rank_R.progress` heartbeats in the status directory: where each local rank is, and whether its
  watchdog still runs. A heartbeat older than the timeout means the whole process is stuck (a
  process stopped with SIGSTOP, or a main thread stopped while it holds the GIL);
* the state of each local worker's main thread (`/proc/PID/task/PID/stat`): T or t is a thread
  stopped by a signal or by a tracer, while its other threads (msrun's heartbeat among them) run.

A hang is declared when a report or a silent heartbeat appears; `GRACE` seconds later (the other
ranks' reports come within a step of each other) the ranks are placed by how far they got, as
(step, phase in loop order). The ranks furthest on that wait in a collective are the waiting
ones; every other rank, and every stopped or silent one, is stuck: the others wait for it. When
no rank is missing, the collective itself does not complete (the network), and the line says so.
"""
from __future__ import annotations

import glob
import os
import re
import time
from collections import Counter
from typing import Dict, Optional

from ..observe.hang_watch import read_report
from .worker_watch import WorkerEnd, proc_state, worker_pid

GRACE = 5.0
# the loop's phases in the order a step runs them (train/trainer.py)
PHASE_ORDER = {"start": 0, "data": 1, "step graph": 2, "loss sums": 3, "logging": 4, "stragglers": 5, "eval": 6,
               "save": 7, "after the loop": 8}


def _thread_states(pid: int) -> Dict[int, str]:
    """The state letter of each thread of a process (empty when it is gone)."""
    states = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        state = proc_state(os.path.join(task, "stat"))
        if state and os.path.basename(task).isdigit():
            states[int(os.path.basename(task))] = state
    return states


def _stopped(pid: int) -> str:
    """How a worker is stopped: "process" (every thread: SIGSTOP), "main thread" (it alone: a
    tracer, or a stop of that thread), "" when it is not."""
    states = _thread_states(pid)
    if states.get(pid) not in ("T", "t"):
        return ""
    return "process" if all(st in ("T", "t") for st in states.values()) else "main thread"


def _ranks(names) -> str:
    return f"rank{'s' if len(names) > 1 else ''} {', '.join(map(str, sorted(names)))}"


class HangJudge:
    """Checked by the launcher at every poll while msrun runs; `check` returns the WorkerEnd of
    the stuck rank (how="hung", the verdict line in `detail`) once a hang is established."""

    def __init__(self, run_dir: Optional[str], status_dir: str, local_ranks, timeout: float):
        self.run_dir, self.status_dir, self.local_ranks, self.timeout = run_dir, status_dir, list(local_ranks), timeout
        self.started = time.time()   # reports of an earlier attempt (before a restart) are history
        self.first_seen: Optional[float] = None

    def _reports(self) -> Dict[int, dict]:
        found = {}
        for path in glob.glob(os.path.join(self.run_dir, "hang.rank*.txt")):
            m = re.search(r"hang\.rank(\d+)\.txt$", path)
            rec = read_report(path) if m and os.path.getmtime(path) >= self.started else None
            if rec is not None:
                found[int(m.group(1))] = rec
        return found

    def check(self, now: Optional[float] = None) -> Optional[WorkerEnd]:
        if self.timeout <= 0 or not self.run_dir:
            return None
        now = time.time() if now is None else now
        reports = self._reports()
        beats = {r: b for r in self.local_ranks
                 if (b := read_report(os.path.join(self.status_dir, f"rank_{r}.progress"))) is not None}
        silent = {r for r, b in beats.items() if b["timed"] and now - b["beat"] > self.timeout}
        if not reports and not silent:
            self.first_seen = None
            return None
        if self.first_seen is None:
            self.first_seen = now
        if now - self.first_seen < GRACE:
            return None
        # the threads' states only now: a worker has ~100 threads, too many files to read every poll
        pids = {r: worker_pid(self.status_dir, r) for r in self.local_ranks}
        stopped = {r: how for r, pid in pids.items() if pid and r in beats and (how := _stopped(pid))}
        return self._verdict({**beats, **reports}, set(reports), stopped, silent, pids)

    def _verdict(self, where: Dict[int, dict], reports, stopped, silent, pids) -> WorkerEnd:
        pos = {r: (rec["step"], PHASE_ORDER.get(rec["phase"], 0)) for r, rec in where.items()}
        front = max(pos.values())
        waiting = {r for r, rec in where.items() if pos[r] == front and rec["waits_in"]
                   and r not in stopped and r not in silent}
        stuck = sorted(set(where) - waiting)
        if not stuck:
            rec = where[min(waiting)]
            line = (f"every rank ({', '.join(map(str, sorted(waiting)))}) waits in {rec['waits_in']} issued at step "
                    f"{rec['step']}, none is missing from it: the collective itself does not complete (the network?)")
            return WorkerEnd(min(waiting), pids.get(min(waiting), 0), "hung", detail=line)
        parts = []
        for r in stuck:
            rec = where[r]
            # a rank without a report is placed by its last heartbeat, up to a tick old
            seen = "" if r in reports else ", its last heartbeat"
            how = ("; its process is stopped: SIGSTOP or a job-control stop" if stopped.get(r) == "process" else
                   "; its main thread alone is stopped: a tracer or a debugger" if r in stopped else
                   "; its watchdog is silent too: the whole process is stuck" if r in silent else "")
            parts.append(f"rank {r} stopped making progress at step {rec['step']} (phase {rec['phase']}{seen}{how})")
        line = "; ".join(parts)
        if waiting:
            calls = Counter((where[r]["waits_in"], where[r]["step"]) for r in waiting)
            (call, step), _ = calls.most_common(1)[0]
            line += f"; {_ranks(waiting)} wait{'s' if len(waiting) == 1 else ''} in {call} issued at step {step}"
        return WorkerEnd(stuck[0], pids.get(stuck[0], 0), "hung", detail=line)
