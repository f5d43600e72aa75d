"""Checkpoints prove their own integrity (checkpoint/integrity.py): each carries a manifest of
its files' sizes and BLAKE2b digests; a resume verifies it, `train.resume=auto` falls back to the
newest checkpoint that verifies, naming the bad file, an explicit `train.resume=<path>` refuses in
one line, and pruning never lets a newer, bad checkpoint crowd out the good ones. The damage is
real: bytes flipped and files truncated on disk after the save."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from mindformers_ds.checkpoint import integrity, manager
from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
from mindformers_ds.errors import CheckpointError
from mindformers_ds.utils.io import normal_mode
from test_resume import DEMO, SETS


def _params(values):
    import mindspore as ms
    return [ms.Parameter(ms.Tensor(np.full((4, 3), v, np.float32)), name="w") for v in values]


def _save(root, step, value=1.0, keep_last=3):
    return manager.save(root, step, _params([value]), [], {"tokens_seen": step}, {"model_type": "x"}, keep_last)


def flip_byte(path, offset=None):
    with open(path, "r+b") as f:
        size = os.path.getsize(path)
        f.seek(offset if offset is not None else size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x5A]))


def truncate(path, keep):
    with open(path, "r+b") as f:
        f.truncate(keep)


def test_the_manifest_names_each_kind_of_damage(tmp_path):
    root = str(tmp_path / "checkpoints")
    ck = _save(root, 2)
    doc = json.load(open(os.path.join(ck, integrity.MANIFEST)))
    assert doc["algorithm"] == "blake2b-128"
    assert sorted(doc["files"]) == ["config.json", "model.safetensors", "trainer_state.json"]
    assert integrity.verify(ck) is None
    assert os.stat(ck).st_mode & 0o777 == normal_mode(0o777)   # not mkdtemp's 0700
    model = os.path.join(ck, "model.safetensors")
    pristine = open(model, "rb").read()
    flip_byte(model)
    assert integrity.verify(ck) == f"{model}: its bytes changed after it was written (blake2b-128 differs from the manifest)"
    open(model, "wb").write(pristine)
    truncate(model, len(pristine) - 5)
    assert integrity.verify(ck) == f"{model}: {len(pristine) - 5} bytes, but {len(pristine)} were written (truncated or appended to)"
    os.remove(model)
    assert integrity.verify(ck) == f"{model}: missing (the checkpoint's manifest lists it)"


def test_resume_falls_back_past_a_damaged_checkpoint_and_an_explicit_one_is_refused(tmp_path, caplog):
    import logging
    root = str(tmp_path / "checkpoints")
    _save(root, 2, 1.0)
    newest = _save(root, 4, 2.0)
    state = os.path.join(newest, manager.STATE_FILE)
    flip_byte(state, 2)
    with caplog.at_level(logging.WARNING, logger="mindformers_ds.checkpoint"):
        assert manager.resume_checkpoint(root, "auto") == manager.step_dir(root, 2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (f"checkpoint {newest} fails verification: {state}: its bytes changed after it was written "
                        f"(blake2b-128 differs from the manifest); trying the one before")
    assert lines[1].startswith(f"resuming from {manager.step_dir(root, 2)}, the newest checkpoint that verifies")
    with pytest.raises(CheckpointError) as e:
        manager.resume_checkpoint(root, newest)
    assert str(e.value).startswith(f"{state}: its bytes changed") and "train.resume=auto" in str(e.value)
    # a trainer_state.json that is not JSON (in a checkpoint without a manifest) is named in one line
    os.remove(os.path.join(newest, integrity.MANIFEST))
    open(state, "w").write("{not json")
    with pytest.raises(CheckpointError, match=rf"^{state}: not valid JSON"):
        manager.read_state(newest)


def test_a_background_write_that_fails_raises_its_error_at_the_next_wait(tmp_path):
    from mindformers_ds.checkpoint.async_save import BackgroundWriter
    writer = BackgroundWriter()
    root = str(tmp_path / "checkpoints")
    arrays = manager.snapshot(_params([3.0]))
    writer.submit(lambda: manager.write(root, 5, arrays, [], {}, {}, 2))
    assert writer.wait() >= 0 and integrity.verify(manager.step_dir(root, 5)) is None
    gone = str(tmp_path / "tokenizer.json")   # a side file that vanished before the write
    writer.submit(lambda: manager.write(root, 6, arrays, [], {}, {}, 2, side_files={"tokenizer.json": gone}))
    with pytest.raises(CheckpointError) as e:
        writer.wait()
    assert str(e.value) == (f"{manager.step_dir(root, 6)}/tokenizer.json: cannot be written (No such file or "
                            "directory); step 6 is not saved and the checkpoints before it are untouched")
    assert manager.complete_steps(root) == [5] and not [n for n in os.listdir(root) if n.startswith(".")]


def test_pruning_never_lets_newer_bad_checkpoints_crowd_out_the_good_ones(tmp_path):
    """The fault probe's data loss: a damaged newest checkpoint was loaded and the next save pruned
    the last good one. After a fall back to step 2 (step 4 is bad), saving step 3 with keep_last=2
    keeps 2 and 3; the bad step 4 is not counted (the run overwrites it when it gets there)."""
    root = str(tmp_path / "checkpoints")
    _save(root, 1, keep_last=2)
    _save(root, 2, keep_last=2)
    flip_byte(os.path.join(_save(root, 4, keep_last=2), "model.safetensors"))
    assert manager.complete_steps(root) == [2, 4]
    _save(root, 3, keep_last=2)
    assert manager.complete_steps(root) == [2, 3, 4]
    assert manager.resume_checkpoint(root, "auto") == manager.step_dir(root, 3)


def _train(out, *sets, file_limit=None):
    """`mfds train` of the tiny demo; `file_limit`: the largest file it may write (`ulimit -f`)."""
    import resource
    args = [sys.executable, "-m", "mindformers_ds", "train", "--config", DEMO, "--set", f"train.output_dir={out}"]
    for s in [*SETS, "train.max_steps=6", *sets]:
        args += ["--set", s]
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))) if file_limit else None
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, preexec_fn=limit)


def _weights(ck):
    with SafetensorsFile(os.path.join(ck, "model.safetensors")) as f:
        return {n: f.get_f32(n) for n in f.keys()}


@pytest.mark.timeout(900)
def test_a_run_resumed_past_a_damaged_checkpoint_equals_the_uninterrupted_run(tmp_path):
    out = str(tmp_path / "run")
    assert _train(out).returncode == 0                     # steps 1-6, checkpoints at 3 and 6
    ckroot = os.path.join(out, "checkpoints")
    six = manager.step_dir(ckroot, 6)
    reference = _weights(six)
    shutil.copytree(six, str(tmp_path / "six"))
    model = os.path.join(six, "model.safetensors")
    flip_byte(model)                                       # one byte of the weights, after the save
    r = _train(out)                                        # resume=auto: falls back to step 3, redoes 4-6
    assert r.returncode == 0, r.stderr[-3000:]
    log = open(os.path.join(out, "train.log")).read()
    assert f"checkpoint {six} fails verification: {model}: its bytes changed after it was written" in log
    assert f"resumed from {manager.step_dir(ckroot, 3)} at step 3" in log
    again = _weights(six)
    for name in reference:
        np.testing.assert_allclose(again[name], reference[name], rtol=1e-6, atol=1e-7, err_msg=name)
    opt = os.path.join(six, "optimizer.safetensors")
    truncate(opt, os.path.getsize(opt) // 2)               # an explicit resume of a truncated checkpoint
    r = _train(out, f"train.resume={six}", "train.max_steps=7")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {opt}: ")
    assert "were written (truncated or appended to)" in r.stderr
    # a save that cannot be written (`ulimit -f` below the optimizer file's size): resumed from step
    # 3 (step 6 is bad), the save of step 6 fails in one line naming the file; step 3 still verifies
    model_size, opt_size = (os.path.getsize(os.path.join(str(tmp_path / "six"), f))
                            for f in ("model.safetensors", "optimizer.safetensors"))
    assert model_size < opt_size
    r = _train(out, file_limit=(model_size + opt_size) // 2)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (f"error: {opt}: cannot be written (File too large); step 6 is not "
                                                 "saved and the checkpoints before it are untouched")
    three = manager.step_dir(ckroot, 3)
    assert integrity.verify(three) is None and manager.resume_checkpoint(ckroot, "auto") == three
    assert not [n for n in os.listdir(ckroot) if n.startswith(".")]   # no partial checkpoint left
