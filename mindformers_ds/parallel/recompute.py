"""Activation recompute (`parallel.recompute`), one marking for both executors.

A marked decoder layer keeps only its input through the forward pass; the backward pass runs
its forward again to get the activations its gradient needs (Megatron's "full" recompute of a
layer, MindSpore's `Cell.recompute()`). Cost: one more forward of each marked layer (about a
third more compute for the layer); saving: everything the layer's forward would have kept for
backward — attention scores, the MLA up-projections, the MoE's dispatched tokens — while the
layer is not being differentiated. The gradients are the same computation, so a recomputed
run's trajectory equals the plain one's.

`parallel.recompute`: true/false for every layer, a list per decoder layer, or a list per
pipeline stage (parallel/config.py checks the length). The MTP modules follow the last decoder
layer (per-layer list) or the last stage (per-stage list). Under pipeline stages each stage marks
its own layers; the Ascend executor marks the whole model before MindSpore cuts it.
"""
from __future__ import annotations

from typing import List

from .layout import layer_stage


def layer_recompute(recompute, stages: List[int], layer: int, num_layers: int) -> bool:
    """`parallel.recompute` for model.layers[layer] (`num_layers` decoder layers, then the MTP
    modules; `stages` the stage of each): a bool, a per-layer list or a per-stage list. A list
    as long as both (one layer per stage) means the same either way."""
    if not isinstance(recompute, list):
        return bool(recompute)
    if len(recompute) == num_layers:
        return bool(recompute[min(layer, num_layers - 1)])
    return bool(recompute[stages[layer]])


def apply_recompute(model, par) -> int:
    """Mark the layers `par.recompute` selects (not those another pipeline stage owns); returns
    how many were marked."""
    if par.recompute is False:
        return 0
    from .pipeline_stage import Dropped
    stages = layer_stage(model.config, par)
    marked = 0
    for i, layer in enumerate(model.model.layers):
        mine = not isinstance(layer, Dropped)
        if mine and layer_recompute(par.recompute, stages, i, model.config.num_hidden_layers):
            layer.recompute()
            marked += 1
    return marked
