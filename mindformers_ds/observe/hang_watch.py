"""Hang detection inside a worker: a watchdog thread that notices when the training loop stops
making progress (a collective that never completes, a stalled read, a stopped main thread) and
writes down where.

The loop marks each phase as it enters it (`Progress.enter`): the data, the step graph (forward,
backward, the collectives the executor put in it, the update), the all-reduce of the loss sums,
evaluation, saving. The mark is a few attribute stores by the main thread (nothing to measure);
the watchdog only reads it. Every `tick` seconds (0.25) the watchdog

* measures how late it wakes: the time the process did not run (stragglers.py);
* writes a heartbeat, `rank_R.progress` (JSON: step, phase, the collective the phase waits in,
  when it began, when this beat was written) in the launcher's status directory, so the launcher
  sees a worker whose process is stopped whole (no beats) as well as where it was;
* when the current phase has lasted `timeout` seconds, writes `hang.rank{R}.txt` in the run
  directory, once per phase: a JSON first line (the same fields, and how long) and then the Python
  stack of every thread, which says what the main thread is blocked in.

A phase entered with `timed=False` (a graph's first run, i.e. its compilation; what follows the
loop) is not timed: a 61-layer compilation takes minutes and holds the GIL for long stretches. The watchdog never ends
the process: the launcher reads the reports of every rank and decides which rank is stuck
(parallel/hang_judge.py); in a single-process run the report is left for the user.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Callable, Dict, Optional

from ..utils.io import atomic_write_text

log = logging.getLogger("mindformers_ds.train")
STALL_JITTER = 0.1   # a tick later than this means the process did not run (stragglers.py)


class Progress:
    """Where the main thread is: the step it runs (1-based), its phase, the collective that phase
    waits in ("" for none), and since when (time.time()); and, since the last `take`, the
    seconds spent in each phase and those the process did not run in each (stragglers.py)."""

    def __init__(self):
        self.step, self.phase, self.waits_in, self.timed, self.since = 0, "start", "", False, time.time()
        self.spent: Dict[str, float] = {}
        self.stalled: Dict[str, float] = {}
        self._lock = threading.Lock()   # `stalled` is added to by the watchdog
        self.on_leave: Optional[Callable[[str], None]] = None   # called with each phase left

    def enter(self, phase: str, step: int, waits_in: str = "", timed: bool = True) -> None:
        if self.on_leave is not None:
            self.on_leave(self.phase)
        now = time.time()
        self.spent[self.phase] = self.spent.get(self.phase, 0.0) + now - self.since
        # `since` last: the watchdog reads the fields without a lock; a torn read can only pair
        # the new phase with the old start time for one tick, which is shorter than any timeout
        self.step, self.phase, self.waits_in, self.timed = step, phase, waits_in, timed
        self.since = now

    def stall(self, seconds: float) -> None:
        if self.timed:   # a compiling phase holds the GIL in stretches: not a stall
            with self._lock:
                self.stalled[self.phase] = self.stalled.get(self.phase, 0.0) + seconds

    def take(self):
        """(seconds per phase, seconds not running per phase) of the phases left since the last
        take; the current phase's time so far is counted when it is left (the trainer takes right
        after entering "logging", so nothing of the step is missed)."""
        spent, self.spent = self.spent, {}
        with self._lock:
            stalled, self.stalled = self.stalled, {}
        return spent, stalled

    def record(self, now: float) -> dict:
        return {"step": self.step, "phase": self.phase, "waits_in": self.waits_in, "timed": self.timed,
                "since": round(self.since, 3), "seconds": round(now - self.since, 3)}


class HangWatch:
    """The watchdog thread of one worker; a context manager around the training loop."""

    def __init__(self, progress: Progress, rank: int, run_dir: str, timeout: float,
                 status_dir: Optional[str] = None, tick: float = 0.25, stalls: bool = False):
        """`stalls`: measure the time the process does not run (for straggler detection), also
        with the timeout off."""
        self.progress, self.rank, self.run_dir, self.timeout = progress, rank, run_dir, timeout
        self.status_dir, self.tick, self.stalls = status_dir, tick, stalls
        self._stop = threading.Event()
        self._reported = None   # (step, phase, since) of the phase last reported: once each
        self._thread = threading.Thread(target=self._run, name="mfds-hang-watch", daemon=True)
        self._main = threading.main_thread().ident

    def __enter__(self):
        if self.timeout > 0 or self.stalls:   # timeout 0: no heartbeats (the launcher judges nothing)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        # what follows the loop (the final evaluation, generation, save) is not watched: say so in
        # a last beat, or the launcher would take the silence for a stopped process
        self.progress.enter("after the loop", self.progress.step, timed=False)
        if self.status_dir and self.timeout > 0:
            now = time.time()
            self._beat({**self.progress.record(now), "beat": round(now, 3)})
        return False

    def _run(self) -> None:
        last = time.time()
        while not self._stop.wait(self.tick):
            now = time.time()
            late = now - last - self.tick   # the process (or this thread's GIL) did not run for that long
            last = now
            if late > STALL_JITTER:
                self.progress.stall(late)
            rec = self.progress.record(now)
            if self.status_dir and self.timeout > 0:
                self._beat({**rec, "beat": round(now, 3)})
            key = (rec["step"], rec["phase"], rec["since"])
            if self.timeout > 0 and rec["timed"] and rec["seconds"] >= self.timeout and key != self._reported:
                self._reported = key
                self._report(rec)

    def _beat(self, rec: dict) -> None:
        # rename without fsync: the launcher reads it on this host within seconds, and a stalled
        # disk must not stall the beats (the report below, read after the fact, is fsynced)
        path = os.path.join(self.status_dir, f"rank_{self.rank}.progress")
        tmp = os.path.join(self.status_dir, f".rank_{self.rank}.progress.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
            os.replace(tmp, path)
        except OSError:
            pass   # a full status disk loses beats; the launcher then sees a silent worker

    def _report(self, rec: dict) -> None:
        path = os.path.join(self.run_dir, f"hang.rank{self.rank}.txt")
        stacks = []
        for ident, frame in sys._current_frames().items():
            name = "main thread" if ident == self._main else next(
                (t.name for t in threading.enumerate() if t.ident == ident), str(ident))
            stacks.append(f"--- {name} ---\n" + "".join(traceback.format_stack(frame)))
        header = json.dumps({"rank": self.rank, **rec})
        atomic_write_text(path, header + "\n" + "\n".join(stacks))
        where = f", waiting in {rec['waits_in']}" if rec["waits_in"] else ""
        log.error("rank %d: no progress for %.0f s at step %d (phase %s%s); stacks in %s", self.rank,
                  rec["seconds"], rec["step"], rec["phase"], where, path)


def graph_collectives(parallel) -> str:
    """What the step graph waits in on other ranks: the collectives the executor puts in it."""
    p = parallel
    groups = [f"{name}={size}" for name, size in (("dp", p.dp), ("tp", p.tp), ("ep", p.ep), ("pp", p.pp)) if size > 1]
    return f"the step graph's collectives ({', '.join(groups)})" if groups else ""


def read_report(path: str) -> Optional[dict]:
    """The JSON first line of a hang report or heartbeat; None if it is missing or half written."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return None
