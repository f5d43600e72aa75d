"""Run configuration: one YAML file -> a typed, validated, frozen `RunConfig`.

* `base_config: other.yaml` inherits (path relative to the including file); dicts merge
  recursively, anything else is replaced.
* `--set a.b=c` overrides are parsed as YAML scalars (`--set optimizer.lr=1e-4`).
* Every error is one line that names the file which set the value and the dotted field:
  `configs/x.yaml: model.n_group=3 must divide model.n_routed_experts=16`.
* `model.hf_config: path/config.json` reads the model section from a HuggingFace config
  (HF field names); keys given next to it override it. `model.pretrained: DIR` implies
  `DIR/config.json` when no other model fields are given.
Paths inside a config are relative to the working directory, as in MindFormers.
Reading, merging and typing the tree is config_tree.py; the sections, cross-field validation
and the entry points (`load`, `rebuild`, `from_dict`) are here.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .config_tree import (INT_LIMIT, Origins, _build, _load_tree, _mark, _merge, _origin,  # noqa: F401
                          _set_dotted, parse_override, read_yaml_mapping)
from .errors import ConfigError
from .models.deepseek.config import DeepseekConfig


# ConfigError lives in the leaf module errors.py; `from mindformers_ds.config import ConfigError` keeps working


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSection(DeepseekConfig):
    hf_config: Optional[str] = None     # HF config.json to read the hyper-parameters from
    pretrained: Optional[str] = None    # HF directory or a checkpoint of this stack to start from
    # a `pretrained` checkpoint without MTP weights (transformers writes none): train without the
    # MTP modules (drop) or with freshly initialised ones (init)
    missing_mtp: str = "drop"

    def model_config(self) -> DeepseekConfig:
        names = {f.name for f in dataclasses.fields(DeepseekConfig)}
        return DeepseekConfig(**{n: getattr(self, n) for n in names})


@dataclass(frozen=True)
class DataConfig:
    train_file: Optional[str] = None
    eval_file: Optional[str] = None
    format: str = "auto"                # alpaca | chat | text | auto (decided per line)
    tokenizer: Optional[str] = None     # tokenizer.json, or a directory holding one
    chat_template: Optional[str] = None # jinja template overriding tokenizer_config.json's
    seq_length: int = 128
    packing: bool = False
    overlong: str = "truncate"          # truncate | drop (samples longer than seq_length)
    shuffle: bool = True
    max_samples: Optional[int] = None
    eval_fraction: float = 0.0          # split this share off train_file when eval_file is unset
    cache_dir: Optional[str] = None     # MindRecord cache written by `mfds data prepare`


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = False
    targets: List[str] = field(default_factory=lambda: ["q_b_proj", "kv_b_proj", "o_proj"])
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0


@dataclass(frozen=True)
class ProfileConfig:
    start_step: int = 0
    steps: int = 0                      # 0 disables profiling


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/default"
    seed: int = 1234
    max_steps: int = 100
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0          # 0 disables clipping
    eval_every: int = 0                 # 0: only at the end
    eval_batches: int = 8
    resume: str = "never"               # never | auto | a checkpoint directory
    max_restarts: int = 0               # mfds launch: restarts after a dead or frozen worker (parallel/restart.py)
    hang_timeout_s: float = 600.0       # a phase of a step lasting longer is a hang (observe/hang_watch.py); 0: off
    nan_policy: str = "stop"            # stop | skip
    freeze: List[str] = field(default_factory=list)   # name patterns, e.g. ["*.mlp.gate.*", "model.embed_tokens.*"]
    indexer_stage: str = "frozen"       # frozen | dense_warmup | sparse: V3.2/V4 indexer training (indexer_loss.py)
    indexer_loss_weight: float = 1.0    # the indexers' KL in the loss (dense_warmup and sparse)
    exact_match_samples: int = 0        # held-out samples scored by greedy generation (demo task)
    check_memory: bool = True           # refuse a CPU run whose estimated peak exceeds this machine's memory
    max_new_tokens: int = 16
    profile: ProfileConfig = field(default_factory=ProfileConfig)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1


@dataclass(frozen=True)
class LRScheduleConfig:
    type: str = "cosine"                # cosine | linear | constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1           # final lr = lr * min_lr_ratio
    decay_steps: Optional[int] = None   # default: train.max_steps


@dataclass(frozen=True)
class ParallelConfig:
    dp: int = 1
    tp: int = 1
    ep: int = 1
    pp: int = 1
    micro_batches: int = 1
    virtual_stages: int = 1             # > 1: the interleaved schedule (chunks per stage); 1: 1F1B
    pp_offset: Optional[List[int]] = None
    sequence_parallel: bool = False
    optimizer_shard: bool = False
    recompute: Any = False              # bool, or a per-layer / per-stage list of bools
    vocab_parallel: bool = False
    executor: str = "auto"              # auto | ascend | explicit

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp


@dataclass(frozen=True)
class CheckpointConfig:
    save_every: int = 0                 # 0: only the final checkpoint
    keep_last: int = 2
    format: str = "safetensors"         # safetensors | ckpt
    save_final: bool = True
    async_save: bool = False            # write in a background thread after a host snapshot (checkpoint/async_save.py)


@dataclass(frozen=True)
class LoggingConfig:
    log_every: int = 1
    progress_bar: bool = True
    level: str = "INFO"
    peak_tflops: Optional[float] = None # MFU denominator per device; default: measured (CPU) / published (Ascend)
    straggler_every: int = 20           # steps per straggler window (observe/stragglers.py); 0: off
    straggler_factor: float = 1.5       # own time per step above the peers' median by this factor ...
    straggler_steps: int = 2            # ... for this many consecutive windows names a straggler
    collective_inventory: bool = False  # several workers: list the compiled graphs' collectives (observe/collective_inventory.py)


@dataclass(frozen=True)
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    source: str = ""                    # the YAML this was loaded from (not a YAML field)
    # dotted field -> the file (or "--set") that set it, so later errors blame the right place
    origins: Dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        d.pop("origins", None)
        return d

    def origin(self, dotted: str) -> str:
        """The file (or `--set`) that set `dotted`, for errors raised after loading."""
        return _origin(self.origins, dotted) if self.origins else self.source

    def replace(self, **sections: Any) -> "RunConfig":
        return dataclasses.replace(self, **sections)


# ---------------------------------------------------------------------------------------
# Validation across fields and sections
# ---------------------------------------------------------------------------------------
def _choice(value: Any, allowed: Tuple[Any, ...], dotted: str, origins: Origins) -> None:
    if value not in allowed:
        raise ConfigError(_origin(origins, dotted), dotted, f"{dotted}={value!r} must be one of {list(allowed)}")


def check_model(model: DeepseekConfig, file: str, prefix: str = "model.",
                origins: Optional[Origins] = None) -> None:
    problems = model.problems()
    if problems:
        fld, msg = problems[0]
        where = _origin(origins, prefix + fld) if origins else file
        raise ConfigError(where, prefix + fld, msg.replace("{p}", prefix))


def _validate(cfg: RunConfig, origins: Origins, check_paths: bool = True) -> None:
    o = origins
    check_model(cfg.model, _origin(o, "model"), "model.", o)

    def need(cond: bool, dotted: str, msg: str) -> None:
        if not cond:
            raise ConfigError(_origin(o, dotted), dotted, msg)

    d, t, opt, lr, ck = cfg.data, cfg.train, cfg.optimizer, cfg.lr_schedule, cfg.checkpoint
    _choice(cfg.model.missing_mtp, ("drop", "init"), "model.missing_mtp", o)
    _choice(d.format, ("auto", "alpaca", "chat", "text"), "data.format", o)
    _choice(d.overlong, ("truncate", "drop"), "data.overlong", o)
    need(d.seq_length > 1, "data.seq_length", f"data.seq_length={d.seq_length} must be > 1")
    need(d.seq_length <= cfg.model.max_position_embeddings, "data.seq_length",
         f"data.seq_length={d.seq_length} must be <= model.max_position_embeddings={cfg.model.max_position_embeddings}")
    need(0.0 <= d.eval_fraction < 1.0, "data.eval_fraction", f"data.eval_fraction={d.eval_fraction} must be in [0, 1)")
    for name in ("train_file", "eval_file", "tokenizer") if check_paths else ():
        path = getattr(d, name)
        need(path is None or os.path.exists(path), f"data.{name}", f"data.{name}={path!r}: file not found")
    need(t.max_steps > 0, "train.max_steps", f"train.max_steps={t.max_steps} must be > 0")
    need(t.micro_batch_size > 0, "train.micro_batch_size", f"train.micro_batch_size={t.micro_batch_size} must be > 0")
    need(t.grad_accum_steps > 0, "train.grad_accum_steps", f"train.grad_accum_steps={t.grad_accum_steps} must be > 0")
    need(t.max_grad_norm >= 0, "train.max_grad_norm", f"train.max_grad_norm={t.max_grad_norm} must be >= 0")
    _choice(t.nan_policy, ("stop", "skip"), "train.nan_policy", o)
    _choice(t.indexer_stage, ("frozen", "dense_warmup", "sparse"), "train.indexer_stage", o)
    has_indexer = cfg.model.index_topk > 0 and (not cfg.model.is_v4 or
                                                "compressed_sparse_attention" in cfg.model.layer_types)
    need(t.indexer_stage == "frozen" or has_indexer, "train.indexer_stage",
         f"train.indexer_stage={t.indexer_stage!r} trains a Lightning Indexer, but model.model_type="
         f"{cfg.model.model_type!r} has none (deepseek_v32, or deepseek_v4 with CSA layers)")
    need(t.indexer_loss_weight > 0, "train.indexer_loss_weight",
         f"train.indexer_loss_weight={t.indexer_loss_weight} must be > 0")
    need(t.indexer_stage == "frozen" or not cfg.lora.enabled, "train.indexer_stage",
         f"train.indexer_stage={t.indexer_stage!r} trains the indexers' own weights; it cannot run with lora.enabled")
    need(t.hang_timeout_s >= 0, "train.hang_timeout_s",
         f"train.hang_timeout_s={t.hang_timeout_s} must be >= 0 (seconds; 0 turns hang detection off)")
    pr = t.profile
    need(pr.start_step >= 0 and pr.steps >= 0, "train.profile",
         f"train.profile start_step={pr.start_step} and steps={pr.steps} must be >= 0")
    need(pr.start_step + pr.steps <= t.max_steps, "train.profile.steps",
         f"train.profile covers steps {pr.start_step + 1}..{pr.start_step + pr.steps}, beyond train.max_steps={t.max_steps}")
    lg = cfg.logging
    need(lg.straggler_every >= 0, "logging.straggler_every",
         f"logging.straggler_every={lg.straggler_every} must be >= 0 (steps; 0 turns straggler detection off)")
    need(lg.straggler_factor > 1, "logging.straggler_factor", f"logging.straggler_factor={lg.straggler_factor} must be > 1")
    need(lg.straggler_steps >= 1, "logging.straggler_steps", f"logging.straggler_steps={lg.straggler_steps} must be >= 1")
    need(cfg.logging.peak_tflops is None or cfg.logging.peak_tflops > 0, "logging.peak_tflops",
         f"logging.peak_tflops={cfg.logging.peak_tflops} must be > 0 (TFLOP/s per device)")
    need(t.resume in ("never", "auto") or os.path.isdir(t.resume) or not check_paths, "train.resume",
         f"train.resume={t.resume!r} must be 'never', 'auto' or an existing checkpoint directory")
    _choice(opt.name, ("adamw",), "optimizer.name", o)
    need(opt.lr > 0, "optimizer.lr", f"optimizer.lr={opt.lr} must be > 0")
    need(len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas), "optimizer.betas",
         f"optimizer.betas={opt.betas} must be two numbers in [0, 1)")
    need(opt.weight_decay >= 0, "optimizer.weight_decay", f"optimizer.weight_decay={opt.weight_decay} must be >= 0")
    _choice(lr.type, ("cosine", "linear", "constant"), "lr_schedule.type", o)
    need(lr.warmup_steps >= 0, "lr_schedule.warmup_steps", f"lr_schedule.warmup_steps={lr.warmup_steps} must be >= 0")
    need(0 <= lr.min_lr_ratio <= 1, "lr_schedule.min_lr_ratio", f"lr_schedule.min_lr_ratio={lr.min_lr_ratio} must be in [0, 1]")
    _choice(ck.format, ("safetensors", "ckpt"), "checkpoint.format", o)
    need(ck.keep_last >= 1, "checkpoint.keep_last", f"checkpoint.keep_last={ck.keep_last} must be >= 1")
    need(cfg.lora.rank > 0, "lora.rank", f"lora.rank={cfg.lora.rank} must be > 0")
    need(0 <= cfg.lora.dropout < 1, "lora.dropout", f"lora.dropout={cfg.lora.dropout} must be in [0, 1)")
    from .parallel.config import check_parallel  # parallel rules live with the parallel package
    check_parallel(cfg.parallel, cfg.model, cfg.train, lambda dotted: _origin(o, dotted))
    par = cfg.parallel
    if par.sequence_parallel and par.tp > 1:   # every row is data.seq_length long (data/packing.py)
        need(d.seq_length % par.tp == 0, "parallel.sequence_parallel",
             f"parallel.sequence_parallel cuts data.seq_length={d.seq_length} into parallel.tp={par.tp} parts: "
             "it must be a multiple of parallel.tp")


def _resolve_model_section(tree: Dict[str, Any], origins: Origins, order: List[str]) -> None:
    """Expand `model.hf_config` / `model.pretrained` into HF field values. Model keys set in the
    file that names the HF config, or later (a child config, `--set`), override it; keys
    inherited from earlier base files do not."""
    model = tree.get("model")
    if not isinstance(model, dict):
        return
    hf_path = model.get("hf_config")
    pretrained = model.get("pretrained")
    source_key = "model.hf_config"
    if hf_path is None and isinstance(pretrained, str) and os.path.isfile(os.path.join(pretrained, "config.json")):
        hf_path, source_key = os.path.join(pretrained, "config.json"), "model.pretrained"
    if hf_path is None:
        return
    where = _origin(origins, source_key)
    if not isinstance(hf_path, str):
        raise ConfigError(where, "model.hf_config", f"model.hf_config={hf_path!r} must be a path")
    if not os.path.isfile(hf_path):
        raise ConfigError(where, "model.hf_config", f"model.hf_config={hf_path!r}: file not found")
    hf = DeepseekConfig.from_hf_file(hf_path)
    check_model(hf, hf_path, "")
    rank = {f: i for i, f in enumerate(order + ["--set"])}
    floor = rank.get(where, 0)
    base = {f.name: getattr(hf, f.name) for f in dataclasses.fields(DeepseekConfig)}
    if hf.rope_scaling is not None:
        base["rope_scaling"] = dataclasses.asdict(hf.rope_scaling)

    def overlay(dst: Dict[str, Any], src: Dict[str, Any], prefix: str) -> None:
        for k, v in src.items():
            dotted = f"{prefix}.{k}"
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                overlay(dst[k], v, dotted)
            elif k in ("hf_config", "pretrained", "missing_mtp") or rank.get(_origin(origins, dotted), -1) >= floor:
                dst[k] = v
            else:
                _mark(dst.get(k), dotted, hf_path, origins)
    overlay(base, model, "model")
    for k in base:
        if k not in model:
            _mark(base[k], f"model.{k}", hf_path, origins)
    tree["model"] = base


def load(path: str, overrides: Optional[List[str]] = None, check_paths: bool = True,
         layers: Sequence[Tuple[str, Dict[str, Any]]] = ()) -> RunConfig:
    """Read, merge, override, type-check and validate a run config. `check_paths=False`
    validates a config meant for another machine (data paths are not looked at). `layers`
    ((origin, tree) pairs, e.g. a cluster preset's layout) merge over the file and under the
    `--set` overrides, which always win."""
    origins: Origins = {"": path}
    order: List[str] = []
    tree = _load_tree(path, origins, order)
    for origin, layer in layers:
        _merge(tree, layer, "", origin, origins)
        order.append(origin)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value, origins)
    _resolve_model_section(tree, origins, order)
    cfg = _build(RunConfig, tree, "", origins)
    _validate(cfg, origins, check_paths)
    return dataclasses.replace(cfg, source=path, origins=origins)


def rebuild(cfg: RunConfig, layers: Sequence[Tuple[str, Dict[str, Any]]] = (),
            overrides: Optional[List[str]] = None, check_paths: bool = True) -> RunConfig:
    """`cfg` with `layers` ((origin, tree) pairs) merged over it and then the `--set`
    `overrides`, validated again; every field keeps the origin of whatever set it last."""
    origins: Origins = dict(cfg.origins) or {"": cfg.source}
    tree = cfg.to_dict()
    for origin, layer in layers:
        _merge(tree, layer, "", origin, origins)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value, origins)
    out = _build(RunConfig, tree, "", origins)
    _validate(out, origins, check_paths)
    return dataclasses.replace(out, source=cfg.source, origins=origins)


def from_dict(tree: Dict[str, Any], source: str = "<dict>", overrides: Optional[List[str]] = None) -> RunConfig:
    """Build a RunConfig from an already-parsed mapping (tests, programmatic use, the run config a
    checkpoint carries); `overrides` as `--set` gives them."""
    origins: Origins = {"": source}
    tree = copy.deepcopy(tree)
    _mark(tree, "", source, origins)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(tree, key, value, origins)
    _resolve_model_section(tree, origins, [source])
    cfg = _build(RunConfig, tree, "", origins)
    _validate(cfg, origins)
    return dataclasses.replace(cfg, source=source, origins=origins)


def model_config_from_dict(d: Dict[str, Any], source: str = "<model>") -> DeepseekConfig:
    """A validated DeepseekConfig from a mapping with HF field names (YAML model section)."""
    origins: Origins = {"": source}
    _mark(d, "", source, origins)
    cfg = _build(DeepseekConfig, d, "", origins)
    check_model(cfg, source, "")
    return cfg


def dump_yaml(cfg: RunConfig, path: str) -> None:
    from .utils.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
