"""Operators used by the model: composite MindSpore implementations and fused kernels.

`mindformers_ds.ops.composite` holds the reference semantics. Fused kernels (AscendC on
Ascend, C++ `aot` kernels on CPU) are selected per op through `model.fused_ops`.
"""
