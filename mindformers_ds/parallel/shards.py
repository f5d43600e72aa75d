"""Distributed checkpoints: per-rank shards described by the layout table.

    step_N/layout.json            dp/tp/ep/pp, each rank's coordinates, each parameter's full
                                  shape, split {axis: dim} and pipeline stage (with ZeRO-1 also
                                  `opt_split`: its moments' split, the rows one more axis)
    step_N/rank_R/model.safetensors, rank_R/optimizer.safetensors   this rank's slices
    step_N/config.json, trainer_state.json (last)

Writing one during training is shard_save.py's job (synchronously, or in the background).
Loading works under any layout: a rank whose layout equals the saved one reads its own file;
otherwise each tensor is reassembled from the saved pieces
and cut for the new layout. `mfds convert merge/split` go between this and a single full file.
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..checkpoint import destination, manager
from ..checkpoint.integrity import write_manifest
from ..checkpoint.safetensors_io import CheckpointError, SafetensorsFile, write_safetensors
from ..utils.io import atomic_write_json, read_json
from .layout import ParamLayout, layout_table, shared_parameters, stage_keeps

LAYOUT_FILE = "layout.json"
OPT_PREFIXES = ("optimizer.exp_avg.", "optimizer.exp_avg_sq.")


def _base(name: str) -> str:
    for p in OPT_PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def layout_doc(table: Dict[str, ParamLayout], sizes: Dict[str, int], coords: Dict[int, Dict[str, int]],
               opt_table: Optional[Dict[str, ParamLayout]] = None) -> Dict:
    """`opt_split`: how the optimizer's moments of a parameter are split when not as the parameter
    (ZeRO's rows, parallel/zero.py)."""
    params = {}
    for n, p in table.items():
        params[n] = {"shape": list(p.shape), "split": p.split, "stage": p.stage}
        if opt_table and opt_table[n].split != p.split:
            params[n]["opt_split"] = opt_table[n].split
    return {"sizes": sizes, "ranks": {str(r): c for r, c in coords.items()}, "params": params}


def _saved_split(info: Optional[Dict], name: str) -> Dict[str, int]:
    """How tensor `name` (a parameter or one of its optimizer moments) is split in the shards."""
    if not info:
        return {}
    return info.get("opt_split", info["split"]) if name != _base(name) else info["split"]


def coords_of(rank: int, ctx) -> Dict[str, int]:
    from .comm import ParallelContext
    return ParallelContext(ctx.world, rank, ctx.dp, ctx.tp, ctx.ep, pp=ctx.pp).coords()


class ShardedCheckpoint:
    """Read full tensors (or any layout's slices) out of a sharded or a full checkpoint."""

    def __init__(self, path: str):
        self.path = path
        layout_path = os.path.join(path, LAYOUT_FILE)
        self.sharded = os.path.isfile(layout_path)
        if self.sharded:
            self.doc = read_json(layout_path, CheckpointError)
            self.sizes = self.doc["sizes"]
            self.ranks = {int(r): c for r, c in self.doc["ranks"].items()}
        self._files: Dict[Tuple[int, str], SafetensorsFile] = {}

    def _file(self, rank: Optional[int], filename: str) -> SafetensorsFile:
        key = (rank, filename)
        if key not in self._files:
            sub = os.path.join(self.path, f"rank_{rank}", filename) if rank is not None else os.path.join(self.path, filename)
            self._files[key] = SafetensorsFile(sub)
        return self._files[key]

    def names(self, filename: str) -> List[str]:
        """Every tensor of `filename`: each pipeline stage's first rank holds that stage's names."""
        if not self.sharded:
            return self._file(None, filename).keys()
        seen: Dict[str, None] = {}
        for r in self._stage_heads():
            for n in self._file(r, filename).keys():
                seen.setdefault(n, None)
        return list(seen)

    def _stage_heads(self) -> List[int]:
        heads: Dict[int, int] = {}
        for r in sorted(self.ranks):
            heads.setdefault(self.ranks[r].get("pp", 0), r)
        return [heads[s] for s in sorted(heads)]

    def full(self, name: str, filename: str) -> np.ndarray:
        if not self.sharded:
            return self._file(None, filename).get_f32(name)
        info = self.doc["params"].get(_base(name))
        split = _saved_split(info, name)
        stage = info.get("stage", 0) if info else 0
        holders = {r: c for r, c in self.ranks.items() if c.get("pp", 0) == stage}
        if not split:
            return self._file(min(holders), filename).get_f32(name)
        pieces = {}
        axes = list(split)
        for r, c in holders.items():
            key = tuple(c[a] for a in axes)
            if key not in pieces:
                pieces[key] = self._file(r, filename).get_f32(name)
        layout = ParamLayout(name, tuple(info["shape"]), "", {a: int(d) for a, d in split.items()})
        return layout.unshard(pieces, self.sizes)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


def load_into(path: str, filename: str, params: Sequence, table: Optional[Dict[str, ParamLayout]], ctx) -> int:
    """Set this rank's `params` (model or optimizer state, `table` the layout of what they hold)
    from a checkpoint of any layout."""
    import mindspore as ms
    ck = ShardedCheckpoint(path)
    try:
        same = ck.sharded and ctx is not None and ck.sizes == ctx.sizes() and ck.ranks.get(ctx.rank) == ctx.coords()
        for p in params:
            base = table.get(_base(p.name)) if table else None
            split_now = base.split if base is not None else {}
            if same and _saved_split(ck.doc["params"].get(_base(p.name)), p.name) == split_now:
                arr = ck._file(ctx.rank, filename).get_f32(p.name)
            else:
                arr = ck.full(p.name, filename)
                if base is not None and ctx is not None:
                    arr = base.shard(arr, ctx.sizes(), ctx.coords())
            if tuple(arr.shape) != tuple(p.shape):
                raise CheckpointError(f"{path}: tensor {p.name!r} has shape {list(arr.shape)} for this rank, expected "
                                      f"{list(p.shape)} (checkpoint of another architecture?)")
            p.set_data(ms.Tensor(arr))
    finally:
        ck.close()
    return len(params)


def merge_checkpoint(src: str, dst: str, overwrite: bool = False) -> str:
    """Sharded checkpoint -> one full checkpoint (the single-process format). `dst` must be empty
    or absent unless `overwrite` (checkpoint/destination.py)."""
    ck = ShardedCheckpoint(src)
    if not ck.sharded:
        raise CheckpointError(f"{src}: no {LAYOUT_FILE}; not a sharded checkpoint")
    work = destination.begin(dst, overwrite, resume=False)
    try:
        for filename in ("model.safetensors", "optimizer.safetensors"):
            if not os.path.isfile(os.path.join(src, "rank_0", filename)):
                continue
            items = [(n, "F32", ck.full(n, filename)) for n in ck.names(filename)]
            write_safetensors(os.path.join(work, filename), items, {"layout": "mindspore"})
    finally:
        ck.close()
    _copy_side_files(src, work)
    write_manifest(work)
    destination.commit(work, dst)
    return f"merged {len(ck.ranks)} ranks of {src} into {dst}"



def _copy_side_files(src: str, dst: str) -> None:
    """config.json, the training state, the tokenizer and the run config travel with the weights,
    whatever the sharding."""
    for side in ("config.json", "tokenizer.json", "tokenizer_config.json", "run_config.yaml", manager.STATE_FILE):
        if os.path.isfile(os.path.join(src, side)):
            shutil.copyfile(os.path.join(src, side), os.path.join(dst, side))


def split_checkpoint(src: str, dst: str, cfg, overwrite: bool = False) -> str:
    """A full (or differently sharded) checkpoint -> the shards of `cfg.parallel` (dp x tp x pp ranks)."""
    from .comm import ParallelContext
    from .explicit import check_explicit_layout
    par = cfg.parallel
    world = par.dp * par.tp * par.pp
    check_explicit_layout(par, world, cfg.origin)
    table = layout_table(cfg.model, par)
    shared = shared_parameters(cfg.model, table, par.pp)
    ck = ShardedCheckpoint(src)
    work = destination.begin(dst, overwrite, resume=False)
    try:
        coords = {}
        for rank in range(world):
            ctx = ParallelContext(world, rank, par.dp, par.tp, par.ep, pp=par.pp)
            coords[rank] = ctx.coords()
            keep = stage_keeps(table, ctx.stage, shared)
            for filename in ("model.safetensors", "optimizer.safetensors"):
                src_file = os.path.join(src, "rank_0" if ck.sharded else "", filename)
                if not os.path.isfile(src_file):
                    continue
                items = []
                for n in ck.names(filename):
                    if not keep(_base(n)):
                        continue
                    arr = ck.full(n, filename)
                    if _base(n) in table:
                        arr = table[_base(n)].shard(arr, ctx.sizes(), ctx.coords())
                    items.append((n, "F32", np.array(arr, np.float32, order="C")))
                write_safetensors(os.path.join(work, f"rank_{rank}", filename), items, {"layout": "sharded"})
        sizes = ParallelContext(world, 0, par.dp, par.tp, par.ep, pp=par.pp).sizes()
        atomic_write_json(os.path.join(work, LAYOUT_FILE), layout_doc(table, sizes, coords))
    finally:
        ck.close()
    _copy_side_files(src, work)
    write_manifest(work)
    destination.commit(work, dst)
    return f"split {src} into {world} rank shards in {dst}"
