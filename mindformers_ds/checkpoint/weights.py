"""Model weights in and out of checkpoint directories (the model classes' `from_pretrained` /
`save_pretrained` call these; nothing here imports a model module).

`pretrained_config(path)` + `load_weights(model, path)` accept a HuggingFace directory (config.json + safetensors or .bin,
FP8 releases included: they are dequantised on the fly through the converter's code) or a
directory written by this stack (stacked experts). `save_pretrained(dir)` writes a directory
transformers can load (`layout="hf"`, per-expert tensors) or this stack's own layout
(`layout="mindspore"`, stacked experts, what training checkpoints use).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import mindspore as ms

from .mapping import has_mtp_weights, iter_internal, layer_of
from .names import is_mtp_passthrough, unstack_experts, STACKED_RE
from .reader import CheckpointReader
from .safetensors_io import CheckpointError, from_float32, write_safetensors
from ..utils.io import atomic_write_json
from ..models.deepseek.config import DeepseekConfig

log = logging.getLogger(__name__)


def _np_dtype(ms_dtype):
    """numpy dtype of a parameter (ms.dtype_to_nptype is deprecated since 2.7 and warns per call)."""
    return {ms.int32: np.int32, ms.int64: np.int64, ms.float16: np.float16}.get(ms_dtype, np.float32)


def load_weights(model, path: str, allow_missing_mtp: bool = True, layout=None) -> Dict[str, Any]:
    """Copy a checkpoint's tensors into `model`. Shapes must match the model's config
    (a checkpoint of another architecture is refused, naming the tensor); MTP layers absent
    from the checkpoint keep their initial values when `allow_missing_mtp`. `layout` (name ->
    (full shape, slicer)) loads a parallel rank's slices out of the full tensors."""
    reader = CheckpointReader(path)
    cfg = model.config
    params = {p.name: p for p in model.get_parameters()}
    loaded, skipped = set(), []
    try:
        for name, arr in iter_internal(reader, max(cfg.n_routed_experts, 1)):
            if name in params:
                p = params[name]
                want, slicer = layout(name) if layout is not None else (p.shape, None)
                if tuple(arr.shape) != tuple(want):
                    raise CheckpointError(f"{reader.weight_map.get(name, path)}: tensor {name!r} has shape "
                                          f"{list(arr.shape)} but the model config needs {list(want)} "
                                          f"(checkpoint of another architecture?)")
                value = slicer(arr) if slicer is not None else arr
                p.set_data(ms.Tensor(value.astype(_np_dtype(p.dtype), copy=False)))  # int tables stay ints
                loaded.add(name)
            elif is_mtp_passthrough(name, cfg.num_hidden_layers) or \
                    layer_of(name) >= cfg.num_hidden_layers + cfg.mtp_depth:
                skipped.append(name)
            else:
                raise CheckpointError(f"{reader.weight_map.get(name, path)}: tensor {name!r} has no place in a "
                                      f"{cfg.model_type} model with this config (checkpoint of another architecture?)")
    finally:
        reader.close()
    missing = sorted(set(params) - loaded)
    mtp_missing = [n for n in missing if layer_of(n) >= cfg.num_hidden_layers]
    other = [n for n in missing if n not in mtp_missing]
    if other or (mtp_missing and not allow_missing_mtp):
        first = (other or mtp_missing)[0]
        raise CheckpointError(f"{path}: checkpoint lacks tensor {first!r} "
                              f"({len(other) + len(mtp_missing)} missing in all)")
    if mtp_missing:
        log.warning("%s: no MTP weights in the checkpoint; %d MTP tensors keep their initial values",
                    path, len(mtp_missing))
    return {"loaded": len(loaded), "skipped": skipped, "initialised": mtp_missing}


def pretrained_config(path: str, **overrides: Any) -> DeepseekConfig:
    """The model config of a checkpoint directory (HF or this stack's), checked, with `overrides`
    applied; a checkpoint without MTP weights (transformers saves none) gives a config without
    MTP modules, as transformers loads it."""
    from .manager import check_model_dir
    check_model_dir(path)
    cfg_path = os.path.join(path, "config.json")
    cfg = DeepseekConfig.from_hf_file(cfg_path)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    problems = cfg.problems()
    if problems:
        raise CheckpointError(f"{cfg_path}: " + problems[0][1].replace("{p}", ""))
    if cfg.mtp_depth:
        reader = CheckpointReader(path)
        try:
            present = has_mtp_weights(reader.names(), cfg.num_hidden_layers)
        finally:
            reader.close()
        if not present:
            log.info("%s: no MTP weights (config.json says num_nextn_predict_layers=%d); the model has no MTP module",
                     path, cfg.num_nextn_predict_layers)
            cfg = dataclasses.replace(cfg, num_nextn_predict_layers=0)
    return cfg


def model_tensors(model, layout: str = "hf") -> Iterator[Tuple[str, np.ndarray]]:
    for p in model.get_parameters():
        if not p.name.startswith(("model.", "lm_head.")):
            continue  # adapters, optimizer state
        arr = p.asnumpy()
        if layout == "hf" and STACKED_RE.match(p.name):
            yield from unstack_experts(p.name, arr)
        else:
            yield p.name, arr


def save_pretrained(model, directory: str, layout: str = "hf", dtype: str = "F32",
                    extra_config: Optional[Dict[str, Any]] = None) -> str:
    """Write config.json and model.safetensors (atomically) into `directory`."""
    os.makedirs(directory, exist_ok=True)
    items = []
    for name, arr in model_tensors(model, layout):
        if np.issubdtype(arr.dtype, np.integer):  # V4's hash table: int64, as transformers keeps it
            items.append((name, "I64", np.ascontiguousarray(arr, np.int64)))
            continue
        # the router correction bias stays float32 in every release
        tag = "F32" if name.endswith("e_score_correction_bias") else dtype
        items.append((name, tag, from_float32(np.ascontiguousarray(arr, np.float32), tag)))
    write_safetensors(os.path.join(directory, "model.safetensors"), items, {"format": "pt", "layout": layout})
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype]
    cfg.update(extra_config or {})
    atomic_write_json(os.path.join(directory, "config.json"), cfg)
    return directory
