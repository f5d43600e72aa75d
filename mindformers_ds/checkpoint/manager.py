"""Training checkpoints: `OUTPUT/checkpoints/step_00000100/` holding

  model.safetensors      model weights (this stack's layout: stacked experts; router biases included),
                         or adapter.safetensors (LoRA runs: only the adapters; the base is unchanged)
  optimizer.safetensors  AdamW moments and step
  trainer_state.json     step, tokens seen, config digest; written last
  config.json            the model's HF config
  tokenizer.json, tokenizer_config.json, run_config.yaml   the run's tokenizer and resolved
                         config, so `mfds generate` / `mfds eval` need only the checkpoint

A checkpoint is written into a hidden temp directory and renamed into place only when every
file is complete and fsynced, so a run killed mid-save leaves nothing that looks complete;
`latest` ignores such leftovers (and `prune` removes them).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.io import atomic_write_json, fsync_dir
from .safetensors_io import CheckpointError, SafetensorsFile, write_safetensors

STEP_DIR = re.compile(r"^step_(\d{8})$")
STATE_FILE = "trainer_state.json"


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:08d}")


def _arrays(params) -> List[Tuple[str, str, np.ndarray]]:
    # np.array keeps 0-d tensors 0-d (np.ascontiguousarray would make the optimizer step [1])
    return [(p.name, "F32", np.array(p.asnumpy(), np.float32, order="C")) for p in params]


def copy_side_files(directory: str, side_files: Optional[Dict[str, str]]) -> None:
    """Copy `side_files` (name in the checkpoint -> source path) into a checkpoint being written."""
    for name, src in (side_files or {}).items():
        shutil.copyfile(src, os.path.join(directory, name))


def save(root: str, step: int, model_params: Sequence, optimizer_params: Sequence, state: Dict,
         hf_config: Dict, keep_last: int, model_file: str = "model.safetensors",
         side_files: Optional[Dict[str, str]] = None) -> str:
    """`side_files`: the tokenizer and the run config, so the checkpoint is usable on its own."""
    os.makedirs(root, exist_ok=True)
    final = step_dir(root, step)
    tmp = tempfile.mkdtemp(prefix=f".step_{step:08d}.", suffix=".tmp", dir=root)
    try:
        write_safetensors(os.path.join(tmp, model_file), _arrays(model_params), {"layout": "mindspore"})
        _fault_injection(step)
        if optimizer_params:
            write_safetensors(os.path.join(tmp, "optimizer.safetensors"), _arrays(optimizer_params))
        copy_side_files(tmp, side_files)
        atomic_write_json(os.path.join(tmp, "config.json"), hf_config)
        atomic_write_json(os.path.join(tmp, STATE_FILE), dict(state, step=step))
        fsync_dir(tmp)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    prune(root, keep_last, keep=step)
    return final


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
    """Keep the `keep_last` newest checkpoints, and always `keep` (the one just saved): a run
    never deletes its own newest checkpoint, whatever else the directory holds."""
    for s in complete_steps(root)[:-keep_last]:
        if s != keep:
            shutil.rmtree(step_dir(root, s), ignore_errors=True)
    for name in os.listdir(root):
        if name.startswith(".step_") and name.endswith(".tmp"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def read_state(path: str) -> Dict:
    with open(os.path.join(path, STATE_FILE), "r", encoding="utf-8") as f:
        return json.load(f)


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
