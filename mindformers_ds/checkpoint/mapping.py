"""Stream a HF-layout checkpoint as the model's float32 tensors, layer by layer.

FP8 weights are dequantised with their `weight_scale_inv`; per-expert tensors are stacked
once all experts of a layer have been read. Tensors are visited in layer order, so at most
one layer's experts are held at a time.
"""
from __future__ import annotations

import re
from typing import Dict, Iterator, List, Tuple

import numpy as np

from .fp4 import block_dequant_fp4
from .fp8 import block_dequant
from .names import SCALE_SUFFIX, expert_key, is_release_mtp, stack_experts
from .reader import CheckpointReader
from .safetensors_io import CheckpointError, to_float32

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def layer_of(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def ordered_names(names: List[str]) -> List[str]:
    """Checkpoint names grouped by layer (embeddings first, head and final norm last)."""
    def key(n: str):
        layer = layer_of(n)
        tail = 0 if n.startswith("model.embed") else 2 if layer < 0 else 1
        return (tail, layer, n)
    return sorted((n for n in names if not n.endswith(SCALE_SUFFIX)), key=key)


def is_quantised(reader: CheckpointReader, name: str, tag: str) -> bool:
    """FP8 (e4m3 / e5m2) or FP4 (e2m1 packed in int8 / uint8, V4's experts) with a block scale."""
    return tag.startswith("F8_") and tag != "F8_E8M0" or (tag in ("I8", "U8") and name + SCALE_SUFFIX in reader)


def dequantise(reader: CheckpointReader, name: str, tag: str, arr: np.ndarray) -> np.ndarray:
    """float32 of a quantised weight, through its `<weight>_scale_inv` (float32 or UE8M0 scales):
    FP8 in 128 x 128 blocks, FP4 in the blocks the scale grid implies ([1, 32] in V4)."""
    scale_name = name + SCALE_SUFFIX
    where = reader.weight_map.get(name, reader.path)
    if scale_name not in reader:
        raise CheckpointError(f"{where}: quantised tensor {name!r} ({tag}) has no {scale_name!r}")
    scale = to_float32(*reader.get(scale_name))
    try:
        if tag.startswith("F8_"):
            return block_dequant(arr, scale, 128, tag)
        rows, cols = arr.shape[-2], 2 * arr.shape[-1]
        block = (-(-rows // scale.shape[-2]), -(-cols // scale.shape[-1]))
        return block_dequant_fp4(arr, scale, block)
    except ValueError as e:
        raise CheckpointError(f"{where}: tensor {name!r}: {e}") from None


def read_float32(reader: CheckpointReader, name: str) -> np.ndarray:
    tag, arr = reader.get(name, copy=False)
    if is_quantised(reader, name, tag):
        return dequantise(reader, name, tag, arr)
    if tag in ("I64", "I32", "I16", "I8", "U8"):
        return np.array(arr, copy=True)  # integer tables (V4's tid2eid) stay integers
    out = to_float32(tag, arr)
    return np.array(out, np.float32, copy=True) if out is arr or not out.flags.writeable else out


def iter_internal(reader: CheckpointReader, num_experts: int) -> Iterator[Tuple[str, np.ndarray]]:
    """(internal name, float32 array), experts stacked per layer."""
    pending: Dict[str, Dict[Tuple[int, str], np.ndarray]] = {}
    for name in ordered_names(reader.names()):
        if is_release_mtp(name):  # V4's MTP block: not part of the model; handed on as stored
            yield name, reader.get(name)[1]
            continue
        k = expert_key(name)
        if k is None:
            yield name, read_float32(reader, name)
            continue
        prefix, e, proj = k
        if e >= num_experts:
            raise CheckpointError(f"{reader.weight_map[name]}: tensor {name!r} is expert {e} but the config has "
                                  f"n_routed_experts={num_experts}")
        group = pending.setdefault(prefix, {})
        group[(e, proj)] = read_float32(reader, name)
        if len(group) == 3 * num_experts:
            yield from stack_experts(group, num_experts, prefix).items()
            del pending[prefix]
    for prefix, group in pending.items():
        try:
            stack_experts(group, num_experts, prefix)
        except KeyError as e:
            raise CheckpointError(f"{reader.path}: {e.args[0]}") from None


def has_mtp_weights(names, num_hidden_layers: int) -> bool:
    """Whether a V2/V3 checkpoint holds any MTP tensor (`model.layers.{>= num_hidden_layers}.*`).
    transformers' `save_pretrained` writes none although its config keeps num_nextn_predict_layers=1."""
    return any(layer_of(n) >= num_hidden_layers for n in names)
