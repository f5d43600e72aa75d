"""Training checkpoints: `OUTPUT/checkpoints/step_00000100/` holding

  model.safetensors      model weights (this stack's layout: stacked experts; router biases included),
                         or adapter.safetensors (LoRA runs: only the adapters; the base is unchanged)
  optimizer.safetensors  AdamW moments and step
  trainer_state.json     step, tokens seen, config digest
  manifest.json          every file's size and digest (integrity.py), written last
  config.json            the model's HF config
  tokenizer.json, tokenizer_config.json, run_config.yaml   the run's tokenizer and resolved
                         config, so `mfds generate` / `mfds eval` need only the checkpoint

A checkpoint is written into a hidden temp directory and renamed into place only when every
file is complete and fsynced, so a run killed mid-save leaves nothing that looks complete;
`latest` ignores such leftovers (and `prune` removes them). A resume verifies the manifest
before loading (trainer.py: `train.resume=auto` falls back to the newest checkpoint that verifies).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.io import atomic_write_json, fsync_dir, normal_mode, read_json
from .integrity import MANIFEST, write_manifest
from .safetensors_io import CheckpointError, SafetensorsFile, write_safetensors

STEP_DIR = re.compile(r"^step_(\d{8})$")
STATE_FILE = "trainer_state.json"


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:08d}")


def snapshot(params) -> List[Tuple[str, str, np.ndarray]]:
    """(name, tag, host copy) of each parameter: what a checkpoint writes, which later steps cannot change."""
    # np.array copies, and keeps 0-d tensors 0-d (np.ascontiguousarray would make the optimizer step [1])
    return [(p.name, "F32", np.array(p.asnumpy(), np.float32, order="C")) for p in params]


def copy_side_files(directory: str, side_files: Optional[Dict[str, str]]) -> None:
    """Copy `side_files` (name in the checkpoint -> source path) into a checkpoint being written."""
    for name, src in (side_files or {}).items():
        shutil.copyfile(src, os.path.join(directory, name))


def save(root: str, step: int, model_params: Sequence, optimizer_params: Sequence, state: Dict,
         hf_config: Dict, keep_last: int, model_file: str = "model.safetensors",
         side_files: Optional[Dict[str, str]] = None) -> str:
    """`side_files`: the tokenizer and the run config, so the checkpoint is usable on its own."""
    return write(root, step, snapshot(model_params), snapshot(optimizer_params), state, hf_config, keep_last,
                 model_file, side_files)


def write(root: str, step: int, model_arrays: Sequence, optimizer_arrays: Sequence, state: Dict,
          hf_config: Dict, keep_last: int, model_file: str = "model.safetensors",
          side_files: Optional[Dict[str, str]] = None) -> str:
    """Write a checkpoint from `snapshot`s (safe in a background thread: async_save.py)."""
    final = step_dir(root, step)
    writing = [final]   # the file being written, as it will be named, for the error
    tmp = ""

    def into(name: str) -> str:
        writing[0] = os.path.join(final, name)
        return os.path.join(tmp, name)
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".step_{step:08d}.", suffix=".tmp", dir=root)
        os.chmod(tmp, normal_mode(0o777))   # mkdtemp makes 0700; a checkpoint is a normal directory others may read
        write_safetensors(into(model_file), model_arrays, {"layout": "mindspore"})
        _fault_injection(step)
        if optimizer_arrays:
            write_safetensors(into("optimizer.safetensors"), optimizer_arrays)
        for name, src in (side_files or {}).items():
            shutil.copyfile(src, into(name))
        atomic_write_json(into("config.json"), hf_config)
        atomic_write_json(into(STATE_FILE), dict(state, step=step))
        into(MANIFEST)
        publish(tmp, final, root)
    except OSError as e:   # disk full (ENOSPC), a file size limit (EFBIG), permissions
        raise CheckpointError(f"{writing[0]}: cannot be written ({e.strerror or e}); step {step} is not saved and "
                              f"the checkpoints before it are untouched") from None
    finally:
        if tmp and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    prune(root, keep_last, keep=step)
    return final


def publish(tmp: str, final: str, root: str) -> None:
    """The last act of every save: the manifest of the complete temp directory `tmp`, fsynced,
    then renamed to `final` (replacing an older one of that step) in `root`."""
    write_manifest(tmp)
    fsync_dir(tmp)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)


def _fault_injection(step: int) -> None:
    """MFDS_FAULT_SAVE_PAUSE=STEP:SECONDS pauses the save of STEP half-way (model file written,
    the rest not), so tests can kill a real process in the middle of a save."""
    spec = os.environ.get("MFDS_FAULT_SAVE_PAUSE", "")
    if spec and int(spec.split(":")[0]) == step:
        import sys
        import time
        print(f"fault injection: pausing the save of step {step}", file=sys.stderr, flush=True)
        time.sleep(float(spec.split(":")[1]))


def complete_steps(root: str) -> List[int]:
    if not os.path.isdir(root):
        return []
    steps = []
    for name in os.listdir(root):
        m = STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest(root: str) -> Optional[str]:
    steps = complete_steps(root)
    return step_dir(root, steps[-1]) if steps else None


def prune(root: str, keep_last: int, keep: Optional[int] = None) -> None:
    """Keep `keep` (the checkpoint just saved, verified as it was written) and the `keep_last` - 1
    newest before it. Checkpoints after `keep` are neither counted nor removed: a run that fell
    back from a checkpoint that failed verification (or was resumed from an earlier one) must not
    let those crowd out the good ones it has; it overwrites them when it gets there."""
    steps = complete_steps(root)
    if keep is not None:
        older = [s for s in steps if s < keep]
        doomed = older[:max(len(older) - (keep_last - 1), 0)]
    else:
        doomed = steps[:-keep_last]
    for s in doomed:
        shutil.rmtree(step_dir(root, s), ignore_errors=True)
    for name in os.listdir(root):
        if name.startswith(".step_") and name.endswith(".tmp"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def resume_checkpoint(root: str, mode: str) -> Optional[str]:
    """The checkpoint a run resumes from. `never`: none. `auto`: the newest complete one under
    `root` whose files verify (integrity.py); each newer one that does not is logged in one line
    naming the bad file, then the one fallen back to. A path: that checkpoint, or a one-line
    refusal naming the bad file (an explicit choice is not silently replaced by another)."""
    import logging
    from .integrity import has_manifest, verify
    log = logging.getLogger("mindformers_ds.checkpoint")
    if mode == "never":
        return None
    if mode != "auto":
        problem = verify(mode)
        if problem:
            raise CheckpointError(f"{problem}; train.resume={mode} names this checkpoint, so it is not replaced by "
                                  f"another: use train.resume=auto to fall back to the newest one that verifies")
        return mode
    failed = []
    for step in reversed(complete_steps(root)):
        path = step_dir(root, step)
        problem = verify(path)
        if problem is None:
            if failed:
                log.warning("resuming from %s, the newest checkpoint that verifies (%d newer failed)", path, len(failed))
            elif not has_manifest(path):
                log.warning("%s has no manifest (written before checkpoints carried one): loading it unverified", path)
            return path
        failed.append(path)
        log.warning("checkpoint %s fails verification: %s; trying the one before", path, problem)
    if failed:
        log.warning("no checkpoint under %s verifies: starting from step 0", root)
    return None


def read_state(path: str) -> Dict:
    full = os.path.join(path, STATE_FILE)
    state = read_json(full, CheckpointError)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{full}: expected a JSON object with an integer 'step'")
    return state


def load_params(path: str, filename: str, params: Sequence, required: bool = True) -> int:
    """Set `params` from PATH/filename by name; every param must be present when `required`."""
    full = os.path.join(path, filename)
    import mindspore as ms
    with SafetensorsFile(full) as f:
        n = 0
        for p in params:
            if p.name not in f:
                if required:
                    raise CheckpointError(f"{full}: tensor {p.name!r} missing (checkpoint from another run setup?)")
                continue
            tag, shape = f.info(p.name)
            if tuple(shape) != tuple(p.shape):
                raise CheckpointError(f"{full}: tensor {p.name!r} has shape {list(shape)}, expected {list(p.shape)} "
                                      f"(checkpoint of another architecture?)")
            p.set_data(ms.Tensor(f.get_f32(p.name)))
            n += 1
    return n


def check_model_dir(path: str) -> None:
    """A directory a model loads from (HF or this stack's), or a one-line error saying what is
    wrong: a missing path, or a run / `checkpoints` directory given instead of a step directory
    (the error names the newest step there)."""
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        newest = latest(parent)
        hint = f"; the newest checkpoint in {parent} is {newest}" if newest else ""
        raise CheckpointError(f"{path}: no such checkpoint directory{hint}")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (give the checkpoint's directory)")
    if os.path.isfile(os.path.join(path, "config.json")):
        return
    for root in (os.path.join(path, "checkpoints"), path):
        newest = latest(root)
        if newest:
            what = "a run directory" if root != path else "a directory of checkpoints"
            raise CheckpointError(f"{path}: is {what}, not a checkpoint; give a step directory, e.g. "
                                  f"--checkpoint {newest} (the newest)")
    raise CheckpointError(f"{path}: no config.json (expected a HuggingFace or mindformers_ds model directory)")
