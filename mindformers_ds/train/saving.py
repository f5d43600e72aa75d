"""The trainer's checkpoint saves: what a checkpoint holds (weights or LoRA adapters, AdamW's
state, the training state, the HF config, the tokenizer and run config), who writes it (one
process: the single-file format, checkpoint/manager.py; several: the executor's shards,
parallel/shard_save.py), and when (synchronously, or with `checkpoint.async_save` in a
background thread after a host snapshot: checkpoint/async_save.py; under several workers the
explicit executor's ranks agree through marker files, the Ascend executor saves synchronously).

Each save is reported as a metrics record {"type": "save", "step", "blocked_s", "async"}:
`blocked_s` is the time the training loop waited (the whole write when synchronous; the
snapshot and the wait for the previous write when asynchronous).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Dict, Optional

from ..checkpoint import manager as ckpt
from ..checkpoint.async_save import BackgroundWriter
from ..parallel.executors import SaveRequest
from .lora import adapter_parameters

log = logging.getLogger("mindformers_ds.train")


class CheckpointSaver:
    def __init__(self, trainer):
        self.t = trainer
        cfg = trainer.cfg
        several = trainer.env.world > 1
        self.asynchronous = cfg.checkpoint.async_save and (not several or trainer.executor.saves_in_background)
        if cfg.checkpoint.async_save and not self.asynchronous:
            log.warning("%s: checkpoint.async_save=true under parallel.executor=%s with %d workers saves "
                        "synchronously: MindSpore's distributed save reads the device tensors on the training thread",
                        cfg.origin("checkpoint.async_save"), trainer.executor.name, trainer.env.world)
        self.writer = BackgroundWriter()
        self.last: Optional[str] = None

    def side_files(self) -> Dict[str, str]:
        """Files every checkpoint carries so it is usable alone: the tokenizer and the run config."""
        t = self.t
        files = {"tokenizer.json": t.tok.path, "run_config.yaml": os.path.join(t.out, "config.yaml")}
        tok_cfg = os.path.join(os.path.dirname(t.tok.path), "tokenizer_config.json")
        if os.path.isfile(tok_cfg):
            files["tokenizer_config.json"] = tok_cfg
        return {name: src for name, src in files.items() if os.path.isfile(src)}

    def save(self, step: int, tokens_seen: int) -> Dict:
        """Save the checkpoint of `step`; returns its metrics record."""
        t0 = time.perf_counter()
        t = self.t
        state = {"tokens_seen": tokens_seen, "config": t.cfg.source}
        request = SaveRequest(t.ckpt_root, step, list(t.model.get_parameters()), t.optimizer.state_parameters(),
                              state, t.model.config.to_hf_dict(), t.cfg.checkpoint.keep_last, self.side_files(),
                              t.opt_table)
        background = self.writer if self.asynchronous else None
        path = t.executor.save_shards(request, t.env, t.table, background, self._saved)   # None: one process
        if path is None and t.env.is_main:
            self._save_single(step, state)
        return {"type": "save", "step": step, "blocked_s": round(time.perf_counter() - t0, 4),
                "async": self.asynchronous}

    def _saved(self, path: str) -> None:
        """A checkpoint of several workers written (this rank's part; on rank 0 the whole)."""
        self.last = path
        what = "saved checkpoint" if self.t.env.is_main else "wrote this rank's part of checkpoint"
        how = " (in the background)" if self.asynchronous else ""
        log.info("%s %s (rank %d of %d)%s", what, path, self.t.env.rank, self.t.env.world, how)

    def _save_single(self, step: int, state: Dict) -> None:
        t = self.t
        if t.lora:
            state["lora"] = {"base": t.cfg.model.pretrained, "seed": t.cfg.train.seed,
                             **dataclasses.asdict(t.cfg.lora)}
            params, filename = adapter_parameters(t.model), "adapter.safetensors"
        else:
            params, filename = list(t.model.get_parameters()), "model.safetensors"
        args = (t.ckpt_root, step, ckpt.snapshot(params), ckpt.snapshot(t.optimizer.state_parameters()), state,
                t.model.config.to_hf_dict(), t.cfg.checkpoint.keep_last, filename, self.side_files())
        if not self.asynchronous:
            self.last = ckpt.write(*args)
            log.info("saved checkpoint %s", self.last)
            return

        def write_in_background() -> str:
            path = ckpt.write(*args)
            self.last = path
            log.info("saved checkpoint %s (written in the background)", path)
            return path
        self.writer.submit(write_in_background)

    def finish(self) -> float:
        """Wait for the last background write (raising its error); the seconds waited."""
        return self.writer.wait()
