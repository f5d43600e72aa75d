"""The training loop: config -> data -> model -> steps -> logs, metrics, checkpoints.

Everything a run produces lands in `train.output_dir`: `config.yaml` (resolved), `train.log`,
`metrics.jsonl` (one record per logged step and per evaluation), `checkpoints/step_N/` and
`summary.json`. `train.resume: auto` continues from the newest complete checkpoint with the
same data order (a function of the step), LR (a function of the step), optimizer moments and
router biases.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import mindspore as ms
from tqdm import tqdm

from .. import config as config_mod
from ..checkpoint import manager as ckpt
from ..config import ConfigError, RunConfig
from ..data.datasets import DataError, load_samples, read_jsonl
from ..data.loader import BatchLoader
from ..data.packing import build_rows, fit_length
from ..data.tokenizer import Tokenizer, TokenizerError
from ..generation import Generator
from ..models.deepseek import build_model as causal_lm
from ..models.deepseek.model import DeepseekForCausalLM
from ..checkpoint.pretrained import load_weights
from ..observe.peak import peak_tflops
from ..observe.profiling import ProfileWindow
from ..observe.step_metrics import StepMetrics, expert_stats, steady_state
from ..utils.io import atomic_write_json
from ..utils.logging import MetricsWriter, setup_logging
from .evaluation import EvalSums, eval_loss, exact_match
from .optimizer import AdamW
from .schedule import learning_rate
from .step import (AccumulateGrads, ApplyStep, GradStep, LossCell, TrainStep, router_bias_parameters,
                   router_bias_rows)

log = logging.getLogger("mindformers_ds.train")


class TrainingError(RuntimeError):
    pass


@dataclass
class DistEnv:
    """Where this process sits in a parallel job: `ctx` is the explicit executor's
    ParallelContext (None for a single process)."""
    ctx: object = None

    @property
    def rank(self) -> int:
        return 0 if self.ctx is None else self.ctx.rank

    @property
    def world(self) -> int:
        return 1 if self.ctx is None else self.ctx.world

    @property
    def dp(self) -> int:
        return 1 if self.ctx is None else self.ctx.dp

    @property
    def dp_rank(self) -> int:
        return 0 if self.ctx is None else self.ctx.dp_rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def set_graph_mode(device: Optional[str] = None) -> None:
    ms.set_context(mode=ms.GRAPH_MODE)
    target = device or os.environ.get("MFDS_DEVICE") or "CPU"
    ms.set_device(target)


def build_model(cfg: RunConfig, ctx=None, table=None) -> DeepseekForCausalLM:
    """The model (this rank's slices of it under the explicit executor), initialised from the
    seed or `model.pretrained`; every layout starts from the same full weights."""
    model = causal_lm(cfg.model.model_config(), parallel=ctx)
    layout = None
    if ctx is not None:
        from ..parallel.explicit import layout_init
        layout = layout_init(table, ctx)
    model.init_weights(cfg.train.seed, layout)
    if cfg.model.pretrained:
        report = load_weights(model, cfg.model.pretrained, layout=layout)
        log.info("loaded %d tensors from %s", report["loaded"], cfg.model.pretrained)
    return model


def apply_freeze(model, patterns: List[str]) -> int:
    frozen = 0
    for p in model.get_parameters():
        if any(fnmatch.fnmatch(p.name, pat) for pat in patterns):
            p.requires_grad = False
            frozen += 1
    return frozen


class Trainer:
    def __init__(self, cfg: RunConfig, env: Optional[DistEnv] = None):
        self.cfg = cfg
        self.env = env or DistEnv()
        self.out = cfg.train.output_dir
        self.ckpt_root = os.path.join(self.out, "checkpoints")

    # ---- setup ---------------------------------------------------------------------------
    def _setup_data(self) -> None:
        from ..data import mindrecord
        d = self.cfg.data
        if not d.tokenizer:
            raise ConfigError(self.cfg.source, "data.tokenizer", "data.tokenizer is required (a tokenizer.json)")
        if not d.train_file:
            raise ConfigError(self.cfg.source, "data.train_file", "data.train_file is required")
        self.tok = Tokenizer(d.tokenizer, d.chat_template)
        if self.tok.vocab_size > self.cfg.model.vocab_size:
            raise ConfigError(self.cfg.source, "model.vocab_size",
                              f"model.vocab_size={self.cfg.model.vocab_size} is smaller than the tokenizer's "
                              f"{self.tok.vocab_size} tokens ({d.tokenizer})")
        self.eval_records = [r for _, r in read_jsonl(d.eval_file)] if d.eval_file else []
        cached = mindrecord.load_or_none(d, "train") if d.eval_fraction == 0 else None
        n_trunc = n_drop = n_train = 0
        evals = load_samples(d.eval_file, self.tok, d.format) if d.eval_file else []
        if cached is not None:
            self.rows = cached
            log.info("train rows read from the MindRecord cache %s", mindrecord.cache_path(d, "train"))
        else:
            train = load_samples(d.train_file, self.tok, d.format, d.max_samples)
            if not d.eval_file and d.eval_fraction > 0:
                n_eval = int(len(train) * d.eval_fraction)
                evals, train = train[len(train) - n_eval:], train[:len(train) - n_eval]
            train, n_trunc, n_drop = fit_length(train, d.seq_length, d.overlong)
            if not train:
                raise DataError(f"{d.train_file}: no sample fits data.seq_length={d.seq_length} with data.overlong=drop")
            n_train = len(train)
            self.rows = build_rows(train, d.seq_length, self.tok.pad_id, d.packing)
        evals, _, _ = fit_length(evals, d.seq_length, d.overlong)
        self.eval_rows = build_rows(evals, d.seq_length, self.tok.pad_id, d.packing) if evals else None
        log.info("data: %s train samples -> %d rows of %d tokens (packing=%s; %d truncated, %d dropped as longer "
                 "than seq_length); %d eval samples", n_train or "cached", len(self.rows), d.seq_length, d.packing,
                 n_trunc, n_drop, len(evals))
        self.data_stats = {"train_samples": n_train, "train_rows": len(self.rows), "truncated": n_trunc,
                           "dropped": n_drop, "eval_samples": len(evals)}
        t = self.cfg.train
        self.loader = BatchLoader(self.rows, t.micro_batch_size, t.grad_accum_steps, self.env.dp, self.env.dp_rank,
                                  t.seed, d.shuffle, self.cfg.model.num_nextn_predict_layers)

    def _setup_model(self) -> None:
        cfg = self.cfg
        ctx = self.env.ctx
        self.table = None
        if ctx is not None:
            from ..parallel.layout import layout_table
            self.table = layout_table(cfg.model.model_config(), cfg.parallel)
        self.model = build_model(cfg, ctx, self.table)
        frozen = apply_freeze(self.model, cfg.train.freeze)
        self.lora = cfg.lora.enabled
        if self.lora:
            from .lora import apply_lora
            apply_lora(self.model, cfg.lora, cfg.train.seed)
        trainable = self.model.trainable_params()
        if not trainable:
            raise ConfigError(cfg.source, "train.freeze", "every parameter is frozen; nothing to train")
        self.n_params = self.model.num_parameters()
        self.n_trainable = int(sum(int(np.prod(p.shape)) for p in trainable))
        log.info("model %s: %d parameters, %d trainable (%.2f%%; %d frozen tensors%s)", cfg.model.model_type,
                 self.n_params, self.n_trainable, 100.0 * self.n_trainable / self.n_params, frozen,
                 ", LoRA adapters only" if self.lora else "")
        o = cfg.optimizer
        self.optimizer = AdamW(trainable, tuple(o.betas), o.eps, o.weight_decay)
        grad_step = GradStep(LossCell(self.model), trainable)
        # LoRA keeps the whole base model fixed, router correction biases included
        biases = [] if self.lora else router_bias_parameters(self.model)
        reducer = global_norm = None
        self.sum_parts = None
        if ctx is not None:
            from ..parallel.explicit import GlobalNorm, GradReducer, SumOverDP
            reducer = GradReducer(trainable, self.table, ctx)
            global_norm = GlobalNorm(trainable, self.table, ctx)
            self.sum_parts = SumOverDP(ctx)
        apply_step = ApplyStep(self.optimizer, biases, cfg.model.bias_update_rate, cfg.train.max_grad_norm,
                               reducer, global_norm, [] if self.lora else router_bias_rows(self.model),
                               fused_clip="grad_clip" in cfg.model.fused_ops)
        self.grad_step, self.apply_step = grad_step, apply_step
        self.fused_step = TrainStep(grad_step, apply_step)
        self.accumulate = AccumulateGrads()
        self.eval_sums = EvalSums(self.model)

    def _resume(self) -> int:
        mode = self.cfg.train.resume
        path = ckpt.latest(self.ckpt_root) if mode == "auto" else (None if mode == "never" else mode)
        if path is None:
            return 0
        if self.lora:
            from .lora import adapter_parameters
            ckpt.load_params(path, "adapter.safetensors", adapter_parameters(self.model))
            ckpt.load_params(path, "optimizer.safetensors", self.optimizer.state_parameters())
        else:
            # any layout: a single-process checkpoint, or the shards of another parallel layout
            from ..parallel.shards import load_into
            load_into(path, "model.safetensors", list(self.model.get_parameters()), self.table, self.env.ctx)
            load_into(path, "optimizer.safetensors", self.optimizer.state_parameters(), self.table, self.env.ctx)
        step = int(ckpt.read_state(path)["step"])
        log.info("resumed from %s at step %d", path, step)
        return step

    # ---- pieces of a step ----------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        s, t = self.cfg.lr_schedule, self.cfg.train
        return learning_rate(step, self.cfg.optimizer.lr, s.type, s.warmup_steps, s.decay_steps or t.max_steps,
                             s.min_lr_ratio)

    def _scales(self, batch) -> List[ms.Tensor]:
        n_micro = self.cfg.train.grad_accum_steps * self.env.dp
        mtp = batch.mtp_tokens[0] if batch.mtp_tokens else 1
        return [ms.Tensor(1.0 / max(batch.lm_tokens, 1), ms.float32),
                ms.Tensor(1.0 / max(mtp, 1), ms.float32),
                ms.Tensor(1.0 / n_micro, ms.float32)]

    def prepare_step(self, step: int):
        """The data half of a step: the batch and its host tensors."""
        batch = self.loader.batch(step)
        scales = self._scales(batch)
        lr = ms.Tensor(self._lr(step), ms.float32)
        tensors = [[ms.Tensor(mb[k]) for k in ("input_ids", "labels", "position_ids", "segment_ids")]
                   for mb in batch.micro_batches]
        return batch, scales, lr, tensors

    def train_step(self, step: int):
        return self.compute_step(*self.prepare_step(step))

    def compute_step(self, batch, scales, lr, tensors):
        """Forward, backward and the update, up to the host sync on the loss sums."""
        if len(tensors) == 1:
            outs, norm, finite = self.fused_step(*tensors[0], *scales, lr)
            parts = [o.asnumpy() for o in outs]
        else:
            grads, parts = None, None
            for mb in tensors:
                outs, g = self.grad_step(*mb, *scales)
                grads = g if grads is None else self.accumulate(grads, g)
                cur = [o.asnumpy() for o in outs]
                parts = cur if parts is None else [a + b for a, b in zip(parts, cur)]
            norm, finite = self.apply_step(grads, ms.Tensor(parts[6]), ms.Tensor(parts[0], ms.float32), lr)
        if self.sum_parts is not None:  # losses of the whole global batch, on every rank
            summed = self.sum_parts(ms.Tensor(np.array(parts[1:6], np.float32))).asnumpy()
            parts = [parts[0], *summed, self.sum_parts(ms.Tensor(parts[6])).asnumpy()]
        return batch, parts, float(norm.asnumpy()), bool(finite.asnumpy()), float(lr.asnumpy())

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> Dict:
        cfg, t = self.cfg, self.cfg.train
        os.makedirs(self.out, exist_ok=True)
        log_name = "train.log" if self.env.world == 1 else f"train_rank{self.env.rank}.log"
        setup_logging(os.path.join(self.out, log_name), cfg.logging.level, console=self.env.is_main)
        if self.env.is_main:
            config_mod.dump_yaml(cfg, os.path.join(self.out, "config.yaml"))
        self._setup_data()
        self._setup_model()
        start = self._resume()
        metrics = MetricsWriter(os.path.join(self.out, "metrics.jsonl" if self.env.is_main else
                                             f"metrics_rank{self.env.rank}.jsonl"),
                                keep_until_step=start if start > 0 else None)
        summary: Dict = {"start_step": start, "n_params": self.n_params, "n_trainable": self.n_trainable,
                         **self.data_stats}
        if t.exact_match_samples > 0 and start == 0:  # every rank decodes in lockstep (collectives)
            summary["exact_match_before"] = self._exact_match()["exact_match"]
            log.info("held-out exact match before training: %.3f", summary["exact_match_before"])
            metrics.write({"type": "eval", "step": 0, "exact_match": summary["exact_match_before"]})
        losses = self._loop(start, metrics, summary)
        metrics.close()
        summary["final_loss"] = losses[-1] if losses else None
        summary["first_loss"] = losses[0] if losses else None
        self._finish(summary)
        return summary

    def _loop(self, start: int, metrics: MetricsWriter, summary: Dict) -> List[float]:
        cfg, t = self.cfg, self.cfg.train
        losses: List[float] = []
        steady: List[Dict] = []  # records after the first (compiling) step
        bar = tqdm(total=t.max_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0,  # a log file gets a line per 30 s
                   disable=not (cfg.logging.progress_bar and self.env.is_main))
        tokens_seen = 0
        timer = StepMetrics(self.model.config, cfg.data.seq_length,
                            peak_tflops(cfg.logging.peak_tflops, ms.get_context("device_target")), self.env.world)
        profile = ProfileWindow(t.profile.start_step, t.profile.steps, self.out, enabled=self.env.is_main)
        biases = router_bias_parameters(self.model)
        last_end, paused = time.perf_counter(), 0.0
        for step in range(start, t.max_steps):
            profile.before_step(step)
            t0 = time.perf_counter()
            prepared = self.prepare_step(step)
            t1 = time.perf_counter()
            batch, parts, norm, finite, lr = self.compute_step(*prepared)
            t2 = time.perf_counter()
            dt, last_end, paused = t2 - last_end - paused, t2, 0.0
            top_ops = profile.after_step(step)
            if top_ops is not None:
                summary["profile_top_ops"] = top_ops[:10]
                paused += time.perf_counter() - t2  # the profiler's analysis is not step time
            lm_loss = float(parts[1]) / max(float(parts[2]), 1.0)
            mtp_loss = float(parts[3]) / max(float(parts[4]), 1.0) if self.model.num_mtp else 0.0
            n_tok = int(self.loader.global_rows * cfg.data.seq_length)
            tokens_seen += n_tok
            if not (finite and math.isfinite(lm_loss)):
                msg = (f"step {step + 1}: non-finite loss {lm_loss} / grad norm {norm}; batch rows "
                       f"{batch.global_indices.tolist()}; the update was skipped")
                log.error(msg)
                metrics.write({"type": "nan", "step": step + 1, "rows": batch.global_indices.tolist()})
                if t.nan_policy == "stop":
                    raise TrainingError(msg)
                continue
            losses.append(lm_loss)
            rec = {"step": step + 1, "loss": lm_loss, "mtp_loss": mtp_loss, "aux_loss": float(parts[5]),
                   "lr": lr, "grad_norm": norm, "tokens": n_tok, "epoch": self.loader.epoch_of(step + 1),
                   **timer.timing(n_tok, t1 - t0, t2 - t1, dt)}
            if step == start:
                rec["includes_compile"] = True  # the first step's compute time holds the graph compilation
            if (step + 1) % cfg.logging.log_every == 0 or step + 1 == t.max_steps:
                rec.update(expert_stats(parts[6], [b.asnumpy() for b in biases]))
                metrics.write(rec)
                log.info("step %d loss %.4f lr %.2e grad_norm %.3f %.0f tok/s mfu %.1f%%", step + 1, lm_loss, lr,
                         norm, rec["tokens_per_sec"], 100 * rec["mfu"])
            if step > start:
                steady.append(rec)
            bar.set_postfix(loss=f"{lm_loss:.4f}", lr=f"{lr:.1e}", tok_s=f"{n_tok / dt:.0f}", refresh=False)
            bar.update(1)
            done = step + 1 == t.max_steps
            p0 = time.perf_counter()  # evaluations and saves are not step time
            if t.eval_every and (step + 1) % t.eval_every == 0 and not done and self.eval_rows is not None:
                metrics.write({"type": "eval", "step": step + 1, **self._eval_loss()})
            ck = cfg.checkpoint
            if (ck.save_every and (step + 1) % ck.save_every == 0) or (done and ck.save_final):
                self._save(step + 1, tokens_seen)
            paused += time.perf_counter() - p0
        bar.close()
        profile.close()
        summary.update(steady_state(steady))
        return losses

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

    def _exact_match(self) -> Dict:
        recs = [r for r in self.eval_records if "instruction" in r or "messages" in r][:self.cfg.train.exact_match_samples]
        if not recs:
            return {"exact_match": 0.0, "n": 0, "examples": []}
        return exact_match(self._generator(), self.tok, recs, self.cfg.train.max_new_tokens)

    def _save(self, step: int, tokens_seen: int) -> None:
        state = {"tokens_seen": tokens_seen, "config": self.cfg.source}
        if self.env.ctx is not None and self.env.world > 1:
            from ..parallel.explicit import barrier
            from ..parallel.shards import save_sharded
            path = save_sharded(self.ckpt_root, step, self.env.ctx, list(self.model.get_parameters()),
                                self.optimizer.state_parameters(), state, self.model.config.to_hf_dict(),
                                self.cfg.checkpoint.keep_last, self.table, barrier)
            self.last_checkpoint = path
            log.info("saved checkpoint %s (rank %d of %d)", path, self.env.rank, self.env.world)
            return
        if not self.env.is_main:
            return
        if self.lora:
            from .lora import adapter_parameters
            state["lora"] = {"base": self.cfg.model.pretrained, "seed": self.cfg.train.seed,
                             **dataclasses.asdict(self.cfg.lora)}
            params, filename = adapter_parameters(self.model), "adapter.safetensors"
        else:
            params, filename = list(self.model.get_parameters()), "model.safetensors"
        path = ckpt.save(self.ckpt_root, step, params, self.optimizer.state_parameters(), state,
                         self.model.config.to_hf_dict(), self.cfg.checkpoint.keep_last, model_file=filename)
        self.last_checkpoint = path
        log.info("saved checkpoint %s", path)

    def _finish(self, summary: Dict) -> None:
        if self.eval_rows is not None:
            summary.update(self._eval_loss())
        if self.cfg.train.exact_match_samples > 0:
            em = self._exact_match()
            summary["exact_match_after"] = em["exact_match"]
            summary["examples"] = em["examples"]
            log.info("held-out exact match after training: %.3f", em["exact_match"])
        summary["checkpoint"] = getattr(self, "last_checkpoint", None) or ckpt.latest(self.ckpt_root)
        if self.env.is_main:
            atomic_write_json(os.path.join(self.out, "summary.json"), summary)
