"""Building what a run trains: graph mode on the device, the model (split by the executor when it
runs over ranks) from the seed or `model.pretrained`, and frozen parameters."""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import List, Optional

import mindspore as ms

from ..checkpoint.weights import load_weights
from ..config import RunConfig
from ..models.deepseek import build_model as causal_lm
from ..utils.device import device_target

log = logging.getLogger("mindformers_ds.train")


@dataclass
class DistEnv:
    """Where this process sits in a parallel job: `ctx` is the explicit executor's
    ParallelContext, `ranks` the Ascend executor's AscendRanks (both None: one process)."""
    ctx: object = None
    ranks: object = None

    @property
    def _where(self):
        return self.ctx if self.ctx is not None else self.ranks

    @property
    def rank(self) -> int:
        return 0 if self._where is None else self._where.rank

    @property
    def world(self) -> int:
        return 1 if self._where is None else self._where.world

    @property
    def dp(self) -> int:
        return 1 if self._where is None else self._where.dp

    @property
    def dp_rank(self) -> int:
        return 0 if self._where is None else self._where.dp_rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def set_graph_mode(device: Optional[str] = None) -> None:
    ms.set_context(mode=ms.GRAPH_MODE)
    target = device or device_target()
    ms.set_device(target)


def build_model(cfg: RunConfig, split=None):
    """The model, initialised from the seed or `model.pretrained`. `split(model)` is an executor's
    parallelisation of the whole model (parallel/parallelize.py) returning the slicer initialisation
    and loading cut with (name -> (full shape, this rank's cut)): every layout starts from the
    same full weights. None: the whole model."""
    model = causal_lm(cfg.model.model_config())
    layout = split(model) if split is not None else None
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
