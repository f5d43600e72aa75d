"""Checkpoints of a multi-device run under the Ascend executor, in MindSpore's own distributed form.

Under semi-auto parallel each device holds the slices its strategies give it (MindSpore cut the
full tensors at the first compile), so no rank holds the model. Every rank saves what it holds
with `mindspore.save_checkpoint(step_cell, ..., integrated_save=False)` into
`step_N/rank_R/checkpoint.safetensors`; rank 0 adds the strategy file MindSpore wrote at the
first compile (`strategy/param_strategy.ckpt`), our listing (`param_layout.json`), config.json
and the trainer state, then renames the directory (a killed save never looks complete).
`mindspore.parallel.unified_safetensors(step_N, strategy file, out)` merges it into full
tensors, which `mfds convert` and resume read. Written for Ascend: on CPU a multi-device Ascend
run stops at MindSpore's refusal before its first step, so this has not run.
"""
from __future__ import annotations

import os
import shutil

from ..checkpoint import manager
from ..checkpoint.integrity import write_manifest
from ..checkpoint.safetensors_io import CheckpointError
from ..utils.io import atomic_write_json, fsync_dir
from .ascend import STRATEGY_DIR

FORMAT = "mindspore_distributed"
RANK_FILE = "checkpoint.safetensors"


def save_distributed(step_cell, req, env, output_dir: str) -> str:
    import mindspore as ms
    from .explicit import barrier
    final = manager.step_dir(req.root, req.step)
    tmp = os.path.join(req.root, f".step_{req.step:08d}.partial")
    if env.is_main and os.path.isdir(tmp):
        shutil.rmtree(tmp)  # leftovers of an interrupted save
    barrier()
    mine = os.path.join(tmp, f"rank_{env.rank}")
    os.makedirs(mine, exist_ok=True)
    ms.save_checkpoint(step_cell, os.path.join(mine, RANK_FILE), integrated_save=False, format="safetensors")
    barrier()
    if env.is_main:
        strategy = os.path.join(output_dir, STRATEGY_DIR)
        if os.path.isdir(strategy):
            shutil.copytree(strategy, os.path.join(tmp, STRATEGY_DIR))
        atomic_write_json(os.path.join(tmp, "config.json"), req.hf_config)
        manager.copy_side_files(tmp, req.side_files)
        atomic_write_json(os.path.join(tmp, manager.STATE_FILE), dict(req.state, step=req.step, format=FORMAT))
        write_manifest(tmp)   # every device's slices are complete (the barrier above)
        fsync_dir(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(req.root)
        manager.prune(req.root, req.keep_last, keep=req.step)
    barrier()
    return final


def check_loadable(path: str) -> None:
    """A MindSpore distributed checkpoint holds slices: one line saying how to merge it first."""
    if os.path.isfile(os.path.join(path, "rank_0", RANK_FILE)):
        raise CheckpointError(f"{path}: a MindSpore distributed checkpoint (per-device slices + {STRATEGY_DIR}/); "
                              f"merge it with mindspore.parallel.unified_safetensors before resuming from it")
