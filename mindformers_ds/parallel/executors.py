"""One executor interface, chosen once from `parallel.executor`.

    explicit  each rank builds its slices of the model and the collectives are our own cells
              (parallel/explicit.py); runs under msrun on CPU (mccl) and on Ascend
    ascend    the model is built whole and MindSpore's semi-auto parallel shards it from the
              layout table (parallel/ascend.py: `.shard()` strategies, pipeline stages,
              recompute, AutoParallel with optimizer sharding and a strategy file)
    auto      ascend on an Ascend device, explicit elsewhere

`mfds train` / `mfds launch` pick the executor here; the trainer asks it for the model, the
gradient collectives and the step wrapper. On CPU, MindSpore refuses semi-auto parallel once a
job has more than one worker ("Invalid communication backend: CPU for semi_auto_parallel"):
an `ascend` run goes through all of our code and stops there with one line naming
`parallel.executor=explicit`. A single-process `ascend` run compiles and trains on CPU too
(semi-auto over one device), which is how the wiring is tested here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import ConfigError
from ..utils.device import device_target

log = logging.getLogger("mindformers_ds.parallel")
CPU_REFUSAL = "Invalid communication backend"  # MindSpore 2.10's words, at the first compile


def resolve_executor(name: str, device: str) -> str:
    """`auto` -> `ascend` on an Ascend device, `explicit` elsewhere."""
    if name == "auto":
        return "ascend" if device == "Ascend" else "explicit"
    return name


@dataclass(frozen=True)
class AscendRanks:
    """Where a worker sits under semi-auto parallel: MindSpore orders ranks stage-major, then dp,
    then tp (rank = stage*dp*tp + dp_index*tp + tp_index). The trainer feeds each dp index its rows."""
    rank: int
    world: int
    dp: int
    tp: int

    @property
    def dp_rank(self) -> int:
        return (self.rank // self.tp) % self.dp


@dataclass
class SaveRequest:
    """What one checkpoint holds (the trainer asks its executor to write it)."""
    root: str
    step: int
    model_params: list
    opt_params: list
    state: dict
    hf_config: dict
    keep_last: int
    side_files: dict
    opt_table: Optional[dict] = None    # the optimizer state's layout, when it differs (ZeRO)


class ExplicitExecutor:
    name = "explicit"

    def check(self, cfg, world: int) -> None:
        """The layouts this executor runs, as one-line errors before anything starts."""
        from .explicit import check_explicit_layout
        check_explicit_layout(cfg.parallel, world, cfg.origin)
        par = cfg.parallel
        if par.pp > 1:
            for field in ("eval_every", "exact_match_samples"):
                if getattr(cfg.train, field):
                    raise ConfigError(cfg.origin(f"train.{field}"), f"train.{field}",
                                      f"train.{field}={getattr(cfg.train, field)} with parallel.pp={par.pp}: the "
                                      "explicit executor does not evaluate across pipeline stages; set 0 and run "
                                      "`mfds eval` on the checkpoint")
            if cfg.lora.enabled:
                raise ConfigError(cfg.origin("parallel.pp"), "parallel.pp", f"parallel.pp={par.pp} with lora.enabled: "
                                  "the explicit executor trains LoRA adapters without pipeline stages; use parallel.pp=1")
        if par.optimizer_shard and par.dp == 1:
            log.warning("%s: parallel.optimizer_shard=true with parallel.dp=1 is a no-op: there is no data-parallel "
                        "group to shard the optimizer state over; it stays whole on every rank",
                        cfg.origin("parallel.optimizer_shard"))
        if par.sequence_parallel and par.tp > 1 and cfg.train.exact_match_samples:
            raise ConfigError(cfg.origin("train.exact_match_samples"), "train.exact_match_samples",
                              f"train.exact_match_samples={cfg.train.exact_match_samples} with "
                              "parallel.sequence_parallel: generation (prompts of any length) does not run "
                              "sequence-parallel; set 0 and run `mfds eval` on the checkpoint")
        if par.sequence_parallel and par.tp == 1:
            log.warning("%s: parallel.sequence_parallel=true with parallel.tp=1 is a no-op: the sequence is split "
                        "over tensor-parallel ranks and there is one", cfg.origin("parallel.sequence_parallel"))
        if par.optimizer_shard and cfg.lora.enabled:
            raise ConfigError(cfg.origin("parallel.optimizer_shard"), "parallel.optimizer_shard",
                              "parallel.optimizer_shard=true with lora.enabled: the adapters' optimizer state is "
                              "small and saved whole; set parallel.optimizer_shard=false")
        if cfg.lora.enabled and cfg.parallel.tp > 1:
            # an adapter of a split linear would be split too, and its A trained apart per tp rank
            raise ConfigError(cfg.origin("parallel.tp"), "parallel.tp",
                              f"parallel.tp={cfg.parallel.tp} with lora.enabled: the explicit executor trains "
                              "LoRA adapters under data/expert parallelism only; use parallel.tp=1")

    def start(self, cfg, distributed: bool):
        from ..train.setup import DistEnv
        if not distributed:
            return DistEnv()
        from .explicit import init_context
        return DistEnv(init_context(cfg.parallel, device_target()))

    def layout(self, cfg, env):
        """The layout table when the model is split over ranks (None: a whole model)."""
        if env.ctx is None:
            return None
        from .layout import layout_table
        return layout_table(cfg.model.model_config(), cfg.parallel)

    def build(self, cfg, env, table):
        """The whole model, split for this rank from outside (parallelize.py) before it is initialised."""
        from ..train.setup import build_model
        from .recompute import apply_recompute
        model = build_model(cfg) if env.ctx is None else build_model(cfg, self._splitter(cfg, env, table))
        log.info("recompute: %d layers (MTP modules included)", apply_recompute(model, cfg.parallel))
        return model

    @staticmethod
    def _splitter(cfg, env, table):
        """What build_model calls on the whole model before initialising it: this rank's slices
        (and, with pipeline stages, only this stage's modules)."""
        from .explicit import layout_init
        from .parallelize import parallelize

        def split(model):
            log.info("parallelized for rank %d: %s", env.ctx.rank, parallelize(model, table, env.ctx))
            if env.ctx.sequence_parallel:
                from . import sequence
                log.info("sequence parallel over tp=%d: %s", env.ctx.tp, sequence.apply(model, env.ctx))
                env.ctx.partial_over_tp = sequence.partial_parameters(model)
            if env.ctx.pp > 1:
                from .layout import shared_parameters, stage_keeps
                from .pipeline_stage import drop_unowned
                keep = stage_keeps(table, env.ctx.stage, shared_parameters(cfg.model.model_config(), table, env.ctx.pp))
                log.info("pipeline stage %d of %d holds %d of %d parameter tensors", env.ctx.stage, env.ctx.pp,
                         sum(keep(n) for n in table), len(table))
                drop_unowned(model, keep)
            return layout_init(table, env.ctx)
        return split

    def optimizer(self, trainable, table, cfg, env):
        """AdamW; with `parallel.optimizer_shard` and data parallelism, ZeRO-1's (zero.py): this
        rank's rows of the moments only."""
        if env.ctx is None or not cfg.parallel.optimizer_shard:
            return _adamw(trainable, cfg)
        from .layout import shared_parameters
        from .zero import ShardedAdamW, zero_axes
        axes = zero_axes(trainable, table, env.ctx, shared_parameters(cfg.model.model_config(), table, env.ctx.pp))
        if not axes:
            return _adamw(trainable, cfg)
        o = cfg.optimizer
        return ShardedAdamW(trainable, axes, env.ctx, tuple(o.betas), o.eps, o.weight_decay)

    @staticmethod
    def optimizer_table(table, optimizer):
        """The layout of the optimizer state (the parameters' table, plus ZeRO's rows)."""
        if table is None or not optimizer.zero_axes:
            return table
        from .zero import optimizer_table
        return optimizer_table(table, optimizer.zero_axes)

    def collectives(self, trainable, table, env, cfg, optimizer):
        """(gradient reducer, global norm, sum over dp) of the step; None where one process."""
        if env.ctx is None:
            return None, None, None
        from .explicit import GlobalNorm, GradReducer, SumOverDP
        from .layout import shared_parameters
        shared = shared_parameters(cfg.model.model_config(), table, env.ctx.pp)
        zero = optimizer.zero_axes
        return (GradReducer(trainable, table, env.ctx, shared, zero), GlobalNorm(trainable, table, env.ctx, shared, zero),
                SumOverDP(env.ctx))

    def pipeline(self, model, trainable, cfg, env):
        """The pipeline schedule of this stage (pipeline.py), or None without pipeline stages."""
        if env.ctx is None or env.ctx.pp == 1:
            return None
        from .config import virtual_stage_ranges
        from .pipeline import PipelineRunner
        par, c = cfg.parallel, cfg.model.model_config()
        ranges = virtual_stage_ranges(c.num_hidden_layers, par.pp, par.pp_offset, par.virtual_stages)
        chunks = {vs: r for vs, r in enumerate(ranges) if vs % par.pp == env.ctx.stage}
        schedule = "interleaved" if par.virtual_stages > 1 else "1f1b"
        return PipelineRunner(model, trainable, env.ctx, chunks, schedule, par.virtual_stages)

    @staticmethod
    def micro_batches(micro, cfg):
        """The loader's micro-batches as the step runs them: one by one (accumulated, or through
        the pipeline's schedule)."""
        return micro

    def wrap(self, cell, cfg):
        return cell

    def load(self, path: str, filename: str, params, table, env) -> int:
        """This rank's `params` from a checkpoint of any layout (shards.py)."""
        from .shards import load_into
        return load_into(path, filename, params, table, env.ctx)

    # the shards' writes can go to a background thread: the ranks agree through files (shard_save.py)
    saves_in_background = True

    def save_shards(self, req: SaveRequest, env, table, background=None, on_saved=None) -> Optional[str]:
        """Every rank writes its slices (shard_save.py), in `background` (a BackgroundWriter) when
        given; None for one process, which the trainer saves in the single-file format."""
        if env.ctx is None or env.world == 1:
            return None
        from .explicit import barrier
        from .shard_save import save_sharded
        return save_sharded(req.root, req.step, env.ctx, req.model_params, req.opt_params, req.state, req.hf_config,
                            req.keep_last, table, barrier, req.side_files, req.opt_table, background, on_saved)

    def split_checkpoint(self, src: str, dst: str, cfg, overwrite: bool = False) -> str:
        """A checkpoint of any layout -> the shards of `cfg.parallel` (one directory per rank)."""
        from .shards import split_checkpoint
        return split_checkpoint(src, dst, cfg, overwrite)


class AscendExecutor:
    name = "ascend"

    def check(self, cfg, world: int) -> None:
        par = cfg.parallel
        if par.world_size != world:
            set_by = [cfg.origin(f"parallel.{k}") for k in ("dp", "tp", "pp")]
            raise ConfigError("--set" if "--set" in set_by else cfg.source, "parallel",
                              f"parallel.dp*tp*pp={par.world_size} must equal the number of workers ({world})")
        if cfg.train.grad_accum_steps > 1:
            raise ConfigError(cfg.origin("train.grad_accum_steps"), "train.grad_accum_steps",
                              f"train.grad_accum_steps={cfg.train.grad_accum_steps}: the Ascend executor accumulates "
                              "through the pipeline's parallel.micro_batches; use 1 (or parallel.executor=explicit)")

    def start(self, cfg, distributed: bool):
        from ..train.setup import DistEnv
        if not distributed:
            return DistEnv()
        from mindspore.communication import get_group_size, get_rank, init
        init()
        return DistEnv(ranks=AscendRanks(get_rank(), get_group_size(), cfg.parallel.dp, cfg.parallel.tp))

    def layout(self, cfg, env):
        return None  # built whole: MindSpore slices the parameters from the strategies

    def build(self, cfg, env, table):
        from ..train.setup import build_model
        from .ascend import STRATEGY_DIR, apply, write_strategy_listing
        model = build_model(cfg)
        strategies = apply(model, cfg.parallel, cfg.train.micro_batch_size * cfg.parallel.dp, cfg.data.seq_length)
        if env.is_main:
            log.info("strategy listing: %s", write_strategy_listing(
                os.path.join(cfg.train.output_dir, STRATEGY_DIR, "param_layout.json"), model, strategies))
        return model

    def optimizer(self, trainable, table, cfg, env):
        """AdamW over the whole model: MindSpore shards its state itself (AutoParallel.hsdp)."""
        return _adamw(trainable, cfg)

    @staticmethod
    def optimizer_table(table, optimizer):
        return table

    def collectives(self, trainable, table, env, cfg, optimizer):
        return None, None, None  # MindSpore inserts the gradient and loss reductions itself

    def pipeline(self, model, trainable, cfg, env):
        return None  # nn.PipelineCell cuts the batch into parallel.micro_batches inside the graph

    @staticmethod
    def micro_batches(micro, cfg):
        """With pipeline stages, one batch of all the step's rows: nn.PipelineCell cuts it into
        parallel.micro_batches inside the graph."""
        if cfg.parallel.pp == 1 or len(micro) == 1:
            return micro
        return [{k: np.concatenate([mb[k] for mb in micro]) for k in micro[0]}]

    def wrap(self, cell, cfg):
        from .ascend import wrap
        self.step_cell = wrap(cell, cfg.parallel, cfg.train.output_dir)
        self.output_dir = cfg.train.output_dir
        return RefusalToLine(self.step_cell, cfg.source)

    def load(self, path: str, filename: str, params, table, env) -> int:
        """Full tensors (a full checkpoint, or any explicit layout's shards reassembled) into the
        whole model; MindSpore slices them from the strategies at the first compile."""
        from .ascend_checkpoint import check_loadable
        from .shards import load_into
        check_loadable(path)
        return load_into(path, filename, params, None, None)

    # MindSpore's distributed save reads the device tensors itself, on the training thread
    saves_in_background = False

    def save_shards(self, req: SaveRequest, env, table, background=None, on_saved=None) -> Optional[str]:
        """One process: None (the trainer's single-file format). Several devices: MindSpore's own
        distributed checkpoint (ascend_checkpoint.py; written for Ascend, not run here), always
        synchronously (`background` is not used: saves_in_background)."""
        if env.world == 1:
            return None
        from .ascend_checkpoint import save_distributed
        path = save_distributed(self.step_cell, req, env, self.output_dir)
        if on_saved:
            on_saved(path)
        return path

    def split_checkpoint(self, src: str, dst: str, cfg, overwrite: bool = False) -> str:
        raise ConfigError(cfg.origin("parallel.executor"), "parallel.executor",
                          "parallel.executor=ascend loads one full checkpoint and MindSpore slices it from the "
                          "strategies: there is nothing to split (`mfds convert merge` makes a full one)")


class RefusalToLine:
    """Calls the AutoParallel cell; MindSpore's refusal of the CPU backend becomes one line."""

    def __init__(self, cell, source: str):
        self.cell, self.source = cell, source

    def __call__(self, *args):
        try:
            return self.cell(*args)
        except RuntimeError as e:
            if CPU_REFUSAL not in str(e):
                raise
            first = str(e).strip().splitlines()[0]
            raise ConfigError(self.source, "parallel.executor",
                              f"parallel.executor=ascend: MindSpore refuses semi-auto parallel here ({first!r}); "
                              "on CPU use parallel.executor=explicit") from None


def _adamw(trainable, cfg):
    from ..train.optimizer import AdamW
    o = cfg.optimizer
    return AdamW(trainable, tuple(o.betas), o.eps, o.weight_decay)


def executor_for(par, device: Optional[str] = None):
    name = resolve_executor(par.executor, device or device_target())
    return AscendExecutor() if name == "ascend" else ExplicitExecutor()
