"""MindSpore's own log lines go to a file in the run directory; the console keeps ours.

MindSpore's C++ logger writes warnings such as the multi-line `[WARNING] ANALYZER ... Some side
effect nodes were eliminated by mistake` (once per compiled cell) and `[INFO] DISTRIBUTED ...
Event base dispatch success!` straight to file descriptor 2, and in 2.10 `GLOG_stderrthreshold`
does not keep them off it (measured: they still reach the console with `GLOG_logtostderr=0`).
So the router moves fd 2 onto a pipe and gives Python a private duplicate of the console:
Python output (our log lines, tqdm bars, tracebacks) goes straight to the console, and a
thread reads what native code writes: a MindSpore line at DEBUG/INFO/WARNING level, with its
continuation lines, goes to `mindspore.log`; anything else (MindSpore errors, a crash report
of another library) still reaches the console. `logging.level: debug` leaves fd 2 alone.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from typing import Optional

# MindSpore's header: "[WARNING] ANALYZER(6127,7fa9...,python):2026-12-02-05:45:26.201.271 [file:line] ..."
# ... and its Python side: "[WARNING] ME(10034:1398822,MainProcess):2026-12-02-06:07:32.464.000 [...] ..."
QUIET_HEADER = re.compile(rb"^\[(DEBUG|INFO|WARNING)\] [A-Z_]+\(\d+[,:]")
ANY_HEADER = re.compile(rb"^\[(DEBUG|INFO|WARNING|ERROR|CRITICAL|EXCEPTION)\] ")


class NativeLogRouter:
    def __init__(self, log_path: str):
        self.log_path = log_path
        self._thread: Optional[threading.Thread] = None
        self._console_fd = -1

    def start(self) -> None:
        sys.stderr.flush()
        self._console_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        # Python keeps writing to the console through its own descriptor
        sys.stderr = open(self._console_fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), name="mindspore-log-router",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        """Give fd 2 back to the console and let the thread drain the pipe. At exit this must come
        first: a daemon thread is frozen during finalisation, and what MindSpore's C++ side writes
        then would fill a pipe nobody reads."""
        if self._console_fd < 0:
            return
        sys.stderr.flush()
        os.dup2(self._console_fd, 2)  # closes the pipe's only write end: the thread reads EOF
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _pump(self, read_fd: int) -> None:
        quiet = False
        with os.fdopen(read_fd, "rb", buffering=0) as pipe, open(self.log_path, "ab", buffering=0) as log:
            for line in iter(pipe.readline, b""):
                if ANY_HEADER.match(line):
                    quiet = bool(QUIET_HEADER.match(line))
                if quiet:
                    log.write(line)
                else:
                    os.write(self._console_fd, line)


def user_log_dir() -> str:
    """Where commands without a run directory (generate, eval) put MindSpore's lines."""
    return os.environ.get("MFDS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mindformers_ds")


def route_native_logs(run_dir: str, level: str) -> Optional[NativeLogRouter]:
    """Start routing unless `level` is debug or this is an msrun worker (msrun already writes each
    worker's output to its own log file); returns the router (None when not routed)."""
    from ..parallel.config import launched_workers
    if level.upper() == "DEBUG" or launched_workers() > 1:
        return None
    os.makedirs(run_dir, exist_ok=True)
    router = NativeLogRouter(os.path.join(run_dir, "mindspore.log"))
    router.start()
    return router
