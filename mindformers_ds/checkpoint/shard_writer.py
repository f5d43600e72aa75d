"""Writing a conversion plan as shard files: grouping tensors into shards of at most
`--max-shard-size`, streaming each shard to a temp file and renaming it, several shards in
parallel processes, the side files, and the index last (it marks the output complete). A shard
already in place with exactly the planned header is kept, so an interrupted conversion resumes
where it stopped; weight files that are not part of this plan (an earlier attempt's) are removed."""
from __future__ import annotations

import os
import re
import shutil
from typing import Dict, List, Optional

import numpy as np

from ..utils.io import atomic_write_json
from .plan import OutTensor, produce
from .reader import BIN_INDEX, CKPT_INDEX, ST_INDEX, CheckpointReader
from .safetensors_io import CheckpointError, SafetensorsFile

WEIGHT_FILE = re.compile(r"\.(safetensors|bin|ckpt)$")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*", str(text), re.I)
    if not m:
        raise ValueError(f"bad size {text!r} (e.g. 5GB, 500MB)")
    unit = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12}
    return int(float(m.group(1)) * unit[m.group(2).upper()])


def assign_shards(plan: List[OutTensor], max_bytes: int, stem: str, ext: str,
                  source_index: Optional[Dict[str, str]] = None) -> Dict[str, List[OutTensor]]:
    """Group the plan into shard files; reuse the shard names of `source_index` when it covers
    every tensor (so a round trip reproduces the original index)."""
    if source_index and all(t.name in source_index for t in plan):
        shards: Dict[str, List[OutTensor]] = {}
        for t in plan:
            shards.setdefault(source_index[t.name], []).append(t)
        return shards
    groups: List[List[OutTensor]] = [[]]
    size = 0
    for t in plan:
        if groups[-1] and size + t.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) == 1:
        return {f"{stem}.{ext}": groups[0]}
    n = len(groups)
    return {f"{stem}-{i + 1:05d}-of-{n:05d}.{ext}": g for i, g in enumerate(groups)}


def _shard_done(path: str, tensors: List[OutTensor]) -> bool:
    """A shard already written with exactly the planned header (resuming an interrupted run)."""
    if not os.path.isfile(path):
        return False
    try:
        with SafetensorsFile(path) as f:
            return [(n, f.info(n)) for n in f.keys()] == [(t.name, (t.tag, t.shape)) for t in tensors]
    except CheckpointError:
        return False


def _pieces(reader: CheckpointReader, t: OutTensor):
    for p in t.pieces:
        yield produce(reader, p, t.tag)


def _write_shard(src: str, path: str, tensors: List[OutTensor], fmt: str, metadata: Dict[str, str], progress=None) -> str:
    reader = CheckpointReader(src)
    try:
        if fmt == "safetensors":
            if _shard_done(path, tensors):
                if progress:
                    progress(sum(t.nbytes for t in tensors))
                return "kept"
            from .safetensors_io import write_safetensors_stream
            entries = [(t.name, t.tag, t.shape, _pieces(reader, t)) for t in tensors]
            write_safetensors_stream(path, entries, metadata, progress)
        else:
            from .formats import write_other
            write_other(path, fmt, [(t.name, t.tag, np.concatenate(
                [produce(reader, p, t.tag).reshape(-1) for p in t.pieces]).reshape(t.shape)) for t in tensors], progress)
        return "written"
    finally:
        reader.close()


def _remove_strays(directory: str, planned) -> None:
    """Weight files and indexes an earlier, interrupted attempt with another plan left behind."""
    for name in os.listdir(directory):
        if (WEIGHT_FILE.search(name) and name not in planned) or name in (ST_INDEX, BIN_INDEX, CKPT_INDEX):
            os.remove(os.path.join(directory, name))


def _worker(args):
    return _write_shard(*args)


def write_plan(src: str, dst: str, plan: List[OutTensor], fmt: str, max_shard: int, workers: int,
               metadata: Dict[str, str], source_index: Optional[Dict[str, str]] = None, bar: bool = True,
               finish=None) -> Dict:
    """Write the shards, then `finish()` (config and side files), then the index: a directory
    interrupted at any point has no index (or no config.json) and is refused by readers. `dst` is
    the work directory of checkpoint/destination.py; the caller moves it into place."""
    os.makedirs(dst, exist_ok=True)
    ext = {"safetensors": "safetensors", "ckpt": "ckpt", "bin": "bin"}[fmt]
    stem = "pytorch_model" if fmt == "bin" else "model"
    shards = assign_shards(plan, max_shard, stem, ext, source_index)
    _remove_strays(dst, set(shards))
    total = sum(t.nbytes for t in plan)
    from tqdm import tqdm
    with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not bar) as pbar:
        jobs = [(src, os.path.join(dst, fname), ts, fmt, metadata) for fname, ts in shards.items()]
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp
            with mp.get_context("spawn").Pool(workers) as pool:
                for (_, _, ts, _, _), _res in zip(jobs, pool.imap(_worker, jobs)):
                    pbar.update(sum(t.nbytes for t in ts))
        else:
            for job in jobs:
                _write_shard(*job, progress=pbar.update)
    index_name = {"safetensors": ST_INDEX, "bin": BIN_INDEX, "ckpt": CKPT_INDEX}[fmt]
    weight_map = {t.name: fname for fname, ts in shards.items() for t in ts}
    if source_index:  # keep the original order and metadata so a round trip reproduces the index
        weight_map = {k: weight_map[k] for k in source_index if k in weight_map}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    if finish is not None:
        finish()
    if len(shards) > 1 or source_index:
        atomic_write_json(os.path.join(dst, index_name), index)   # last: marks the conversion complete
    return {"tensors": len(plan), "bytes": total, "shards": len(shards)}


def copy_side_files(src: str, dst: str, exclude=()) -> None:
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        s = os.path.join(src, name)
        if os.path.isfile(s) and name not in exclude:
            shutil.copyfile(s, os.path.join(dst, name))
