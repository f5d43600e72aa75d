"""Watching msrun's workers from the launcher: which rank ended a job, how, and why.

The workers are msrun's children, not ours. Each leaves `rank_R.pid` when it starts and
`rank_R.done` (its exit status) when its Python code returns (parallel/worker.py). The first
worker to end decides what ended the job:

* it exits without a done file: it **died** (SIGKILL, the OOM killer, a C++ abort);
* it exits with a non-zero done file: it **failed** on its own (an exception; status 2 is a user
  error such as a bad config). msrun then kills the others. They have no done file and look
  dead, so the watch ends at the first ending: blaming a rank msrun killed would hide the cause;
* it was seen in state T before any of that: it was **stopped** (SIGSTOP, a job-control stop).
  msrun gives up on its heartbeat and kills the others first.

Exits are observed through pidfds, which wake us the moment a worker ends. Polling alone is
racy: msrun SIGKILLs the survivors within its own 1 s poll, and a later look would see every
rank gone and could blame the wrong one.
"""
from __future__ import annotations

import os
import select
import signal
import time
from typing import List, NamedTuple, Optional


class WorkerEnd(NamedTuple):
    """The worker that ended a job: its rank, pid, `how` ("died", "failed", "stopped" or "hung"),
    for "failed" the exit status it wrote, for "hung" the verdict (parallel/hang_judge.py);
    `node`: the node whose launcher saw it, when that is another node (node_agreement.py)."""
    rank: int
    pid: int
    how: str
    status: Optional[str] = None
    detail: str = ""
    node: Optional[int] = None

    def describe(self) -> str:
        if self.how == "stopped":
            return "stopped responding (its process was stopped, state T: SIGSTOP or a job-control stop)"
        if self.how == "failed":
            return f"failed (exit status {self.status}{FAILURES.get(self.status, '')})"
        if self.how == "hung":
            return f"hung: {self.detail}"
        return "died without finishing"

    def restartable(self) -> bool:
        """A restart may help a death, a freeze, a hang or a crash (status 1: an exception such as
        a failed collective), not an error the job names itself (2) nor an interruption (130)."""
        return self.how != "failed" or self.status not in ("2", "130")


# what the exit statuses of `mfds` (cli.py) mean
FAILURES = {"1": ": an exception", "2": ": an error in its input, named in its log",
            "130": ": interrupted by SIGINT or SIGTERM"}


def proc_state(stat_path: str) -> str:
    """The state letter of a /proc `stat` file (R, S, D, T: stopped, t: traced, Z: zombie), ""
    when it is gone: /proc/PID/stat for a process, /proc/PID/task/TID/stat for one thread."""
    try:
        with open(stat_path, "r") as f:
            return f.read().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return ""


def _state(pid: int) -> str:
    return proc_state(f"/proc/{pid}/stat")


def worker_pid(status_dir: str, rank: int) -> int:
    """The pid a worker wrote to its status file (worker.py), 0 before it has."""
    try:
        with open(os.path.join(status_dir, f"rank_{rank}.pid")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def exit_status(status_dir: str, rank: int) -> Optional[str]:
    """The exit status a worker wrote when its Python code returned; None if it wrote none."""
    path = os.path.join(status_dir, f"rank_{rank}.done")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) not in ("Z", "")   # a zombie (exited, not yet reaped by msrun) counts as dead


def _ending(status_dir: str, rank: int, pid: int, stopped: dict) -> Optional[WorkerEnd]:
    """What the exit of `rank` means: None for a clean finish, else the WorkerEnd to blame (a
    rank seen stopped earlier takes the blame: the others' ends follow from its)."""
    status = exit_status(status_dir, rank)
    if status in ("0", ""):
        return None
    if stopped:
        first = min(stopped)
        return WorkerEnd(first, stopped[first], "stopped")
    return WorkerEnd(rank, pid, "died") if status is None else WorkerEnd(rank, pid, "failed", status)


def watch_workers(proc, local_ranks, status_dir: str, poll: float, checks=()) -> Optional[WorkerEnd]:
    """Wait for msrun (`proc`) to end; the worker that ended the job, or None if none did.
    Each of `checks` (a hang judge, another node's verdict) is asked at every poll."""
    poller = select.poll()
    watched = {}  # pidfd -> (rank, pid)
    seen = set()
    stopped = {}  # rank -> pid, of workers seen in state T
    try:
        while proc.poll() is None:
            for r, pid in watched.values():
                if _state(pid) == "T":
                    stopped[r] = pid
            for r in local_ranks:
                pid = 0 if r in seen else worker_pid(status_dir, r)
                if not pid:
                    continue
                seen.add(r)
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:   # it ended before we looked
                    end = _ending(status_dir, r, pid, stopped)
                    if end:
                        return end
                    continue
                watched[fd] = (r, pid)
                poller.register(fd, select.POLLIN)
                if not alive(pid):   # already a zombie when we started watching
                    end = _ending(status_dir, r, pid, stopped)
                    if end:
                        return end
            for fd, _ in poller.poll(int(poll * 1000)):
                r, pid = watched[fd]
                poller.unregister(fd)
                end = _ending(status_dir, r, pid, stopped)
                if end:
                    return end
            for check in checks:
                end = check()
                if end:
                    return end
    finally:
        for fd in watched:
            os.close(fd)
    return None


def stop_workers(status_dir: str, ranks) -> None:
    """SIGKILL every worker of `ranks` still alive (their pids are in the status files)."""
    pids = [p for p in (worker_pid(status_dir, r) for r in ranks) if p]
    for pid in [p for p in pids if alive(p)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    t0 = time.time()
    while any(alive(p) for p in pids) and time.time() - t0 < 10:
        time.sleep(0.1)


def worker_reason(log_dir: str, rank: int) -> str:
    """Why a worker failed, in one line from its log: its own `error: ...` message, else the
    exception line that ends its last Python traceback, else where it was interrupted, else
    MindSpore's last [ERROR] line."""
    path = os.path.join(log_dir, f"worker_{rank}.log")
    if not os.path.isfile(path):
        return ""
    with open(path, errors="replace") as f:
        lines = [ln.rstrip("\n") for ln in f]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if errors:
        return errors[-1]
    tb = max((i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")), default=None)
    if tb is not None:
        # the frames are indented; the exception's first line is the first one that is not
        for ln in lines[tb + 1:]:
            if ln and not ln[0].isspace():
                return ln[:400]
    stops = [ln for ln in lines if ln.endswith("(interrupted)") or "(interrupted); " in ln]   # trainer.py's message
    if stops:
        return stops[-1]
    logged = [ln for ln in lines if ln.startswith("[ERROR]")]
    return logged[-1][:400] if logged else ""


def worker_errors(log_dir: str, ranks) -> List[str]:
    """Each distinct failure reason of `ranks` once (a config error every rank meets is shown once)."""
    seen: List[str] = []
    for r in ranks:
        reason = worker_reason(log_dir, r)
        if reason and reason not in seen:
            seen.append(reason)
    return seen
