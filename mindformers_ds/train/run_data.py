"""A run's data: train rows (from the JSONL files or the MindRecord cache), eval rows, the raw
eval records scored by exact match, and the step-indexed batch loader."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..config import RunConfig
from ..data.datasets import DataError, load_samples, read_jsonl
from ..data.loader import BatchLoader
from ..data.packing import build_rows, fit_length

log = logging.getLogger("mindformers_ds.train")


@dataclass
class RunData:
    rows: object
    eval_rows: Optional[object]
    eval_records: List[Dict]
    loader: BatchLoader
    stats: Dict[str, int] = field(default_factory=dict)


def build_run_data(cfg: RunConfig, tok, dp: int, dp_rank: int) -> RunData:
    from ..data import mindrecord
    d, t = cfg.data, cfg.train
    eval_records = [r for _, r in read_jsonl(d.eval_file)] if d.eval_file else []
    cached = mindrecord.load_or_none(d, "train") if d.eval_fraction == 0 else None
    n_trunc = n_drop = n_train = 0
    evals = load_samples(d.eval_file, tok, d.format) if d.eval_file else []
    if cached is not None:
        rows = cached
        log.info("train rows read from the MindRecord cache %s", mindrecord.cache_path(d, "train"))
    else:
        train = load_samples(d.train_file, tok, d.format, d.max_samples)
        if not d.eval_file and d.eval_fraction > 0:
            n_eval = int(len(train) * d.eval_fraction)
            evals, train = train[len(train) - n_eval:], train[:len(train) - n_eval]
        train, n_trunc, n_drop = fit_length(train, d.seq_length, d.overlong)
        if not train:
            raise DataError(f"{d.train_file}: no sample fits data.seq_length={d.seq_length} with data.overlong=drop")
        n_train = len(train)
        rows = build_rows(train, d.seq_length, tok.pad_id, d.packing)
    evals, _, _ = fit_length(evals, d.seq_length, d.overlong)
    eval_rows = build_rows(evals, d.seq_length, tok.pad_id, d.packing) if evals else None
    log.info("data: %s train samples -> %d rows of %d tokens (packing=%s; %d truncated, %d dropped as longer "
             "than seq_length); %d eval samples", n_train or "cached", len(rows), d.seq_length, d.packing,
             n_trunc, n_drop, len(evals))
    stats = {"train_samples": n_train, "train_rows": len(rows), "truncated": n_trunc, "dropped": n_drop,
             "eval_samples": len(evals)}
    # with pipeline stages a step is parallel.micro_batches micro-batches of train.micro_batch_size rows
    # (MindFormers' meaning), times grad_accum_steps
    accum = t.grad_accum_steps * (cfg.parallel.micro_batches if cfg.parallel.pp > 1 else 1)
    loader = BatchLoader(rows, t.micro_batch_size, accum, dp, dp_rank, t.seed, d.shuffle,
                         cfg.model.mtp_depth)  # 0 for V4, whose release MTP block the model does not build
    return RunData(rows, eval_rows, eval_records, loader, stats)
