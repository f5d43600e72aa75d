"""Asynchronous checkpoint saving (`checkpoint.async_save`): one write at a time in a background
thread.

At a save step the trainer snapshots every tensor into host memory (numpy copies the next step
cannot change) and hands the write to `BackgroundWriter.submit`; training continues while the
thread writes through the same protocol as a synchronous save (temp directory, fsync, manifest,
rename: manager.py), so a process killed mid-write leaves the previous checkpoint intact and the
partial one ignored. The next save waits for the previous one, and so does the end of the run;
a write that failed raises its one-line error there. What a step is blocked by (the snapshot,
and waiting for the previous write) is reported by the caller as the save's `blocked_s`.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional


class BackgroundWriter:
    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self.result = None

    def _run(self, write: Callable[[], object]) -> None:
        try:
            self.result = write()
        except BaseException as e:   # re-raised in the training thread by wait()
            self._error = e

    def submit(self, write: Callable[[], object]) -> float:
        """Start `write()` once the previous write is done; returns the seconds spent waiting."""
        waited = self.wait()
        self._thread = threading.Thread(target=self._run, args=(write,), name="checkpoint-writer", daemon=True)
        self._thread.start()
        return waited

    def wait(self) -> float:
        """Block until the current write is done (raising its error); returns the seconds waited."""
        t0 = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return time.perf_counter() - t0
