"""What a training loop runs beside its steps to be seen from outside: the profiler window
(observe/profiling.py; in a launched job on every rank, which then compare their kernel times:
observe/graph_stragglers.py), the straggler windows (observe/stragglers.py) and the inventory of
the collectives its graphs run (observe/collective_inventory.py). None where one does not apply:
one process, or switched off in the `logging` section."""
from __future__ import annotations

from typing import Optional

from ..observe.collective_inventory import CollectiveInventory
from ..observe.profiling import ProfileWindow
from ..observe.stragglers import StragglerDetector


def straggler_detector(trainer) -> Optional[StragglerDetector]:
    lg = trainer.cfg.logging
    if trainer.env.world == 1 or not lg.straggler_every:
        return None
    from ..parallel.explicit import world_sum   # a plain world AllReduce: HCCL runs it too
    return StragglerDetector(trainer.env.rank, trainer.env.world, lg, world_sum, trainer.progress)


def collective_inventory(trainer) -> Optional[CollectiveInventory]:
    """Started: it lists the graphs compiled until its `stop` (after the first step)."""
    cfg = trainer.cfg
    if trainer.env.world == 1 or not cfg.logging.collective_inventory:
        return None
    groups = trainer.env.ctx.groups if trainer.env.ctx is not None else {}
    inventory = CollectiveInventory(trainer.out, trainer.env.rank, groups,
                                    one_run_per_step=cfg.train.grad_accum_steps == 1 and cfg.parallel.pp == 1)
    inventory.start(trainer.progress)
    return inventory


def profile_window(trainer) -> ProfileWindow:
    t, env = trainer.cfg.train, trainer.env
    exchange = None
    if env.world > 1:
        from ..observe.graph_stragglers import exchange_and_judge
        from ..parallel.explicit import world_sum

        def exchange(split, steps):
            return exchange_and_judge(split, env.rank, env.world, steps, trainer.cfg.logging.straggler_factor,
                                      world_sum)
    return ProfileWindow(t.profile.start_step, t.profile.steps, trainer.out, rank=env.rank, exchange=exchange)
