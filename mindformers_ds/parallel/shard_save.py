"""Writing a distributed checkpoint (the layout shards.py reads), synchronously or in a
background thread (`checkpoint.async_save` under several workers).

Every rank writes its slices into one hidden directory `.step_N.partial`; rank 0 then writes
layout.json, config.json, the side files, trainer_state.json and the manifest, and renames the
directory to `step_N`: a job killed at any point leaves nothing that looks complete.

What tells rank 0 that every rank's files are complete:
- synchronously, a barrier (a world all-reduce) after the writes, and one after the rename so no
  rank goes on before the checkpoint exists;
- in the background, files: a background thread cannot issue the job's collectives (they are
  ordered on the training thread, and a collective the other ranks do not issue at the same
  point deadlocks), so each rank's writer, once its files are fsynced, publishes
  `rank_R.written` (or `rank_R.failed` with its one-line error) beside them, and rank 0's writer
  polls for all of them before it commits. This needs the directory every rank writes into to be
  one directory, which the synchronous save needs as well (rank 0 hashes every rank's files).

The one barrier left on the training thread comes first: rank 0 removes what an interrupted
save of the same step left before any rank writes into it. A rank's next save waits for its
previous write (async_save.py), and rank 0's write includes the commit, so a step directory is
complete before rank 0 passes that first barrier of the next save.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

from ..checkpoint import manager
from ..checkpoint.safetensors_io import CheckpointError, write_safetensors
from ..utils.io import atomic_write_json, read_json
from .shards import LAYOUT_FILE, coords_of, layout_doc

WRITTEN, FAILED = "written", "failed"
POLL_S = 0.05


def partial_dir(root: str, step: int) -> str:
    return os.path.join(root, f".step_{step:08d}.partial")


def save_sharded(root: str, step: int, ctx, model_params: Sequence, opt_params: Sequence, state: Dict,
                 hf_config: Dict, keep_last: int, table, barrier: Callable[[], None],
                 side_files: Optional[Dict[str, str]] = None, opt_table=None,
                 background=None, on_saved: Optional[Callable[[str], None]] = None) -> str:
    """Save this rank's part of the checkpoint of `step`; returns the step directory it makes.
    `background`: a BackgroundWriter (checkpoint/async_save.py) that writes after the snapshot;
    `on_saved(path)` runs once this rank's part (on rank 0: the whole checkpoint) is written."""
    tmp = partial_dir(root, step)
    if ctx.rank == 0 and os.path.isdir(tmp):
        shutil.rmtree(tmp)  # leftovers of an interrupted save, stale rank markers included
    barrier()
    model_arrays, opt_arrays = manager.snapshot(model_params), manager.snapshot(opt_params)
    final = manager.step_dir(root, step)

    def commit() -> None:
        _commit(tmp, final, root, step, ctx, state, hf_config, keep_last, table, side_files, opt_table)

    if background is None:
        _write_rank(tmp, ctx.rank, step, model_arrays, opt_arrays)
        barrier()
        if ctx.rank == 0:
            commit()
        barrier()
        if on_saved:
            on_saved(final)
        return final

    def write_in_background() -> str:
        try:
            _write_rank(tmp, ctx.rank, step, model_arrays, opt_arrays)
        except CheckpointError as e:
            _mark(tmp, ctx.rank, FAILED, str(e))
            raise
        _mark(tmp, ctx.rank, WRITTEN, "")
        if ctx.rank == 0:
            _await_ranks(tmp, ctx.world, step)
            commit()
        if on_saved:
            on_saved(final)
        return final
    background.submit(write_in_background)
    return final


def _write_rank(tmp: str, rank: int, step: int, model_arrays: List, opt_arrays: List) -> None:
    mine = os.path.join(tmp, f"rank_{rank}")
    path = mine
    try:
        os.makedirs(mine, exist_ok=True)
        path = os.path.join(mine, "model.safetensors")
        write_safetensors(path, model_arrays, {"layout": "sharded"})
        path = os.path.join(mine, "optimizer.safetensors")
        write_safetensors(path, opt_arrays)
    except OSError as e:   # disk full (ENOSPC), a file size limit (EFBIG), permissions
        raise CheckpointError(f"{path}: cannot be written ({e.strerror or e}); step {step} is not saved and the "
                              f"checkpoints before it are untouched") from None


def _mark(tmp: str, rank: int, what: str, error: str) -> None:
    """Publish that this rank's files are complete (or why they are not) to rank 0's writer."""
    try:
        atomic_write_json(os.path.join(tmp, f"rank_{rank}.{what}"), {"rank": rank, "error": error})
    except OSError:
        # rank 0's writer then waits for this mark; the next save waits for that writer, in the
        # timed "save" phase, so the hang watch reports it after train.hang_timeout_s
        pass


def _await_ranks(tmp: str, world: int, step: int) -> None:
    """Block (rank 0's writer thread) until every rank published its marker; a failed rank's
    error is raised here, naming its file."""
    waiting = set(range(world))
    while waiting:
        for r in sorted(waiting):
            failed = os.path.join(tmp, f"rank_{r}.{FAILED}")
            if os.path.isfile(failed):
                raise CheckpointError(read_json(failed, CheckpointError).get("error") or
                                      f"{failed}: rank {r} could not write its part of step {step}")
            if os.path.isfile(os.path.join(tmp, f"rank_{r}.{WRITTEN}")):
                waiting.discard(r)
        if waiting:
            time.sleep(POLL_S)
    for r in range(world):   # not part of the checkpoint
        os.remove(os.path.join(tmp, f"rank_{r}.{WRITTEN}"))


def _commit(tmp: str, final: str, root: str, step: int, ctx, state: Dict, hf_config: Dict, keep_last: int,
            table, side_files: Optional[Dict[str, str]], opt_table) -> None:
    """Rank 0, once every rank's files are complete: the shared files, the manifest, the rename."""
    try:
        coords = {r: coords_of(r, ctx) for r in range(ctx.world)}
        atomic_write_json(os.path.join(tmp, LAYOUT_FILE), layout_doc(table, ctx.sizes(), coords, opt_table))
        atomic_write_json(os.path.join(tmp, "config.json"), hf_config)
        manager.copy_side_files(tmp, side_files)
        atomic_write_json(os.path.join(tmp, manager.STATE_FILE), dict(state, step=step))
        manager.publish(tmp, final, root)
    except OSError as e:
        raise CheckpointError(f"{getattr(e, 'filename', None) or tmp}: cannot be written ({e.strerror or e}); step "
                              f"{step} is not saved and the checkpoints before it are untouched") from None
    manager.prune(root, keep_last, keep=step)
