"""Cell reuse for the repeated decoder layers (`model.cell_reuse`, on by default).

MindSpore compiles every decoder layer of a graph again: the first step grew by ~1.7 s per layer
on this CPU (tiny width), ~9 minutes for 61 layers on the slower machine of the issue. Its answer
is `mindspore.lazy_inline` on the layer's `__init__`: layers whose reuse key is equal share one
compiled subgraph. What MindSpore 2.10 does with it, measured here:

* **Ascend**: policy None, the layer is compiled once and called per layer (not inlined); this is
  the production setting and what MindFormers' DeepSeek-V3 uses (written, not run here).
* **CPU**: the CPU backend refuses non-inlined reusable subgraphs ("Input[0] must be a Primitive
  ValueNode, but get ValueNode<FuncGraph>", and in libmindspore_cpu "CPU does not support the
  lazy_inline feature"), at every jit_level. Policy "front" works: the frontend (parsing, type
  inference, autodiff, its passes) handles the layer once and inlines it before the backend, which
  still builds every layer's kernels. First step at 16 layers 30.6 -> 19.6 s, peak RSS 2.0 -> 1.6 GB
  (tools/bench/compile_depth.py); logits and the training trajectory are unchanged.

The reuse key is the class name plus the layer's `reuse_key` attribute, which must name every
per-layer choice that changes the layer's graph (dense or MoE; V4's attention type and hash or
learned routing): two layers with equal keys get the same compiled graph.
"""
from __future__ import annotations

from typing import Dict, Tuple

_CLASSES: Dict[Tuple[type, str], type] = {}


def reuse_policy(device: str):
    """lazy_inline's policy for a device: None (a shared, non-inlined subgraph) where the backend
    executes it, "front" (shared by the frontend, inlined for the backend) on CPU."""
    return "front" if device == "CPU" else None


def reusable(base: type, device: str) -> type:
    """`base` with its `__init__` under `lazy_inline(attrs=["reuse_key"])` for `device` (cached)."""
    from mindspore import lazy_inline
    policy = reuse_policy(device)
    key = (base, str(policy))
    if key not in _CLASSES:
        def __init__(self, *args, **kwargs):
            base.__init__(self, *args, **kwargs)
        _CLASSES[key] = type(f"Reused{base.__name__}", (base,),
                             {"__init__": lazy_inline(__init__, attrs=["reuse_key"], policy=policy),
                              "__module__": base.__module__, "__doc__": base.__doc__})
    return _CLASSES[key]


def layer_class(base: type, config) -> type:
    """The class to build the repeated layers with: `base`, or its reusable form."""
    if not config.cell_reuse:
        return base
    import mindspore as ms
    return reusable(base, ms.get_context("device_target"))
