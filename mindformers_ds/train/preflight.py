"""Checks a training run passes before it creates anything on disk or builds a tensor.

* **The output directory.** A run never mixes with another one: with `train.resume: never`
  a `train.output_dir` that already holds a run (anything but the launcher's `logs/`) is
  refused, naming `train.resume=auto` (continue it) and a new `train.output_dir` as the two
  ways on. This is the HF Trainer's rule (`overwrite_output_dir` off) without its switch to
  delete: removing a run is left to the user. Resuming from an explicit checkpoint while the
  directory holds newer ones is refused too (the newer ones belong to an abandoned future, and
  `keep_last` would prune the resumed run's own checkpoints first).
* **Memory.** On CPU the run's peak is estimated with the planner (the constants of
  `parallel/cpu_single.yaml`) and refused when it exceeds this machine's memory; a
  191 GiB model would otherwise reach numpy's allocator. `train.check_memory=false` goes on.
* **Tokenizer vs vocabulary.** The tokenizer is loaded and compared with `model.vocab_size`.
Every error is a ConfigError naming the file (or `--set`) that set the field.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Tuple

from ..config import RunConfig
from ..errors import ConfigError
from ..utils.device import device_target

GIB = 1024 ** 3
# not a run: `mfds launch` writes <output_dir>/logs before its workers start, and `mfds train`
# opens mindspore.log (utils/native_logs.py) before the trainer runs these checks again
LAUNCHER_ENTRIES = ("logs", "mindspore.log")
# parallel/cpu_single.yaml: what MindSpore's CPU executor keeps beyond the ideal count (measured;
# tests/test_plan.py keeps the two equal)
CPU_RUNTIME_GB, CPU_ACTIVATION_FACTOR = 0.74, 6.8
CPU_RECOMPUTE_ACTIVATION_FACTOR = 1.4   # parallel/cpu_single.yaml says how each was measured
# where a family's graph keeps more (cpu_single.yaml's `families`, measured the same way)
CPU_FAMILY_CONSTANTS = {"deepseek_v4": {"runtime_overhead_gb": 0.61, "layer_graph_gb": 0.167,
                                        "activation_factor": 12.7}}


def run_entries(output_dir: str) -> List[str]:
    """What an output directory holds that belongs to a run (sorted)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(e for e in os.listdir(output_dir) if e not in LAUNCHER_ENTRIES)


def _describe(output_dir: str, entries: List[str]) -> str:
    from ..checkpoint.manager import complete_steps
    steps = complete_steps(os.path.join(output_dir, "checkpoints"))
    if steps:
        shown = ", ".join(str(s) for s in steps[-3:])
        return f"checkpoints of step{'s' if len(steps) > 1 else ''} {'..., ' if len(steps) > 3 else ''}{shown}"
    return ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")


def check_output_dir(cfg: RunConfig) -> None:
    from ..checkpoint.manager import complete_steps, read_state
    t = cfg.train
    entries = run_entries(t.output_dir)
    if not entries or t.resume == "auto":
        return
    where = cfg.origin("train.output_dir")
    if t.resume == "never":
        raise ConfigError(where, "train.output_dir",
                          f"train.output_dir={t.output_dir!r} already holds a run ({_describe(t.output_dir, entries)}); "
                          f"continue it with --set train.resume=auto, or give a new train.output_dir")
    try:
        resumed = int(read_state(t.resume)["step"])
    except (OSError, ValueError, KeyError):
        return  # the resume path itself is checked when it is loaded
    newer = [s for s in complete_steps(os.path.join(t.output_dir, "checkpoints")) if s > resumed]
    if newer:
        raise ConfigError(cfg.origin("train.resume"), "train.resume",
                          f"train.resume={t.resume!r} is step {resumed}, but train.output_dir={t.output_dir!r} holds "
                          f"newer checkpoints (step {', '.join(map(str, newer))}) the run would mix with; "
                          f"give a new train.output_dir")


def machine_memory_bytes() -> Optional[int]:
    """Physical memory, or the cgroup limit when that is smaller (a container)."""
    total = None
    try:
        with open("/proc/meminfo", "r") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        with open("/sys/fs/cgroup/memory.max", "r") as f:
            raw = f.read().strip()
        if raw.isdigit():
            total = min(total or int(raw), int(raw))
    except OSError:
        pass
    return total


