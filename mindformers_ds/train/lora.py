"""LoRA on chosen projections, the base model frozen.

`lora.targets` names Linear layers by their last name component (`q_b_proj`, `kv_b_proj`,
`o_proj`, `q_proj`, `kv_a_proj_with_mqa`, `gate_proj`, `up_proj`, `down_proj`, `eh_proj`,
`lm_head`). Each is replaced by a `LoraLinear` (models/deepseek/lora_linear.py: the math) that
keeps its weight; only the adapters A and B train; router biases stay frozen too, so the base
checkpoint is untouched bit for bit. A is drawn from (seed, the layer's name), so every process
and every resume draws the same adapters.
"""
from __future__ import annotations

import hashlib
from typing import List

import numpy as np
from mindspore import Parameter

from ..errors import ConfigError
from ..models.deepseek.layers import Linear
from ..models.deepseek.lora_linear import LoraLinear
from ..utils.cells import find_cells, replace_cell

LORA_SUFFIXES = (".lora_a", ".lora_b")


def apply_lora(model, lora_cfg, seed: int = 0) -> List[str]:
    """Replace the target Linears by LoraLinears; freeze everything else. Returns the adapter names."""
    found = find_cells(model, lambda name, cell: type(cell) is Linear and name.split(".")[-1] in lora_cfg.targets)
    if not found:
        raise ConfigError("", "lora.targets", f"lora.targets={lora_cfg.targets} matches no Linear layer of the model")
    for p in model.get_parameters():
        p.requires_grad = False
    names = []
    for name, cell in sorted(found.items()):
        adapted = cell.rebuilt(LoraLinear, lora_cfg.rank, lora_cfg.alpha, lora_cfg.dropout)
        key = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        adapted.init_adapter(np.random.default_rng([seed, key]))
        replace_cell(model, name, adapted)
        names += [f"{name}.lora_a", f"{name}.lora_b"]
    return names


def adapter_parameters(model) -> List[Parameter]:
    return [p for p in model.get_parameters() if p.name.endswith(LORA_SUFFIXES)]
