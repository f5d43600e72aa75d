"""Every parameter of a DeepSeek model as (name, shape, role), computed from the config alone.

The converter checks checkpoints against it, the parallel layout table splits by role, and
the planner counts parameters with it, all without building the model. Each block states its
own parameters (facts/: roles listed in facts/base.py); this walks the blocks a config builds.
A test keeps it equal to the model's own parameters.
"""
from __future__ import annotations

from typing import Iterator

from .config import DeepseekConfig
from .facts.base import Spec
from .facts.model import model_facts


def parameter_specs(c: DeepseekConfig) -> Iterator[Spec]:
    for block in model_facts(c):
        yield from block.params()


def parameter_count(c: DeepseekConfig, include_mtp: bool = True) -> int:
    total = 0
    for name, shape, _ in parameter_specs(c):
        if not include_mtp and name.startswith("model.layers.") and int(name.split(".")[2]) >= c.num_hidden_layers:
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
