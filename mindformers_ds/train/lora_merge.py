"""`mfds lora merge`: the base model of a run config + a LoRA checkpoint's adapters -> one model."""
from __future__ import annotations

import os

from ..checkpoint import manager
from ..checkpoint.weights import save_pretrained
from ..models.deepseek.lora_linear import merge_adapters
from .lora import adapter_parameters, apply_lora
from .setup import build_model


def merge_checkpoint(cfg, adapter_dir: str, out_dir: str, layout: str = "mindspore") -> str:
    model = build_model(cfg)
    apply_lora(model, cfg.lora, cfg.train.seed)
    manager.load_params(adapter_dir, "adapter.safetensors", adapter_parameters(model))
    n = merge_adapters(model)
    for p in model.get_parameters():
        p.requires_grad = True
    save_pretrained(model, out_dir, layout=layout)
    return f"merged {n} adapters into {os.path.join(out_dir, 'model.safetensors')}"
