"""Reading checkpoint directories: HF releases and this stack's own output.

A directory holds `model.safetensors`, or shards listed by `model.safetensors.index.json`,
or PyTorch `pytorch_model.bin` / `pytorch_model.bin.index.json` (read with
`torch.load(weights_only=True)`, never unpickling arbitrary objects). Index entries must
stay inside the directory; a file they name must exist and hold the tensor.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from .safetensors_io import CheckpointError, SafetensorsFile, Tagged, tag_of

ST_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
CKPT_INDEX = "model.ckpt.index.json"
TRAINING_FILES = ("optimizer.safetensors", "adapter.safetensors")  # beside the model in training checkpoints


def _inside(directory: str, rel: str, index_path: str) -> str:
    if os.path.isabs(rel) or rel.startswith(("/", "\\")):
        raise CheckpointError(f"{index_path}: shard path {rel!r} is absolute; refusing paths outside the checkpoint")
    full = os.path.realpath(os.path.join(directory, rel))
    root = os.path.realpath(directory)
    if os.path.commonpath([full, root]) != root:
        raise CheckpointError(f"{index_path}: shard path {rel!r} points outside the checkpoint directory; refusing it")
    return full


class _TorchBinFile:
    """A PyTorch .bin state dict, loaded safely (weights only) and exposed like SafetensorsFile."""

    def __init__(self, path: str):
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{path}: reading PyTorch .bin files needs torch (pip install torch==2.13.0)") from None
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            if "Weights only load failed" in str(e):
                # torch's own message goes on to suggest weights_only=False, which would run the
                # file's code: name the file and the safe way instead
                raise CheckpointError(f"{path}: holds pickled objects or code besides tensors, so it is not loaded; "
                                      "convert it to safetensors where it came from (where its code is trusted)") from None
            raise CheckpointError(f"{path}: not a loadable weights-only PyTorch file ({str(e).splitlines()[0][:200]})") from None
        self.path = path
        self.tensors: Dict[str, Tagged] = {}
        for name, t in sd.items():
            if t.dtype == torch.bfloat16:
                self.tensors[name] = ("BF16", t.contiguous().view(torch.int16).numpy().view(np.uint16))
            elif t.dtype == getattr(torch, "float8_e4m3fn", None):
                self.tensors[name] = ("F8_E4M3", t.contiguous().view(torch.uint8).numpy())
            else:
                arr = t.contiguous().numpy()
                self.tensors[name] = (tag_of(arr), arr)

    def keys(self) -> List[str]:
        return list(self.tensors)

    def info(self, name: str) -> Tuple[str, Tuple[int, ...]]:
        tag, arr = self.tensors[name]
        return tag, tuple(arr.shape)

    def nbytes(self, name: str) -> int:
        return self.tensors[name][1].nbytes

    def get(self, name: str, copy: bool = True) -> Tagged:
        tag, arr = self.tensors[name]
        return tag, (arr.copy() if copy else arr)

    def get_rows(self, name: str, index: int, row_start: int = 0, row_end=None) -> Tagged:
        tag, arr = self.tensors[name]
        return tag, arr[index][row_start:row_end].copy()

    def close(self) -> None:
        self.tensors = {}


class CheckpointReader:
    """name -> tensor over all files of a checkpoint directory (or a single file)."""

    def __init__(self, path: str):
        self.path = path
        self.directory = path if os.path.isdir(path) else os.path.dirname(path)
        self.weight_map: Dict[str, str] = {}
        self.index_metadata: Dict = {}
        self._open: Dict[str, object] = {}
        if not os.path.exists(path):
            raise CheckpointError(f"{path}: checkpoint not found")
        if os.path.isfile(path):
            files = [path]
            self._map_files(files)
        elif any(os.path.isfile(os.path.join(path, i)) for i in (ST_INDEX, BIN_INDEX, CKPT_INDEX)):
            index = next(os.path.join(path, i) for i in (ST_INDEX, BIN_INDEX, CKPT_INDEX)
                         if os.path.isfile(os.path.join(path, i)))
            self._read_index(index)
        else:
            # a training checkpoint also holds optimizer.safetensors: the model is model*.safetensors
            files = sorted(glob.glob(os.path.join(path, "model*.safetensors"))) or \
                [f for f in sorted(glob.glob(os.path.join(path, "*.safetensors")))
                 if not os.path.basename(f).startswith("optimizer")]
            for single in ("pytorch_model.bin", "model.ckpt"):
                if not files and os.path.isfile(os.path.join(path, single)):
                    files = [os.path.join(path, single)]
            if not files:
                raise CheckpointError(f"{path}: no model.safetensors, index file or pytorch_model.bin found")
            if any(re.search(r"-of-\d+\.(safetensors|bin|ckpt)$", f) for f in files):
                raise CheckpointError(f"{path}: sharded checkpoint without its index file (incomplete or "
                                      f"interrupted conversion?)")
            self._map_files(files)
        self.stored: Dict[str, str] = {}  # canonical name -> name in the file, where they differ
        cfg = self.config() if os.path.isdir(path) else None
        if isinstance(cfg, dict) and cfg.get("model_type") == "deepseek_v4":
            self._use_v4_names()

    def _use_v4_names(self) -> None:
        """Expose V4 release names (`layers.0.attn.wq_a.weight`) as transformers names."""
        from .v4_names import canonical_v4_names
        try:
            mapping = canonical_v4_names(self.weight_map)
        except ValueError as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        self.stored = {c: s for c, s in mapping.items() if c != s}
        self.weight_map = {c: self.weight_map[s] for c, s in mapping.items()}

    def _read_index(self, index: str) -> None:
        try:
            with open(index, "r", encoding="utf-8") as f:
                data = json.load(f)
            wm = data["weight_map"]
            assert isinstance(wm, dict)
        except (json.JSONDecodeError, KeyError, AssertionError):
            raise CheckpointError(f"{index}: not a valid index (needs a 'weight_map' object)") from None
        self.index_metadata = data.get("metadata", {}) or {}
        for name, rel in wm.items():
            full = _inside(self.directory, rel, index)
            if not os.path.isfile(full):
                raise CheckpointError(f"{index}: tensor {name!r} is mapped to missing file {rel!r}")
            self.weight_map[name] = full
        listed = set(self.weight_map.values())
        strays = [n for n in sorted(os.listdir(self.directory)) if re.search(r"\.(safetensors|bin|ckpt)$", n)
                  and n not in TRAINING_FILES and os.path.realpath(os.path.join(self.directory, n)) not in listed]
        if strays:
            raise CheckpointError(f"{index}: the index and the files disagree: {strays[0]!r} is not listed in it "
                                  f"({len(strays)} unlisted weight file(s); left from an earlier conversion?)")
        for full in sorted(listed):
            f = self._file(full)
            for name, fpath in self.weight_map.items():
                if fpath == full and name not in f.keys():
                    raise CheckpointError(f"{full}: tensor {name!r} listed in {os.path.basename(index)} is missing "
                                          f"from the file")

    def _map_files(self, files: List[str]) -> None:
        for full in files:
            for name in self._file(full).keys():
                if name in self.weight_map:
                    raise CheckpointError(f"{full}: tensor {name!r} also appears in {self.weight_map[name]}")
                self.weight_map[name] = full

    def _file(self, full: str):
        if full not in self._open:
            if full.endswith(".bin"):
                self._open[full] = _TorchBinFile(full)
            elif full.endswith(".ckpt"):
                from .formats import MsCkptFile
                self._open[full] = MsCkptFile(full)
            else:
                self._open[full] = SafetensorsFile(full)
        return self._open[full]

    # ---- access -----------------------------------------------------------------------
    def names(self) -> List[str]:
        return list(self.weight_map)

    def files(self) -> List[str]:
        return sorted(set(self.weight_map.values()))

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def info(self, name: str) -> Tuple[str, Tuple[int, ...]]:
        return self._file(self.weight_map[name]).info(self.stored.get(name, name))

    def nbytes(self, name: str) -> int:
        return self._file(self.weight_map[name]).nbytes(self.stored.get(name, name))

    def get(self, name: str, copy: bool = True) -> Tagged:
        if name not in self.weight_map:
            raise CheckpointError(f"{self.path}: tensor {name!r} not found")
        return self._file(self.weight_map[name]).get(self.stored.get(name, name), copy)

    def get_rows(self, name: str, index: int, row_start: int = 0, row_end=None) -> Tagged:
        """Rows [row_start, row_end) of slice `index` of a stacked tensor."""
        return self._file(self.weight_map[name]).get_rows(self.stored.get(name, name), index, row_start, row_end)

    def close_file(self, full: str) -> None:
        f = self._open.pop(full, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        for full in list(self._open):
            self.close_file(full)

    def config(self) -> Optional[Dict]:
        cfg = os.path.join(self.directory, "config.json")
        if os.path.isfile(cfg):
            with open(cfg, "r", encoding="utf-8") as f:
                return json.load(f)
        return None
