"""`mfds plan --search`: every valid layout of the cluster, ranked by estimated step time.

Candidates: tp dividing the devices of a node (TP stays on the fast links), pp dividing the
remaining devices (uneven layer counts get a balanced `pp_offset`, extra layers on the first
stages), every ep that the parallel rules allow, recompute off and on; the optimizer is
always sharded. A candidate is kept when the parallel config accepts it, the global batch
gives at least `pp` micro-batches per data-parallel rank, and its worst stage fits in memory.
"""
from __future__ import annotations

import dataclasses
from typing import List

from ..errors import ConfigError
from ..parallel.config import check_parallel
from .estimate import Plan, plan_layout


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def balanced_offset(layers: int, pp: int):
    extra = layers % pp
    return None if extra == 0 else [1 if s < extra else 0 for s in range(pp)]


def search(preset, limit: int = 10) -> List[Plan]:
    model, base = preset.run.model.model_config(), preset.run.parallel
    cluster, world = preset.cluster, preset.cluster.devices
    found = []
    for tp in _divisors(cluster.devices_per_node):
        for pp in _divisors(world // tp):
            dp = world // (tp * pp)
            if pp > model.num_hidden_layers or preset.global_batch_size % (preset.micro_batch_size * dp):
                continue
            micro = preset.global_batch_size // (preset.micro_batch_size * dp)
            if pp > 1 and micro < pp:
                continue
            for ep in _divisors(dp * tp):
                for recompute in (False, True):
                    par = dataclasses.replace(base, dp=dp, tp=tp, ep=ep, pp=pp, micro_batches=micro,
                                              pp_offset=balanced_offset(model.num_hidden_layers, pp),
                                              recompute=recompute, optimizer_shard=True,
                                              sequence_parallel=tp > 1, vocab_parallel=False)
                    try:
                        check_parallel(par, model, preset.run.train, lambda _: preset.path)
                    except ConfigError:
                        continue
                    p = plan_layout(model, par, cluster, preset.micro_batch_size, preset.seq_length,
                                    preset.global_batch_size, preset.run.lora)
                    if p.fits:
                        found.append(p)
    found.sort(key=lambda p: (p.step_s, p.peak_memory_gb))
    return found[:limit]
