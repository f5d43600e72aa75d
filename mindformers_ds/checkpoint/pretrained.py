"""`from_pretrained(path)`: a model of the checkpoint's family from a HuggingFace directory or one
written by this stack (the classes' own `from_pretrained`); the weight readers and writers are in
checkpoint/weights.py, re-exported here."""
from __future__ import annotations

from typing import Any

from .weights import load_weights, model_tensors, pretrained_config, save_pretrained  # noqa: F401


def from_pretrained(path: str, seed: int = 0, **overrides: Any):
    from ..models.deepseek.model import DeepseekForCausalLM
    return DeepseekForCausalLM.from_pretrained(path, seed, **overrides)
