"""What a multi-worker training loop runs beside its steps to be seen from outside: the straggler
windows (observe/stragglers.py) and the inventory of the collectives its graphs run
(observe/collective_inventory.py). None where one does not apply: one process, or switched off
in the `logging` section."""
from __future__ import annotations

from typing import Optional

from ..observe.collective_inventory import CollectiveInventory
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
