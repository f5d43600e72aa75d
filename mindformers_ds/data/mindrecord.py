"""A MindRecord cache of tokenised, packed rows (`mfds data prepare`).

The cache file name carries a fingerprint of everything that shapes the rows (data files'
bytes, tokenizer file, chat template, seq_length, packing, overlong policy, max_samples), so
the trainer uses a cache only when it matches and otherwise rebuilds rows from JSONL.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Tuple

import numpy as np

from .packing import Rows

FIELDS = ("input_ids", "labels", "position_ids", "segment_ids")


def _file_digest(path: Optional[str], h) -> None:
    if not path:
        h.update(b"-")
        return
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def fingerprint(data_cfg, split: str) -> str:
    h = hashlib.sha256()
    for path in (data_cfg.train_file if split == "train" else data_cfg.eval_file, data_cfg.tokenizer):
        tok = os.path.join(path, "tokenizer.json") if path and os.path.isdir(path) else path
        _file_digest(tok, h)
    h.update(json.dumps([split, data_cfg.format, data_cfg.chat_template, data_cfg.seq_length, data_cfg.packing,
                         data_cfg.overlong, data_cfg.max_samples]).encode())
    return h.hexdigest()[:16]


def cache_path(data_cfg, split: str) -> str:
    """`CACHE/<split>-<fingerprint>/rows.mindrecord` (MindRecord files may not be renamed, so the
    directory is written under a temp name and renamed when complete)."""
    return os.path.join(data_cfg.cache_dir, f"{split}-{fingerprint(data_cfg, split)}", "rows.mindrecord")


def write_rows(path: str, rows: Rows) -> None:
    import shutil
    import tempfile
    from mindspore.mindrecord import FileWriter
    final_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(os.path.dirname(final_dir), exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(final_dir))
    try:
        writer = FileWriter(os.path.join(tmp_dir, os.path.basename(path)), shard_num=1, overwrite=True)
        writer.add_schema({k: {"type": "int32", "shape": [-1]} for k in FIELDS}, "rows")
        writer.write_raw_data([{k: getattr(rows, k)[i] for k in FIELDS} for i in range(len(rows))])
        writer.commit()
        if os.path.isdir(final_dir):
            shutil.rmtree(final_dir)
        os.replace(tmp_dir, final_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def read_rows(path: str) -> Rows:
    from mindspore.mindrecord import FileReader
    reader = FileReader(path)
    cols = {k: [] for k in FIELDS}
    for item in reader.get_next():
        for k in FIELDS:
            cols[k].append(np.asarray(item[k], np.int32))
    reader.close()
    return Rows(*(np.stack(cols[k]) for k in FIELDS))


def load_or_none(data_cfg, split: str) -> Optional[Rows]:
    if not data_cfg.cache_dir:
        return None
    path = cache_path(data_cfg, split)
    return read_rows(path) if os.path.isfile(path) and os.path.isfile(path + ".db") else None


def prepare(cfg, out_dir: Optional[str] = None) -> str:
    """Tokenise and pack the config's train (and eval) data into MindRecord files."""
    import dataclasses
    from .datasets import load_samples
    from .packing import build_rows, fit_length
    from .tokenizer import Tokenizer
    d = cfg.data if out_dir is None else dataclasses.replace(cfg.data, cache_dir=out_dir)
    if not d.cache_dir:
        raise ValueError("give --out DIR or data.cache_dir")
    tok = Tokenizer(d.tokenizer, d.chat_template)
    written = []
    for split, path in (("train", d.train_file), ("eval", d.eval_file)):
        if not path:
            continue
        samples, n_trunc, n_drop = fit_length(load_samples(path, tok, d.format, d.max_samples if split == "train"
                                                           else None), d.seq_length, d.overlong)
        rows = build_rows(samples, d.seq_length, tok.pad_id, d.packing)
        target = cache_path(d, split)
        write_rows(target, rows)
        written.append(f"{split}: {len(samples)} samples -> {len(rows)} rows ({n_trunc} truncated, "
                       f"{n_drop} dropped) in {target}")
    return "\n".join(written)
