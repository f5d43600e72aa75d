"""`mfds launch --nproc N [...] -- train --config X.yaml [--set ...]`: msrun with guard rails.

* The layout, the output directory and the memory of this host's workers are checked before
  any worker starts (world size, divisibility, executor limits; train/preflight.py).
* Workers run `python -m`-equivalent `mindformers_ds` with the same interpreter (its directory
  first on PATH, as msrun starts `python` from PATH).
* msrun always gets `--cluster_time_out`, and the launcher watches each worker: one that dies
  (SIGKILL, OOM) without finishing makes the launch stop the job and exit non-zero naming the
  rank, instead of the survivors waiting in a collective forever. One that fails by itself (an
  exception) is named with the reason from its log, not the ranks msrun stopped after it
  (worker_watch.py). One that stops making progress (`train.hang_timeout_s`: a hung collective,
  a stalled read, a stopped main thread) is named with its step and phase and what the others
  wait in (hang_judge.py).
* Multi-node: run the same command on every node with `--nnodes`, `--node-rank` and the first
  node's `--master-addr`.
* The scheduler port: a free one by default on one node (a fixed default collided with other
  jobs on the same host); 8118 by default across nodes, which must agree on it; a port that is
  taken on the master is refused in one line before anything starts.
* When the job stops (a dead worker, a failure), every worker this node started is stopped too:
  they run in process groups of their own, which the launcher's signal to msrun's group misses.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

from ..utils.device import device_target
from .hang_judge import HangJudge
from .node_agreement import NodeAgreement, agree
from .restart import check_restarts, restart_from
from .worker_watch import exit_status, stop_workers, watch_workers, worker_errors, worker_reason

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


def _train_config(train_args: List[str]):
    """The run config named by the worker command line (to validate it up front)."""
    from .. import config
    if not train_args or train_args[0] != "train" or "--config" not in train_args:
        return None
    path = train_args[train_args.index("--config") + 1]
    sets = [train_args[i + 1] for i, a in enumerate(train_args) if a == "--set" and i + 1 < len(train_args)]
    return config.load(path, sets)


MULTI_NODE_PORT = 8118


def master_port_for(master_port: Optional[int], nnodes: int, node_rank: int) -> int:
    """The scheduler port: as given, else a free one (one node) or MULTI_NODE_PORT (the nodes
    must agree); on the master node a port another process holds is a one-line error."""
    from ..errors import ConfigError
    if master_port is None and nnodes == 1:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return s.getsockname()[1]
    port = MULTI_NODE_PORT if master_port is None else master_port
    taken = _bind_error(port) if node_rank == 0 else None
    if taken is not None:
        raise ConfigError("--master-port", "master_port", f"port {port} is taken on this host ({taken.strerror}): "
                          "another job's scheduler? choose another --master-port"
                          + (", or leave it out to get a free one" if nnodes == 1 else ""))
    return port


def _bind_error(port: int) -> Optional[OSError]:
    """Why `port` cannot be bound on this host, or None when it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError as e:
            return e
    return None


def wait_free(port: int, timeout: float = 60.0) -> int:
    """Wait until `port` can be bound again (a stopped job's scheduler released it); msrun names
    it if it is still taken after `timeout`."""
    t0 = time.time()
    while _bind_error(port) is not None and time.time() - t0 < timeout:
        time.sleep(0.5)
    return port


