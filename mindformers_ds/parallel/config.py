"""Validation of `parallel:` against the model and the training settings.

Rules follow MindFormers/Megatron: dp*tp*pp devices, ep carved out of dp*tp, heads and FFN
widths split by tp, experts by ep, layers over pp stages with an explicit `pp_offset` when
they do not divide evenly.
"""
from __future__ import annotations

import os
from typing import Callable, List, Tuple

from ..models.deepseek.config import DeepseekConfig

EXECUTORS = ("auto", "ascend", "explicit")  # parallel.executor (executors.py)


def launched_workers() -> int:
    """Workers started by msrun carry MS_WORKER_NUM; 1 otherwise."""
    return int(os.environ.get("MS_WORKER_NUM", os.environ.get("RANK_SIZE", "1")) or 1)


def stage_layer_counts(num_layers: int, pp: int, pp_offset: List[int] | None) -> List[int]:
    """Layers per pipeline stage: the even split plus MindFormers-style per-stage offsets."""
    base = [num_layers // pp] * pp
    if pp_offset is not None:
        base = [b + o for b, o in zip(base, pp_offset)]
    return base


def virtual_stage_ranges(num_layers: int, pp: int, pp_offset: List[int] | None, virtual: int = 1) -> List[Tuple[int, int]]:
    """[start, stop) of the layers of each virtual stage (pp * virtual of them, in model order;
    virtual stage k sits on stage k % pp). One per stage without interleaving."""
    counts = stage_layer_counts(num_layers, pp, pp_offset) if virtual == 1 else [num_layers // (pp * virtual)] * (pp * virtual)
    edges = [sum(counts[:k]) for k in range(len(counts) + 1)]
    return list(zip(edges[:-1], edges[1:]))


def check_parallel(p, model: DeepseekConfig, train, origin_of: Callable[[str], str]) -> None:
    from ..errors import ConfigError

    def need(cond: bool, dotted: str, msg: str) -> None:
        if not cond:
            raise ConfigError(origin_of(dotted), dotted, msg)

    for name in ("dp", "tp", "ep", "pp", "micro_batches", "virtual_stages"):
        need(getattr(p, name) >= 1, f"parallel.{name}", f"parallel.{name}={getattr(p, name)} must be >= 1")
    need(p.executor in EXECUTORS, "parallel.executor",
         f"parallel.executor={p.executor!r} must be one of {list(EXECUTORS)}")
    h = model.num_attention_heads
    need(h % p.tp == 0, "parallel.tp", f"parallel.tp={p.tp} must divide model.num_attention_heads={h}")
    need(model.intermediate_size % p.tp == 0, "parallel.tp",
         f"parallel.tp={p.tp} must divide model.intermediate_size={model.intermediate_size}")
    if model.is_v4:  # query heads split by whole output groups
        need(model.o_groups % p.tp == 0, "parallel.tp", f"parallel.tp={p.tp} must divide model.o_groups={model.o_groups}")
    if model.n_routed_experts > 0:
        shared = model.moe_intermediate_size * max(model.n_shared_experts, 1)
        need(shared % p.tp == 0, "parallel.tp",
             f"parallel.tp={p.tp} must divide the shared-expert width model.moe_intermediate_size*n_shared_experts={shared}")
        need(model.n_routed_experts % p.ep == 0, "parallel.ep",
             f"parallel.ep={p.ep} must divide model.n_routed_experts={model.n_routed_experts}")
    else:
        need(p.ep == 1, "parallel.ep", f"parallel.ep={p.ep} needs routed experts (model.n_routed_experts=0)")
    need((p.dp * p.tp) % p.ep == 0, "parallel.ep",
         f"parallel.ep={p.ep} must divide parallel.dp*parallel.tp={p.dp * p.tp}")
    if p.vocab_parallel:
        need(model.vocab_size % p.tp == 0, "parallel.vocab_parallel",
             f"parallel.vocab_parallel needs parallel.tp={p.tp} to divide model.vocab_size={model.vocab_size}")
    L = model.num_hidden_layers
    if p.pp_offset is not None:
        need(len(p.pp_offset) == p.pp, "parallel.pp_offset",
             f"parallel.pp_offset has {len(p.pp_offset)} entries; it needs one per stage (parallel.pp={p.pp})")
        counts = stage_layer_counts(L, p.pp, p.pp_offset)
        need(sum(counts) == L and min(counts) >= 1, "parallel.pp_offset",
             f"parallel.pp_offset={p.pp_offset} gives stages of {counts} layers; they must be >= 1 and sum to "
             f"model.num_hidden_layers={L}")
    else:
        need(L % p.pp == 0, "parallel.pp",
             f"parallel.pp={p.pp} does not divide model.num_hidden_layers={L}; give parallel.pp_offset "
             f"(one entry per stage, summing to {L - (L // p.pp) * p.pp})")
    if p.virtual_stages > 1:
        need(p.pp > 1, "parallel.virtual_stages",
             f"parallel.virtual_stages={p.virtual_stages} needs pipeline stages (parallel.pp={p.pp})")
        need(p.pp_offset is None, "parallel.virtual_stages",
             f"parallel.virtual_stages={p.virtual_stages} cuts the layers evenly; drop parallel.pp_offset={p.pp_offset}")
        need(L % (p.pp * p.virtual_stages) == 0, "parallel.virtual_stages",
             f"parallel.virtual_stages={p.virtual_stages}: pp*virtual_stages={p.pp * p.virtual_stages} virtual stages do not divide "
             f"model.num_hidden_layers={L}")
        need(p.micro_batches % p.pp == 0, "parallel.micro_batches",
             f"parallel.micro_batches={p.micro_batches}: the interleaved schedule takes micro-batches in groups "
             f"of parallel.pp={p.pp}; use a multiple of it")
    if p.pp > 1:
        need(p.micro_batches >= p.pp, "parallel.micro_batches",
             f"parallel.micro_batches={p.micro_batches} must be >= parallel.pp={p.pp} to fill the pipeline")
    rc = p.recompute
    if isinstance(rc, list):
        need(len(rc) in (L, p.pp) and all(isinstance(x, bool) for x in rc), "parallel.recompute",
             f"parallel.recompute list must hold true/false per layer ({L}) or per stage ({p.pp}), got {rc}")
    else:
        need(isinstance(rc, bool), "parallel.recompute",
             f"parallel.recompute={rc!r} must be true/false or a per-layer/per-stage list")
