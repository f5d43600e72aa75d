"""Hang detection (issue 21 item 3): under real msrun (dp=2), a worker frozen from outside ends the
job within `train.hang_timeout_s` + 15 s, non-zero, with one line naming the stuck rank, its step
and phase, and the collective the other rank waits in; each waiting rank leaves a report with
its Python stacks. Two kinds of freeze: the whole process (SIGSTOP, left stopped: msrun's own
heartbeat would notice only after ~30 s), and its main thread alone, stopped by a tracer
(PTRACE_SEIZE + PTRACE_INTERRUPT), so its other threads, msrun's heartbeat among them, run on:
what a hung collective or a stalled read looks like, which nothing else notices."""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from mindformers_ds.parallel.hang_judge import GRACE, HangJudge
from test_parallel_msrun import CFG, sets

TIMEOUT = 10
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
WALL = 0x40000000   # __WALL: wait for a traced thread that is not our child


def _freeze_main_thread(pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    for request in (PTRACE_SEIZE, PTRACE_INTERRUPT):   # the main thread's tid is the pid
        if libc.ptrace(request, pid, None, None) != 0:
            pytest.fail(f"ptrace({request:#x}, {pid}): {os.strerror(ctypes.get_errno())}")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("freeze", ["process", "main_thread"])
def test_a_frozen_worker_is_named_as_hung_within_the_timeout(freeze, tmp_path):
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "2", "--cluster-timeout", "60", "--", "train",
           "--config", CFG, *sets(out, dp=2, steps=400), "--set", f"train.hang_timeout_s={TIMEOUT}"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = os.path.join(out, "logs", "status")
    t0 = time.time()
    # past the first (compiling, untimed) step on both ranks: rank 0 has logged step 2
    while not (os.path.isfile(os.path.join(out, "metrics.jsonl")) and
               '"step": 2,' in open(os.path.join(out, "metrics.jsonl")).read()):
        assert p.poll() is None and time.time() - t0 < 300, p.communicate()[1][-3000:]
        time.sleep(0.2)
    victim = int(open(os.path.join(status, "rank_1.pid")).read())
    if freeze == "process":
        os.kill(victim, signal.SIGSTOP)
    else:
        _freeze_main_thread(victim)
    t_freeze = time.time()
    try:
        _, err = p.communicate(timeout=180)
    finally:
        if freeze == "main_thread":   # reap the traced thread the launcher killed
            try:
                os.waitpid(victim, os.WNOHANG | WALL)
            except ChildProcessError:
                pass
    took = time.time() - t_freeze
    assert p.returncode != 0
    how = ("its process is stopped: SIGSTOP" if freeze == "process" else
           "its main thread alone is stopped: a tracer")
    line = re.search(rf"^error: worker rank 1 \(pid {victim}\) hung: rank 1 stopped making progress at step (\d+) "
                     rf"\(phase ([a-z ]+)(?:, its last heartbeat)?; {how}[^)]*\); rank 0 waits in (.+) issued at step "
                     rf"(\d+); stopped the job", err, re.M)
    assert line, err[-3000:]
    stuck_step, phase, call, waited_step = line.groups()
    assert phase in ("data", "step graph", "loss sums", "logging", "save") and int(waited_step) >= int(stuck_step) >= 1
    assert call in ("all_reduce(world) of the loss sums", "the step graph's collectives (dp=2)",
                    "the checkpoint's barriers (all_reduce(world))")
    assert took < TIMEOUT + 15, (took, err[-2000:])
    with open(os.path.join(out, "hang.rank0.txt")) as f:   # the waiting rank's own report
        header, stacks = json.loads(f.readline()), f.read()
    assert header["rank"] == 0 and header["waits_in"] == call and header["seconds"] >= TIMEOUT
    assert "--- main thread ---" in stacks and "trainer.py" in stacks
    for rank in (0, 1):   # nothing outlives the launch
        pid = int(open(os.path.join(status, f"rank_{rank}.pid")).read())
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"


def _beat(status, rank, step, phase, waits_in="", age=0.0, now=1000.0):
    with open(os.path.join(status, f"rank_{rank}.progress"), "w") as f:
        json.dump({"step": step, "phase": phase, "waits_in": waits_in, "timed": True, "since": now - age,
                   "seconds": age, "beat": now}, f)


def test_the_verdict_places_the_ranks_by_how_far_they_got(tmp_path):
    """The judge's reading of the watchdogs' files (no process involved): the rank behind is the
    stuck one; with every rank in the same collective, the collective itself is named."""
    run, status = str(tmp_path), str(tmp_path / "status")
    os.makedirs(status)
    now = time.time()
    _beat(status, 0, 7, "loss sums", "all_reduce(world) of the loss sums", now=now)
    _beat(status, 1, 7, "data", now=now)
    _beat(status, 2, 7, "loss sums", "all_reduce(world) of the loss sums", now=now)
    with open(os.path.join(run, "hang.rank0.txt"), "w") as f:
        f.write(json.dumps({"rank": 0, "step": 7, "phase": "loss sums", "waits_in": "all_reduce(world) of the loss sums",
                            "timed": True, "seconds": 11.0}) + "\n--- main thread ---\n")
    judge = HangJudge(run, status, [0, 1, 2], timeout=10)
    judge.started = now - 60
    assert judge.check(now) is None   # a report: the others' come within the grace
    end = judge.check(now + GRACE)
    assert (end.rank, end.how) == (1, "hung")
    assert end.detail == ("rank 1 stopped making progress at step 7 (phase data, its last heartbeat); ranks 0, 2 "
                          "wait in all_reduce(world) of the loss sums issued at step 7")
    _beat(status, 1, 7, "loss sums", "all_reduce(world) of the loss sums", now=now)
    judge = HangJudge(run, status, [0, 1, 2], timeout=10)
    judge.started = now - 60
    judge.check(now)
    assert judge.check(now + GRACE).detail == (
        "every rank (0, 1, 2) waits in all_reduce(world) of the loss sums issued at step 7, none is missing "
        "from it: the collective itself does not complete (the network?)")
    judge = HangJudge(run, status, [0, 1, 2], timeout=10)   # reports from before this attempt are history
    assert judge.check(now + GRACE) is None
