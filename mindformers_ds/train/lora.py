"""LoRA: low-rank adapters on chosen projections, the base model frozen.

`lora.targets` names Linear layers by their last name component (`q_b_proj`, `kv_b_proj`,
`o_proj`, `q_proj`, `kv_a_proj_with_mqa`, `gate_proj`, `up_proj`, `down_proj`, `eh_proj`,
`lm_head`). Each gets A [r, in] (uniform +-1/sqrt(in), as PEFT's kaiming init) and B [out, r]
(zeros), and computes W x + (alpha/r) B A x. Only A and B train; router biases stay frozen too,
so the base checkpoint is untouched bit for bit. `merge_lora` folds W += (alpha/r) B A.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from ..models.deepseek.layers import Linear

LORA_SUFFIXES = (".lora_a", ".lora_b")


class _Identity(nn.Cell):
    def construct(self, x):
        return x


def lora_targets(model, targets: List[str]) -> Dict[str, Linear]:
    found = {name: cell for name, cell in model.cells_and_names()
             if isinstance(cell, Linear) and name.split(".")[-1] in targets}
    return found


def apply_lora(model, lora_cfg, seed: int = 0) -> List[str]:
    """Attach adapters; freeze everything else. Returns the adapter parameter names."""
    found = lora_targets(model, lora_cfg.targets)
    if not found:
        from ..errors import ConfigError
        raise ConfigError("", "lora.targets", f"lora.targets={lora_cfg.targets} matches no Linear layer of the model")
    for p in model.get_parameters():
        p.requires_grad = False
    names = []
    r = lora_cfg.rank
    for name, cell in sorted(found.items()):
        key = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng([seed, key])
        bound = 1.0 / np.sqrt(cell.in_features)
        cell.lora_a = Parameter(Tensor(rng.uniform(-bound, bound, (r, cell.in_features)).astype(np.float32)),
                                name=f"{name}.lora_a")
        cell.lora_b = Parameter(Tensor(np.zeros((cell.out_features, r), np.float32)), name=f"{name}.lora_b")
        cell.lora_rank = r
        cell.lora_scale = float(lora_cfg.alpha) / r
        cell.lora_matmul_a = ops.MatMul(transpose_b=True)
        cell.lora_matmul_b = ops.MatMul(transpose_b=True)
        cell.lora_dropout = nn.Dropout(p=lora_cfg.dropout) if lora_cfg.dropout > 0 else _Identity()
        names += [f"{name}.lora_a", f"{name}.lora_b"]
    return names


def adapter_parameters(model) -> List[Parameter]:
    return [p for p in model.get_parameters() if p.name.endswith(LORA_SUFFIXES)]


def merge_lora(model) -> int:
    """Fold every adapter into its base weight and detach the adapters; returns how many.

    MindSpore caches a compiled graph per top-level cell and does not notice the changed
    structure: call this before compiling, or run the merged model through a new cell."""
    n = 0
    for name, cell in model.cells_and_names():
        if isinstance(cell, Linear) and cell.lora_rank > 0:
            w = cell.weight.asnumpy().astype(np.float64)
            delta = cell.lora_b.asnumpy().astype(np.float64) @ cell.lora_a.asnumpy().astype(np.float64)
            cell.weight.set_data(Tensor((w + cell.lora_scale * delta).astype(np.float32)))
            cell.lora_rank = 0
            del cell.lora_a, cell.lora_b
            n += 1
    return n


def merge_checkpoint(cfg, adapter_dir: str, out_dir: str, layout: str = "mindspore") -> str:
    """Base model of `cfg` + adapters of a LoRA checkpoint -> a merged model directory."""
    import os
    from ..checkpoint import manager
    from ..checkpoint.weights import save_pretrained
    from .setup import build_model
    model = build_model(cfg)
    apply_lora(model, cfg.lora, cfg.train.seed)
    manager.load_params(adapter_dir, "adapter.safetensors", adapter_parameters(model))
    n = merge_lora(model)
    for p in model.get_parameters():
        p.requires_grad = True
    save_pretrained(model, out_dir, layout=layout)
    return f"merged {n} adapters into {os.path.join(out_dir, 'model.safetensors')}"
