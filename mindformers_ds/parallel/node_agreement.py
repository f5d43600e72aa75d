"""How the launchers of a multi-node job end and restart together: through files in the run
directory, which the nodes share (as they must for resuming: every node reads the checkpoint).

In `<train.output_dir>/launch/`:
* `node{N}.start`: each node's launcher when it starts. Each waits until it sees every node's,
  so a run directory that is not shared is refused in one line before any worker starts;
* `attempt{K}.end`: the first node whose attempt K ends (a worker died, hung, crashed, or
  failed with an error of its own) writes why, created exclusively: one verdict per attempt,
  whichever node saw it first. Every node's launcher polls for it while its workers run, and a
  peer's verdict stops its own workers at once (without it they would wait in a collective for
  the dead peer until msrun's timeouts);
* `attempt{K}.node{N}.stopped`: a node whose workers of attempt K are all stopped. Every node
  waits for all of them before the next attempt, so no node's new workers meet a peer's old ones.

Every node reads the same verdict, so they all decide alike: restart from the newest checkpoint
(if the verdict is restartable and restarts remain) or stop. Files from an earlier launch of the
same run directory are told apart by their time: older than this launcher's start minus the
cluster timeout, they are ignored.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from ..errors import ConfigError
from .worker_watch import WorkerEnd


class NodeAgreement:
    def __init__(self, run_dir: str, nnodes: int, node_rank: int, timeout: float, origin: str):
        self.dir = os.path.join(run_dir, "launch")
        self.nnodes, self.node, self.timeout, self.origin = nnodes, node_rank, timeout, origin
        self.since = time.time() - timeout   # what an earlier launch left is older than this

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _fresh(self, name: str) -> bool:
        try:
            return os.path.getmtime(self._path(name)) >= self.since
        except OSError:
            return False

    def _touch(self, name: str, text: str = "") -> None:
        os.makedirs(self.dir, exist_ok=True)
        tmp = self._path(f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self._path(name))

    def _wait_all(self, name_of, what: str) -> None:
        t0 = time.time()
        while True:
            missing = [n for n in range(self.nnodes) if not self._fresh(name_of(n))]
            if not missing:
                return
            if time.time() - t0 > self.timeout:
                raise ConfigError(self.origin, "train.output_dir", f"{what}: node{'s' if len(missing) > 1 else ''} "
                                  f"{', '.join(map(str, missing))} not seen in {self.dir} after {self.timeout:.0f} s; "
                                  "restarting nodes together needs a run directory every node shares")
            time.sleep(0.5)

    def meet(self) -> None:
        """Announce this node and wait for the others' launchers (before any worker starts)."""
        self._touch(f"node{self.node}.start", str(time.time()))
        self._wait_all(lambda n: f"node{n}.start", "--max-restarts with several nodes")

    def publish(self, attempt: int, end: WorkerEnd) -> None:
        """This node's verdict on `attempt`, unless a peer's came first."""
        name = f"attempt{attempt}.end"
        if self._fresh(name):
            return
        record = {"node": self.node, "rank": end.rank, "how": end.how, "status": end.status, "detail": end.detail}
        os.makedirs(self.dir, exist_ok=True)
        try:   # exclusive: two nodes ending at once leave one verdict
            fd = os.open(self._path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if self._fresh(name):
                return
            os.unlink(self._path(name))   # an earlier launch's
            return self.publish(attempt, end)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record))

    def verdict(self, attempt: int) -> Optional[dict]:
        name = f"attempt{attempt}.end"
        if not self._fresh(name):
            return None
        try:
            with open(self._path(name), encoding="utf-8") as f:
                return json.loads(f.read())
        except (OSError, ValueError):   # being written: read again at the next poll
            return None

    def peer_end(self, attempt: int) -> Optional[WorkerEnd]:
        """A verdict on `attempt` that another node published (None: none, or this node's)."""
        v = self.verdict(attempt)
        return None if v is None or v["node"] == self.node else _end_of(v)

    def stopped(self, attempt: int) -> None:
        """Say this node's workers of `attempt` are stopped; wait for every node's."""
        self._touch(f"attempt{attempt}.node{self.node}.stopped")
        self._wait_all(lambda n: f"attempt{attempt}.node{n}.stopped", f"attempt {attempt} ended")


def _end_of(v: dict) -> WorkerEnd:
    return WorkerEnd(v["rank"], 0, v["how"], v["status"], v["detail"], v["node"])


def agree(nodes: NodeAgreement, attempt: int, code: int, end: Optional[WorkerEnd]):
    """This node's (exit code, end) of `attempt` -> the job's: the one verdict every node reads.
    A node that saw the end itself publishes it; one whose job failed without a worker to blame
    publishes that (its peers must stop too); a clean finish is every node's."""
    if end is None and code == 0:
        return code, None
    if end is None:
        end = WorkerEnd(-1, 0, "failed", str(code), "msrun failed on this node")
    if end.node is None:
        nodes.publish(attempt, end)
    v = nodes.verdict(attempt)
    return code or 1, (_end_of(v) if v is not None else end)