def estimated_stage_peaks(cfg: RunConfig) -> List[float]:
    """The planner's per-process peak of this run on the CPU executor, bytes, per pipeline stage
    (every rank of a stage holds the same shapes)."""
    from ..plan.memory import estimate_memory
    model = cfg.model.model_config()
    family = CPU_FAMILY_CONSTANTS.get(model.model_type, {})
    est = estimate_memory(model, cfg.parallel, cfg.train.micro_batch_size, cfg.data.seq_length,
                          family.get("runtime_overhead_gb", CPU_RUNTIME_GB), cfg.lora,
                          family.get("activation_factor", CPU_ACTIVATION_FACTOR), CPU_RECOMPUTE_ACTIVATION_FACTOR,
                          family.get("layer_graph_gb", 0.0))
    return [m.total for m in est]


def estimated_peak_bytes(cfg: RunConfig) -> float:
    """The planner's per-process peak of this run on the CPU executor (worst pipeline stage)."""
    return max(estimated_stage_peaks(cfg))


def check_memory(cfg: RunConfig, processes: int = 1, device: str = "CPU") -> None:
    """Refuse a CPU run whose estimated peak (times the processes on this host) cannot fit."""
    if not cfg.train.check_memory or device != "CPU":
        return
    have = machine_memory_bytes()
    if not have:
        return
    need = estimated_peak_bytes(cfg) * processes
    if need <= have:
        return
    by_set = sorted(k for k, v in cfg.origins.items() if v == "--set" and (
        k.startswith(("model.", "parallel.", "lora.")) or k in ("data.seq_length", "train.micro_batch_size")))
    where = cfg.source + (f" with --set {', '.join(by_set)}" if by_set else "")
    per = f" ({processes} processes)" if processes > 1 else ""
    raise ConfigError(where, "train.check_memory",
                      f"the run needs an estimated {need / GIB:,.1f} GiB{per} but this machine has "
                      f"{have / GIB:.1f} GiB: make the model or the batch smaller, or "
                      f"--set train.check_memory=false to run anyway")


def load_tokenizer(cfg: RunConfig):
    """The run's tokenizer, checked against `model.vocab_size`."""
    from ..data.tokenizer import Tokenizer
    d = cfg.data
    if not d.tokenizer:
        raise ConfigError(cfg.origin("data"), "data.tokenizer", "data.tokenizer is required (a tokenizer.json)")
    if not d.train_file:
        raise ConfigError(cfg.origin("data"), "data.train_file", "data.train_file is required")
    tok = Tokenizer(d.tokenizer, d.chat_template)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(cfg.origin("model.vocab_size"), "model.vocab_size",
                          f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{tok.vocab_size} tokens ({d.tokenizer})")
    return tok


def resolve_missing_mtp(cfg: RunConfig) -> Tuple[RunConfig, Optional[str]]:
    """A `model.pretrained` V2/V3 checkpoint without MTP weights (transformers saves none): the run
    trains without MTP modules (`model.missing_mtp: drop`) or with fresh ones (`init`). Returns
    the config to train and the one line saying which, or None when nothing is missing."""
    m = cfg.model
    if not m.pretrained or m.mtp_depth == 0 or not os.path.isdir(m.pretrained):
        return cfg, None
    from ..checkpoint.mapping import has_mtp_weights
    from ..checkpoint.reader import CheckpointReader
    reader = CheckpointReader(m.pretrained)
    try:
        present = has_mtp_weights(reader.names(), m.num_hidden_layers)
    finally:
        reader.close()
    if present:
        return cfg, None
    head = (f"{m.pretrained} has no MTP weights (its config says num_nextn_predict_layers="
            f"{m.num_nextn_predict_layers})")
    if m.missing_mtp == "init":
        return cfg, f"{head}: the MTP modules start from fresh weights (model.missing_mtp=init)"
    model = dataclasses.replace(m, num_nextn_predict_layers=0)
    return (dataclasses.replace(cfg, model=model),
            f"{head}: training without MTP modules (model.missing_mtp=drop; set init to train fresh ones)")


def preflight(cfg: RunConfig, distributed: bool = False):
    """Every check, in the order a user meets them; returns (the config to run, the tokenizer,
    notes to log once logging is set up). Under `mfds launch` the launcher checks the memory of
    all its workers at once, so workers skip it."""
    check_output_dir(cfg)
    from ..parallel.config import launched_workers
    from ..parallel.executors import executor_for
    executor = executor_for(cfg.parallel)
    if distributed or executor.name == "ascend":
        executor.check(cfg, launched_workers())
    if not distributed:
        check_memory(cfg, 1, device_target())
    tok = load_tokenizer(cfg)
    cfg, note = resolve_missing_mtp(cfg)
    return cfg, tok, [note] if note else []