def wait_listening(addr: str, port: int, timeout: float) -> None:
    """Wait (up to `timeout`) until the master's scheduler accepts connections. msrun starts a
    scheduler on every node whose --master-addr is one of its own addresses, so nodes simulated
    on one host that start together race for the port; a real non-master node just starts after
    its scheduler, which its workers would wait for anyway."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with socket.create_connection((addr, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)


def launch(nproc: int, train_args: List[str], nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
           master_port: Optional[int] = None, log_dir: Optional[str] = None, cluster_timeout: int = 120,
           poll: float = 0.5, max_restarts: Optional[int] = None) -> int:
    """Check, then run the job; a worker that dies or freezes ends it, or (up to `max_restarts`
    times, default the run config's `train.max_restarts`) restarts it from its newest checkpoint."""
    world = nproc * nnodes
    port = master_port_for(master_port, nnodes, node_rank)
    cfg = _train_config(train_args)
    if cfg is not None:
        from .executors import executor_for
        executor_for(cfg.parallel).check(cfg, world)
        from ..train.preflight import check_memory, check_output_dir
        if node_rank == 0:  # the master node owns the run directory; the others may find it begun
            check_output_dir(cfg)  # before any worker starts (they check again, before writing)
        check_memory(cfg, nproc, device_target())  # every worker of this host
        # one directory per node: with a shared run directory the nodes' msrun logs and status
        # files would overwrite each other (scheduler.log, rank status)
        node_logs = os.path.join("logs", f"node_{node_rank}") if nnodes > 1 else "logs"
        log_dir = log_dir or os.path.join(cfg.train.output_dir, node_logs)
    restarts = check_restarts(max_restarts, cfg)
    log_dir = os.path.abspath(log_dir or "msrun_logs")
    nodes = None
    if restarts and nnodes > 1:   # the launchers agree through the shared run directory
        nodes = NodeAgreement(cfg.train.output_dir, nnodes, node_rank, cluster_timeout, cfg.origin("train.output_dir"))
        nodes.meet()
    for attempt in range(restarts + 1):
        peer = [lambda: nodes.peer_end(attempt)] if nodes is not None else []
        announce = (lambda end: nodes.publish(attempt, end)) if nodes is not None else None
        if node_rank > 0:
            wait_listening(master_addr, port, cluster_timeout)
        code, dead = _run_job(nproc, world, train_args, node_rank, master_addr, port, log_dir, cluster_timeout, poll,
                              cfg.train.output_dir if cfg is not None else None,
                              cfg.train.hang_timeout_s if cfg is not None else 0.0, peer, announce)
        if nodes is not None:
            code, dead = agree(nodes, attempt, code, dead)
        if dead is None or not dead.restartable() or attempt == restarts:
            return code
        if nodes is not None:
            nodes.stopped(attempt)   # no node starts again before every node's workers are stopped
        print(f"launch: restart {attempt + 1} of {restarts}: {restart_from(cfg, dead)}", file=sys.stderr, flush=True)
        train_args = [*train_args, "--set", "train.resume=auto"]   # the later --set wins
        if nnodes > 1:   # the nodes keep the port they agreed on; the master waits for its release
            port = wait_free(port) if node_rank == 0 else port
        else:
            port = master_port_for(master_port, nnodes, node_rank) if master_port is None else wait_free(port)
    return 1


def _run_job(nproc: int, world: int, train_args: List[str], node_rank: int, master_addr: str, master_port: int,
             log_dir: str, cluster_timeout: int, poll: float, run_dir: Optional[str], hang_timeout: float,
             checks=(), announce=None):
    """One msrun of the job: (exit code, the WorkerEnd of the worker that ended it, or None).
    `announce` hears a local end at once, before the workers are stopped (the other nodes stop
    on it instead of meeting the cluster's own failure first)."""
    status_dir = os.path.join(log_dir, "status")
    os.makedirs(status_dir, exist_ok=True)
    for f in os.listdir(status_dir):
        os.unlink(os.path.join(status_dir, f))
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["MFDS_STATUS_DIR"] = status_dir
    cmd = ["msrun", f"--worker_num={world}", f"--local_worker_num={nproc}", f"--master_addr={master_addr}",
           f"--master_port={master_port}", f"--node_rank={node_rank}", f"--log_dir={log_dir}", "--join=True",
           f"--cluster_time_out={cluster_timeout}", WORKER, *train_args]
    print(f"launch: {world} workers ({nproc} on this node), logs in {log_dir}", flush=True)
    local_ranks = range(node_rank * nproc, (node_rank + 1) * nproc)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    judge = HangJudge(run_dir, status_dir, local_ranks, hang_timeout)
    end = watch_workers(proc, local_ranks, status_dir, poll, [judge.check, *checks])
    if end is not None and end.node is not None:   # another node's verdict: stop this node's part
        _end_msrun(proc, grace=0)
        stop_workers(status_dir, local_ranks)
        print(f"launch: node {node_rank}: node {end.node} ended the job: worker rank {end.rank} {end.describe()}; "
              f"stopped this node's workers", file=sys.stderr, flush=True)
        return 1, end
    if end is not None:
        if announce is not None:
            announce(end)
        _end_msrun(proc, grace=30 if end.how == "failed" else 0)   # after a failure msrun stops the others
        stop_workers(status_dir, local_ranks)
        reason = worker_reason(log_dir, end.rank) if end.how == "failed" else ""
        if reason:
            print(reason, file=sys.stderr, flush=True)
        print(f"error: worker rank {end.rank} (pid {end.pid}) {end.describe()}; stopped the job "
              f"(its log: {os.path.join(log_dir, f'worker_{end.rank}.log')})", file=sys.stderr, flush=True)
        return (int(end.status) if end.how == "failed" and end.status.isdigit() else 1), end
    code = proc.returncode
    stop_workers(status_dir, local_ranks)   # none should be left; an orphan would hold memory and ports
    status = {r: exit_status(status_dir, r) for r in local_ranks}   # None: the worker wrote none
    failed = [r for r, s in status.items() if s not in (None, "0", "")]
    finished = all(s == "0" for s in status.values())
    if code != 0 and finished and world > nproc:
        # msrun starts a scheduler on every node whose --master-addr is one of its own addresses;
        # on one host (several nodes simulated) the one that binds the port second exits, while
        # the job ran on the other's (which of the two binds first is a race when the launchers
        # restart together): the workers' own exit status is the answer
        print(f"launch: node {node_rank}: every local worker finished (msrun status {code}: its "
              f"scheduler could not start, as when --master-addr is this host and another node's holds the port)",
              flush=True)
        return 0, None
    if code != 0 or failed:
        which = f" (rank {', '.join(map(str, failed))} exited with an error)" if failed else ""
        for line in worker_errors(log_dir, failed or local_ranks):
            print(line, file=sys.stderr, flush=True)
        print(f"error: distributed job failed with status {code}{which}; see {log_dir}", file=sys.stderr, flush=True)
        return code or 1, None   # an error the job reports itself (a config error...) is not retried
    return 0, None


def _end_msrun(proc: subprocess.Popen, grace: float) -> None:
    """Let msrun end by itself within `grace` seconds, then stop its process group."""
    try:
        proc.wait(timeout=grace or 0.01)
        return
    except subprocess.TimeoutExpired:
        pass
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
