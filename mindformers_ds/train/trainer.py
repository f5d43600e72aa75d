"""The training loop: config -> data -> model -> steps -> logs, metrics, checkpoints.

Everything a run produces lands in `train.output_dir`: `config.yaml` (resolved), `train.log`,
`metrics.jsonl` (one record per logged step and per evaluation), `checkpoints/step_N/` and
`summary.json`. `train.resume: auto` continues from the newest complete checkpoint with the
same data order (a function of the step), LR (a function of the step), optimizer moments and
router biases. Nothing is created before the run's checks pass (train/preflight.py): a
directory that already holds a run is refused unless it is resumed. Every checkpoint carries
the tokenizer and the run config, so generation and evaluation need only the checkpoint.
Ctrl-C stops with one line naming the step, the newest checkpoint and how to resume.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import mindspore as ms
from tqdm import tqdm

from .. import config as config_mod
from ..checkpoint import manager as ckpt
from ..config import RunConfig
from ..errors import ConfigError
from ..errors import TrainingInterrupted
from ..generation import Generator
from ..models.deepseek import results as R
from ..observe.hang_watch import HangWatch, Progress, graph_collectives
from ..observe.stragglers import StragglerDetector
from ..observe.peak import peak_tflops
from ..observe.profiling import ProfileWindow
from ..observe.step_metrics import StepMetrics, expert_stats, indexer_stats, steady_state
from ..utils.io import atomic_write_json
from ..utils.logging import MetricsWriter, setup_logging
from .evaluation import EvalSums, eval_loss, exact_match
from .interrupt import interruptible
from .lora import adapter_parameters, apply_lora
from .preflight import preflight
from .run_data import build_run_data
from .observers import collective_inventory, profile_window, straggler_detector
from .saving import CheckpointSaver
from .schedule import learning_rate
from ..parallel.executors import executor_for
from .indexer_training import (apply_indexer_stage, fresh_optimizer_note, optimizer_state_matches,
                               saved_tensor_names)
from .setup import DistEnv, apply_freeze
from .step import (AccumulateGrads, ApplyStep, GradStep, LossCell, TrainStep, router_bias_parameters,
                   router_bias_rows)

log = logging.getLogger("mindformers_ds.train")


class TrainingError(RuntimeError):
    pass


class Trainer:
    def __init__(self, cfg: RunConfig, env: Optional[DistEnv] = None, executor=None):
        """`executor`: parallel/executors.py's choice for `parallel.executor` (default: resolved here)."""
        self.cfg = cfg
        self.env = env or DistEnv()
        self.executor = executor or executor_for(cfg.parallel)
        self.out = cfg.train.output_dir
        self.ckpt_root = os.path.join(self.out, "checkpoints")
        self.progress = Progress()   # the phase the loop is in, for the hang watchdog and stragglers
        self.eval_compiled = False
        self.graph_collectives = graph_collectives(cfg.parallel)

    # ---- setup ---------------------------------------------------------------------------
    def _setup_model(self) -> None:
        cfg = self.cfg
        log.info("executor: %s (parallel.executor=%s; %d worker%s)", self.executor.name, cfg.parallel.executor,
                 self.env.world, "s" if self.env.world > 1 else "")
        self.table = self.executor.layout(cfg, self.env)
        self.model = self.executor.build(cfg, self.env, self.table)
        apply_indexer_stage(self.model, cfg.train.indexer_stage, cfg.train.indexer_loss_weight)
        frozen = apply_freeze(self.model, cfg.train.freeze)
        self.lora = cfg.lora.enabled
        if self.lora:
            apply_lora(self.model, cfg.lora, cfg.train.seed)
        trainable = self.model.trainable_params()
        if not trainable:
            raise ConfigError(cfg.source, "train.freeze", "every parameter is frozen; nothing to train")
        self.n_params = self.model.num_parameters()
        self.n_trainable = int(sum(int(np.prod(p.shape)) for p in trainable))
        log.info("model %s: %d parameters, %d trainable (%.2f%%; %d frozen tensors%s)", cfg.model.model_type,
                 self.n_params, self.n_trainable, 100.0 * self.n_trainable / self.n_params, frozen,
                 ", LoRA adapters only" if self.lora else "")
        self.optimizer = self.executor.optimizer(trainable, self.table, cfg, self.env)  # ZeRO shards it
        trainable = list(self.optimizer.params)   # ZeRO orders them by group; the gradients follow
        self.opt_table = self.executor.optimizer_table(self.table, self.optimizer)
        self.opt_state_mb = sum(int(np.prod(p.shape)) * 4 for p in self.optimizer.state_parameters()) / 2 ** 20
        log.info("optimizer state on rank %d: %.2f MB (%s)", self.env.rank, self.opt_state_mb,
                 f"ZeRO-1: {len(self.optimizer.zero_axes)} tensors sharded" if self.optimizer.zero_axes else "whole")
        grad_step = GradStep(LossCell(self.model), trainable)
        # LoRA and the indexers' dense warm-up keep the whole base model fixed, router correction
        # biases included
        fixed = self.lora or cfg.train.indexer_stage == "dense_warmup"
        biases = [] if fixed else router_bias_parameters(self.model)
        reducer, global_norm, self.sum_parts = self.executor.collectives(trainable, self.table, self.env, cfg,
                                                                             self.optimizer)
        self.pipeline = self.executor.pipeline(self.model, trainable, cfg, self.env)  # None: no pipeline stages
        apply_step = ApplyStep(self.optimizer, biases, cfg.model.bias_update_rate, cfg.train.max_grad_norm,
                               reducer, global_norm, [] if fixed else router_bias_rows(self.model),
                               fused_ops=cfg.model.fused_ops)
        self.grad_step, self.apply_step = grad_step, apply_step
        self.fused_step = self.executor.wrap(TrainStep(grad_step, apply_step), cfg)
        self.accumulate = AccumulateGrads()
        self.eval_sums = EvalSums(self.model)

    def _resume(self) -> int:
        self.resumed_tokens = 0
        path = ckpt.resume_checkpoint(self.ckpt_root, self.cfg.train.resume)   # verified first
        if path is None:
            return 0
        if self.lora:
            ckpt.load_params(path, "adapter.safetensors", adapter_parameters(self.model))
            ckpt.load_params(path, "optimizer.safetensors", self.optimizer.state_parameters())
        else:
            # any layout: a single-process checkpoint, or the shards of another parallel layout
            self.executor.load(path, "model.safetensors", list(self.model.get_parameters()), self.table, self.env)
            state, saved = self.optimizer.state_parameters(), saved_tensor_names(path, "optimizer.safetensors")
            if optimizer_state_matches(saved, state):
                self.executor.load(path, "optimizer.safetensors", state, self.opt_table, self.env)
            else:   # another indexer stage (or freeze list) trained other parameters
                log.warning(fresh_optimizer_note(path, saved, state))
        saved = ckpt.read_state(path)
        step, self.resumed_tokens = int(saved["step"]), int(saved.get("tokens_seen", 0))   # part of the state
        log.info("resumed from %s at step %d", path, step)
        return step

    # ---- pieces of a step ----------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        s, t = self.cfg.lr_schedule, self.cfg.train
        return learning_rate(step, self.cfg.optimizer.lr, s.type, s.warmup_steps, s.decay_steps or t.max_steps,
                             s.min_lr_ratio)

    def _scales(self, batch, n_micro: int) -> List[ms.Tensor]:
        """1/tokens of the global batch (main and MTP heads) and 1/(micro-batches of all dp ranks)."""
        n_micro = n_micro * self.env.dp
        mtp = batch.mtp_tokens[0] if batch.mtp_tokens else 1
        return [ms.Tensor(1.0 / max(batch.lm_tokens, 1), ms.float32),
                ms.Tensor(1.0 / max(mtp, 1), ms.float32),
                ms.Tensor(1.0 / n_micro, ms.float32)]

    def prepare_step(self, step: int):
        """The data half of a step: the batch and its host tensors."""
        batch = self.loader.batch(step)
        micro = self.executor.micro_batches(batch.micro_batches, self.cfg)
        scales = self._scales(batch, len(micro))
        lr = ms.Tensor(self._lr(step), ms.float32)
        tensors = [[ms.Tensor(mb[k]) for k in ("input_ids", "labels", "position_ids", "segment_ids")]
                   for mb in micro]
        return batch, scales, lr, tensors

    def train_step(self, step: int):
        return self.compute_step(*self.prepare_step(step))

    def compute_step(self, batch, scales, lr, tensors):
        """Forward, backward and the update, up to the host sync on the loss sums. The parts come
        back by name (models/deepseek/results.py), as numpy, summed over micro-batches and ranks."""
        if self.pipeline is not None:  # parts come back summed over the stages
            grads, parts = self.pipeline.run(tensors, scales)
            norm, finite = self.apply_step(grads, ms.Tensor(parts[R.LOAD].astype(np.float32)),
                                           ms.Tensor(parts[R.LOSS], ms.float32), lr)
        elif len(tensors) == 1:
            outs, norm, finite = self.fused_step(*tensors[0], *scales, lr)
            parts = {k: v.asnumpy() for k, v in R.named(outs).items()}
        else:
            grads, parts = None, None
            for mb in tensors:
                outs, g = self.grad_step(*mb, *scales)
                grads = g if grads is None else self.accumulate(grads, g)
                cur = {k: v.asnumpy() for k, v in R.named(outs).items()}
                parts = cur if parts is None else {k: parts[k] + cur[k] for k in cur}
            norm, finite = self.apply_step(grads, ms.Tensor(parts[R.LOAD]), ms.Tensor(parts[R.LOSS], ms.float32), lr)
        if self.sum_parts is not None:  # losses of the whole global batch, on every rank
            self.progress.enter("loss sums", self.progress.step, "all_reduce(dp) of the loss sums",
                                timed=self.progress.timed)   # its first run compiles too
            summed = self.sum_parts(ms.Tensor(np.array([parts[k] for k in R.LOSS_SUMS], np.float32))).asnumpy()
            parts.update(zip(R.LOSS_SUMS, summed))
            parts[R.LOAD] = self.sum_parts(ms.Tensor(parts[R.LOAD])).asnumpy()
            for k in R.SUMMED_TENSORS:
                if parts[k].size:
                    parts[k] = self.sum_parts(ms.Tensor(parts[k].astype(np.float32))).asnumpy()
        return batch, parts, float(norm.asnumpy()), bool(finite.asnumpy()), float(lr.asnumpy())

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> Dict:
        distributed = self.env.world > 1
        # nothing is created before every check passed (and, in a parallel job, on every rank)
        self.cfg, self.tok, notes = preflight(self.cfg, distributed)
        if distributed:
            from ..parallel.explicit import barrier
            barrier()
        cfg = self.cfg
        os.makedirs(self.out, exist_ok=True)
        log_name = "train.log" if self.env.world == 1 else f"train_rank{self.env.rank}.log"
        setup_logging(os.path.join(self.out, log_name), cfg.logging.level, console=self.env.is_main)
        for note in notes:
            log.warning(note)
        if self.env.is_main:
            config_mod.dump_yaml(cfg, os.path.join(self.out, "config.yaml"))
        self.data = build_run_data(cfg, self.tok, self.env.dp, self.env.dp_rank)
        self.loader, self.eval_rows = self.data.loader, self.data.eval_rows
        self._setup_model()
        self.saver = CheckpointSaver(self)
        start = self._resume()
        metrics = MetricsWriter(os.path.join(self.out, "metrics.jsonl" if self.env.is_main else
                                             f"metrics_rank{self.env.rank}.jsonl"),
                                keep_until_step=start if start > 0 else None)
        summary: Dict = {"start_step": start, "n_params": self.n_params, "n_trainable": self.n_trainable,
                         "optimizer_state_mb": round(self.opt_state_mb, 3),
                         **self.data.stats}
        try:
            if cfg.train.exact_match_samples > 0 and start == 0:  # every rank decodes in lockstep (collectives)
                summary["exact_match_before"] = self._exact_match("exact match before")["exact_match"]
                log.info("held-out exact match before training: %.3f", summary["exact_match_before"])
                metrics.write({"type": "eval", "step": 0, "exact_match": summary["exact_match_before"]})
            losses = self._loop(start, metrics, summary)
            self.saver.finish()   # the last background write, if any (its error is raised here)
            summary["final_loss"] = losses[-1] if losses else None
            summary["first_loss"] = losses[0] if losses else None
            self._finish(summary, metrics)
        finally:
            metrics.close()
        return summary

    def _bar(self, initial: int):
        # a log file gets a line per 30 s; the console a live bar
        return tqdm(total=self.cfg.train.max_steps, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                    mininterval=0.5 if sys.stderr.isatty() else 30.0,
                    disable=not (self.cfg.logging.progress_bar and self.env.is_main))

    def _loop(self, start: int, metrics: MetricsWriter, summary: Dict) -> List[float]:
        t = self.cfg.train
        if start >= t.max_steps:
            log.info("the checkpoint is at step %d, train.max_steps=%d: nothing left to train", start, t.max_steps)
            return []
        state = {"losses": [], "steady": [], "tokens_seen": self.resumed_tokens, "done": start, "bar": None,
                 "inventory": collective_inventory(self)}
        timer = StepMetrics(self.model.config, self.cfg.data.seq_length,
                            peak_tflops(self.cfg.logging.peak_tflops, ms.get_context("device_target")), self.env.world)
        profile = profile_window(self)
        stragglers = straggler_detector(self)
        watch = HangWatch(self.progress, self.env.rank, self.out, t.hang_timeout_s, os.environ.get("MFDS_STATUS_DIR"),
                          stalls=stragglers is not None)
        try:
            with interruptible(), watch:
                self._steps(start, metrics, timer, profile, state, stragglers)
        except KeyboardInterrupt:
            self.saver.finish()   # a background write completes: the message names it
            raise TrainingInterrupted(self._interrupted(state["done"])) from None
        finally:
            if state["bar"] is not None:
                state["bar"].close()
            profile.close()
        summary.update(steady_state(state["steady"]))
        return state["losses"]

    def _steps(self, start: int, metrics: MetricsWriter, timer: StepMetrics, profile: ProfileWindow,
               state: Dict, stragglers: Optional[StragglerDetector]) -> None:
        cfg, t = self.cfg, self.cfg.train
        biases = router_bias_parameters(self.model)
        last_end, paused = time.perf_counter(), 0.0
        for step in range(start, t.max_steps):
            if step == start:
                log.info("compiling the training step (first step)...")
            profile.before_step(step)
            t0 = time.perf_counter()
            self.progress.enter("data", step + 1)
            prepared = self.prepare_step(step)
            t1 = time.perf_counter()
            self.progress.enter("step graph", step + 1, self.graph_collectives, timed=step > start)   # the first compiles
            batch, parts, norm, finite, lr = self.compute_step(*prepared)
            t2 = time.perf_counter()
            self.progress.enter("logging", step + 1)
            phases, stalled = self.progress.take()   # since the last take: the previous step's tail, then this step
            if step == start and state["inventory"] is not None:   # every graph of a step is compiled now
                metrics.write(state["inventory"].stop(step + 1))
            dt, last_end, paused = t2 - last_end - paused, t2, 0.0
            if stragglers is not None and step > start:   # every rank at the same steps (a collective)
                window = stragglers.add_step(step + 1, sum(phases.values()), phases, stalled)
                if window is not None:
                    metrics.write(window)
            top_ops = profile.after_step(step)
            if top_ops is not None:
                self.profile_top_ops = top_ops[:10]
                for rec in profile.records:   # this rank's kernel split; on rank 0 the ranks compared
                    metrics.write(rec)
                paused += time.perf_counter() - t2  # the profiler's analysis is not step time
            lm_loss = float(parts[R.LM_SUM]) / max(float(parts[R.LM_COUNT]), 1.0)
            mtp_loss = float(parts[R.MTP_SUM]) / max(float(parts[R.MTP_COUNT]), 1.0) if self.model.mtp_depth else 0.0
            n_tok = int(self.loader.global_rows * cfg.data.seq_length)
            state["tokens_seen"] += n_tok
            state["done"] = step + 1
            if step == start:
                log.info("first step done in %.1f s (graph compilation included)", t2 - t0)
                state["bar"] = self._bar(step + 1)  # created after the compile: its rate and ETA are the steady ones
            if not (finite and math.isfinite(lm_loss)):
                msg = (f"step {step + 1}: non-finite loss {lm_loss} / grad norm {norm}; batch rows "
                       f"{batch.global_indices.tolist()}; the update was skipped")
                log.error(msg)
                metrics.write({"type": "nan", "step": step + 1, "rows": batch.global_indices.tolist()})
                if t.nan_policy == "stop":
                    raise TrainingError(msg)
                state["bar"].update(int(step > start))
                continue
            state["losses"].append(lm_loss)
            rec = {"step": step + 1, "loss": lm_loss, "mtp_loss": mtp_loss, "aux_loss": float(parts[R.AUX]),
                   "lr": lr, "grad_norm": norm, "tokens": n_tok, "epoch": self.loader.epoch_of(step + 1),
                   **timer.timing(n_tok, t1 - t0, t2 - t1, dt),
                   "phase_s": {k: round(v, 5) for k, v in phases.items() if k != "start"},
                   "stalled_s": round(sum(stalled.values()), 4)}   # not running (the watchdog's late ticks)
            if self.pipeline is not None:  # this stage's share of the schedule spent waiting (exchanges included)
                rec["pipeline_idle"] = round(self.pipeline.stats["idle_fraction"], 4)
            if step == start:
                rec["includes_compile"] = True  # the first step's compute time holds the graph compilation
            if (step + 1) % cfg.logging.log_every == 0 or step + 1 == t.max_steps:
                values = [b.asnumpy() for b in biases]
                if self.pipeline is not None:   # every stage's biases (a collective: every rank logs here)
                    values = self.pipeline.whole_model_biases(values, router_bias_rows(self.model))
                rec.update(expert_stats(parts[R.LOAD], values))
                rec.update(indexer_stats(parts[R.INDEX_STATS]))
                metrics.write(rec)
                log.info("step %d loss %.4f lr %.2e grad_norm %.3f %.0f tok/s mfu %.1f%%", step + 1, lm_loss, lr,
                         norm, rec["tokens_per_sec"], 100 * rec["mfu"])
            if step > start:
                state["steady"].append(rec)
            state["bar"].set_postfix(loss=f"{lm_loss:.4f}", lr=f"{lr:.1e}", tok_s=f"{n_tok / dt:.0f}", refresh=False)
            state["bar"].update(int(step > start))
            paused = self._between_steps(step + 1, metrics, state["tokens_seen"], paused)

    def _between_steps(self, done_steps: int, metrics: MetricsWriter, tokens_seen: int, paused: float) -> float:
        """Evaluation and checkpoint after a step; returns `paused` plus their time (not step time)."""
        t, ck = self.cfg.train, self.cfg.checkpoint
        done = done_steps == t.max_steps
        p0 = time.perf_counter()
        if t.eval_every and done_steps % t.eval_every == 0 and not done and self.eval_rows is not None:
            self.progress.enter("eval", done_steps, timed=self.eval_compiled)   # its graph compiles once
            self.eval_compiled = True
            metrics.write({"type": "eval", "step": done_steps, **self._eval_loss()})
        if (ck.save_every and done_steps % ck.save_every == 0) or (done and ck.save_final):
            barriers = "the checkpoint's barriers (all_reduce(world))" if self.env.world > 1 else ""
            self.progress.enter("save", done_steps, barriers)
            metrics.write(self.saver.save(done_steps, tokens_seen))
        return paused + time.perf_counter() - p0

    def _interrupted(self, done: int) -> str:
        newest = ckpt.latest(self.ckpt_root)
        where = (f"the newest checkpoint is {newest}" if newest else
                 "no checkpoint was saved yet, so resuming starts from step 0")
        return (f"stopped at step {done} of {self.cfg.train.max_steps} (interrupted); {where}; resume with "
                f"--set train.resume=auto")

    def _eval_loss(self) -> Dict[str, float]:
        # the global batch size, so the rows evaluated do not depend on the parallel layout
        res = eval_loss(self.eval_sums, self.eval_rows, min(self.cfg.train.micro_batch_size * self.env.dp, len(self.eval_rows)),
                        self.cfg.train.eval_batches)
        log.info("eval loss %.4f ppl %.2f", res["eval_loss"], res["eval_ppl"])
        return res

    def _generator(self) -> Generator:
        if not hasattr(self, "_gen"):
            self._gen = Generator(self.model, self.cfg.data.seq_length, batch_size=16)
        return self._gen

    def _exact_match(self, desc: str) -> Dict:
        recs = [r for r in self.data.eval_records if "instruction" in r or "messages" in r]
        recs = recs[:self.cfg.train.exact_match_samples]
        if not recs:
            return {"exact_match": 0.0, "n": 0, "examples": []}
        bar = desc if (self.cfg.logging.progress_bar and self.env.is_main) else None
        return exact_match(self._generator(), self.tok, recs, self.cfg.train.max_new_tokens, progress=bar)

    def _finish(self, summary: Dict, metrics: MetricsWriter) -> None:
        last = self.cfg.train.max_steps
        if getattr(self, "profile_top_ops", None) is not None:
            summary["profile_top_ops"] = self.profile_top_ops
        if self.eval_rows is not None and self.pipeline is not None:
            log.warning("no final evaluation: the pipeline's stages each hold part of the model (run `mfds eval` "
                        "on the checkpoint)")
        elif self.eval_rows is not None:
            res = self._eval_loss()
            summary.update(res)
            metrics.write({"type": "eval", "step": last, **res})  # the eval curve ends at the last step
        if self.cfg.train.exact_match_samples > 0:
            em = self._exact_match("exact match after")
            summary["exact_match_after"] = em["exact_match"]
            summary["examples"] = em["examples"]
            metrics.write({"type": "eval", "step": last, "exact_match": em["exact_match"]})
            log.info("held-out exact match after training: %.3f", em["exact_match"])
        summary["checkpoint"] = self.saver.last or ckpt.latest(self.ckpt_root)
        if self.env.is_main:
            atomic_write_json(os.path.join(self.out, "summary.json"), summary)
