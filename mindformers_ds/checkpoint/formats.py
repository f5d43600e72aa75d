"""Checkpoint formats other than safetensors: MindSpore `.ckpt` and PyTorch `.bin`.

Neither format can be written piece by piece, so a shard is built in memory: keep shards of
these formats small (`--max-shard-size`). `.bin` is read back with `torch.load(weights_only=True)`
(reader.py); `.ckpt` with `mindspore.load_checkpoint`.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np

from ..utils.io import atomic_path
from .safetensors_io import CheckpointError, Tagged, bf16_to_f32, f32_to_bf16, tag_of


def write_other(path: str, fmt: str, items: List[Tuple[str, str, np.ndarray]], progress=None) -> None:
    if fmt == "ckpt":
        _write_ckpt(path, items)
    elif fmt == "bin":
        _write_bin(path, items)
    else:
        raise ValueError(fmt)
    if progress:
        progress(sum(a.nbytes for _, _, a in items))


def _write_ckpt(path: str, items) -> None:
    import mindspore as ms
    out = []
    for name, tag, arr in items:
        if tag == "BF16":
            t = ms.Tensor(bf16_to_f32(arr)).astype(ms.bfloat16)
        elif tag.startswith("F8_"):
            raise CheckpointError(f"{path}: tensor {name!r}: MindSpore .ckpt cannot hold {tag}; convert with --dtype bf16")
        else:
            t = ms.Tensor(arr)
        out.append({"name": name, "data": t})
    with atomic_path(path) as tmp:
        ms.save_checkpoint(out, tmp + ".ckpt")
        os.replace(tmp + ".ckpt", tmp)


def _write_bin(path: str, items) -> None:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: writing .bin needs torch (pip install torch==2.13.0)") from None
    sd = {}
    for name, tag, arr in items:
        t = torch.from_numpy(np.ascontiguousarray(arr).copy())
        if tag == "BF16":
            t = t.view(torch.int16).view(torch.bfloat16) if t.dtype != torch.int16 else t.view(torch.bfloat16)
        elif tag == "F8_E4M3":
            t = t.view(torch.float8_e4m3fn)
        sd[name] = t
    with atomic_path(path) as tmp:
        torch.save(sd, tmp)


class MsCkptFile:
    """A MindSpore .ckpt, loaded whole and exposed like SafetensorsFile."""

    def __init__(self, path: str):
        import mindspore as ms
        try:
            params = ms.load_checkpoint(path)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({str(e).splitlines()[0][:200]})") from None
        self.path = path
        self.tensors: Dict[str, Tagged] = {}
        for name, p in params.items():
            if p.dtype == ms.bfloat16:
                self.tensors[name] = ("BF16", f32_to_bf16(p.astype(ms.float32).asnumpy()))
            else:
                arr = p.asnumpy()
                self.tensors[name] = (tag_of(arr), arr)

    def keys(self):
        return list(self.tensors)

    def info(self, name):
        tag, arr = self.tensors[name]
        return tag, tuple(arr.shape)

    def nbytes(self, name):
        return self.tensors[name][1].nbytes

    def get(self, name, copy=True):
        tag, arr = self.tensors[name]
        return tag, (arr.copy() if copy else arr)

    def get_rows(self, name, index, row_start=0, row_end=None):
        tag, arr = self.tensors[name]
        return tag, arr[index][row_start:row_end].copy()

    def close(self):
        self.tensors = {}
