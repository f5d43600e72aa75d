"""Synthetic checkpoints in the layout of DeepSeek's official releases, for tests and benchmarks.

Per-expert tensors, the MTP block at `model.layers.{L}` with its own copies of the embedding and
head, one shard per few layers with `model.safetensors.index.json`, and optionally FP8: every
attention/MLP/expert linear as float8_e4m3fn codes plus a float32 `weight_scale_inv`
[ceil(out/128), ceil(in/128)]; embeddings, head, norms, router and eh_proj in bf16, the
correction bias in float32 -- as in the V3/R1 release.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterator, List, Tuple

import numpy as np

from ..models.deepseek.config import DeepseekConfig
from ..models.deepseek.shapes import parameter_specs
from ..utils.io import atomic_write_json
from .conversion import FP8_LINEAR
from .fp8 import block_quant
from .names import unstack_experts
from .safetensors_io import f32_to_bf16, write_safetensors_stream


def hf_tensor_specs(cfg: DeepseekConfig) -> Iterator[Tuple[str, Tuple[int, ...]]]:
    """HF names and shapes of a release (per-expert; MTP with its embed/head copies)."""
    for name, shape, _ in parameter_specs(cfg):
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            dummy = np.empty((shape[0], 1, 1), np.uint8)
            for n, _ in unstack_experts(name, dummy):
                proj_shape = shape[1:] if "down_proj" in n else (shape[1] // 2, shape[2])
                yield n, tuple(proj_shape)
        else:
            yield name, tuple(shape)
        m = re.match(r"^model\.layers\.(\d+)\.eh_proj\.weight$", name)
        if m:
            yield f"model.layers.{m.group(1)}.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size)
            yield f"model.layers.{m.group(1)}.shared_head.head.weight", (cfg.vocab_size, cfg.hidden_size)


def _values(name: str, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, abs(hash(name)) % (2 ** 31)])
    if name.endswith("norm.weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)


def write_release(path: str, cfg: DeepseekConfig, fp8: bool = True, dtype: str = "BF16", seed: int = 0,
                  layers_per_shard: int = 2) -> Dict[str, str]:
    """Write a release-layout checkpoint of `cfg` to `path`; returns the weight map."""
    os.makedirs(path, exist_ok=True)
    specs = list(hf_tensor_specs(cfg))
    shared = {}  # MTP copies of embed/head equal the main tensors, as in the release

    def group(name: str) -> int:
        m = re.match(r"^model\.layers\.(\d+)\.", name)
        return 1 + int(m.group(1)) // layers_per_shard if m else 0

    n_groups = max(group(n) for n, _ in specs) + 1
    buckets: List[List[Tuple[str, Tuple[int, ...]]]] = [[] for _ in range(n_groups)]
    for n, s in specs:
        buckets[group(n)].append((n, s))
    buckets = [b for b in buckets if b]
    weight_map: Dict[str, str] = {}
    sizes = [0]
    for i, bucket in enumerate(buckets):
        fname = f"model-{i + 1:05d}-of-{len(buckets):05d}.safetensors"
        entries = []
        for name, shape in bucket:
            key = re.sub(r"^model\.layers\.\d+\.(embed_tokens|shared_head\.head)", lambda m: {
                "embed_tokens": "model.embed_tokens", "shared_head.head": "lm_head"}[m.group(1)], name)
            values = shared.get(key)
            if values is None:
                values = _values(key, shape, seed)
                if key in ("model.embed_tokens.weight", "lm_head.weight"):
                    shared[key] = values
            if name.endswith("e_score_correction_bias"):
                entries.append((name, "F32", shape, [values]))
            elif fp8 and FP8_LINEAR.search(name):
                codes, scale = block_quant(values)
                entries.append((name, "F8_E4M3", shape, [codes]))
                entries.append((name + "_scale_inv", "F32", scale.shape, [scale]))
            else:
                entries.append((name, dtype, shape, [f32_to_bf16(values) if dtype == "BF16" else
                                                     values.astype({"F32": np.float32, "F16": np.float16}[dtype])]))
        write_safetensors_stream(os.path.join(path, fname), entries, {"format": "pt"})
        sizes[0] += sum(sum(p.nbytes for p in pieces) for *_, pieces in entries)
        for name, *_ in entries:
            weight_map[name] = fname
    total = sizes[0]  # HF's total_size: bytes of tensor data
    atomic_write_json(os.path.join(path, "model.safetensors.index.json"),
                      {"metadata": {"total_size": total}, "weight_map": weight_map})
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = "bfloat16" if dtype == "BF16" else "float32"
    if fp8:
        hf["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": [128, 128]}
    atomic_write_json(os.path.join(path, "config.json"), hf)
    return weight_map
