"""Automatic restart of a launched job (`mfds launch --max-restarts N`, or `train.max_restarts`).

When a worker dies (SIGKILL, OOM), freezes (its process stopped), hangs (hang_judge.py: a hang
counts as a failure) or crashes (an exception:
exit status 1, e.g. a failed collective), the launcher stops every worker of the job
(launch.py), and, while restarts remain, starts the job again with `train.resume=auto`: it
continues from the newest checkpoint that verifies (checkpoint/integrity.py), redoing the steps
after it, as torchrun's restarts do. A worker that names an error in its input (status 2: a bad
config, a bad checkpoint) is not retried, as it would fail again; nor one interrupted (130).

Several nodes: every node's launcher ends and restarts together, agreeing through files in the
shared run directory (node_agreement.py): one verdict per attempt, and every node's workers
stopped before any node starts again.
"""
from __future__ import annotations

import json
import os
from typing import Optional


def check_restarts(cli_value: Optional[int], cfg) -> int:
    """The number of restarts allowed: the command line's, else the run config's."""
    from ..errors import ConfigError
    value = cli_value if cli_value is not None else (cfg.train.max_restarts if cfg is not None else 0)
    origin = "--max-restarts" if cli_value is not None else (cfg.origin("train.max_restarts") if cfg else "")
    if value < 0:
        raise ConfigError(origin, "train.max_restarts", f"max_restarts={value} must be >= 0")
    if value and cfg is None:
        raise ConfigError(origin, "train.max_restarts", "max_restarts needs a `train --config ...` job to resume")
    return value


def _last_logged_step(output_dir: str) -> int:
    last = 0
    try:
        with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue   # a line torn by the kill
                if "loss" in rec:
                    last = max(last, int(rec.get("step", 0)))
    except OSError:
        pass
    return last


def restart_from(cfg, dead) -> str:
    """What a restart does, in one line: which rank, why, from which checkpoint, what is redone."""
    from ..checkpoint import manager
    newest = manager.latest(os.path.join(cfg.train.output_dir, "checkpoints"))
    step = int(os.path.basename(newest).split("_")[1]) if newest else 0
    last = _last_logged_step(cfg.train.output_dir)
    why = {"stopped": "stopped responding", "failed": f"failed (exit status {dead.status})",
           "hung": "stopped making progress"}.get(dead.how, "died")
    where = f"its newest checkpoint {newest} (step {step}, verified on load)" if newest else "step 0 (no checkpoint)"
    redo = f"; steps {step + 1}-{last} are redone" if last > step else ""
    return f"worker rank {dead.rank} {why}; resuming from {where}{redo}"
