"""Samples -> fixed-length rows: input ids, labels, position ids and segment ids.

Without packing each sample gets its own row, right-padded (segment 0 = padding). With
packing, samples are placed greedily in order into rows of `seq_length`; every sample gets
its own segment id and position ids that restart at 0, and the model's block-diagonal mask
keeps attention (and next-token targets) inside a sample. Labels are aligned with the
inputs (the model shifts them) and are IGNORE_INDEX wherever the loss mask is 0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from .datasets import Sample

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


@dataclass
class Rows:
    input_ids: np.ndarray      # [R, S] int32
    labels: np.ndarray
    position_ids: np.ndarray
    segment_ids: np.ndarray

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def take(self, idx) -> "Rows":
        return Rows(self.input_ids[idx], self.labels[idx], self.position_ids[idx], self.segment_ids[idx])


def fit_length(samples: List[Sample], seq_length: int, overlong: str) -> Tuple[List[Sample], int, int]:
    """Truncate or drop samples longer than seq_length; returns (kept, n_truncated, n_dropped)."""
    kept, truncated, dropped = [], 0, 0
    for s in samples:
        if len(s.ids) <= seq_length:
            kept.append(s)
        elif overlong == "drop":
            dropped += 1
        else:
            kept.append(Sample(s.ids[:seq_length], s.mask[:seq_length], s.source))
            truncated += 1
    if truncated or dropped:
        log.info("samples longer than seq_length=%d: %d truncated, %d dropped", seq_length, truncated, dropped)
    return kept, truncated, dropped


def build_rows(samples: List[Sample], seq_length: int, pad_id: int, packing: bool) -> Rows:
    groups: List[List[Sample]] = []
    if packing:
        cur: List[Sample] = []
        used = 0
        for s in samples:
            if cur and used + len(s.ids) > seq_length:
                groups.append(cur)
                cur, used = [], 0
            cur.append(s)
            used += len(s.ids)
        if cur:
            groups.append(cur)
    else:
        groups = [[s] for s in samples]
    r = len(groups)
    ids = np.full((r, seq_length), pad_id, np.int32)
    labels = np.full((r, seq_length), IGNORE_INDEX, np.int32)
    pos = np.tile(np.arange(seq_length, dtype=np.int32), (r, 1))
    seg = np.zeros((r, seq_length), np.int32)
    for i, group in enumerate(groups):
        at = 0
        for j, s in enumerate(group, 1):
            n = len(s.ids)
            ids[i, at:at + n] = s.ids
            lab = np.where(np.asarray(s.mask, bool), np.asarray(s.ids, np.int32), IGNORE_INDEX)
            lab[0] = IGNORE_INDEX  # nothing before a sample's first token predicts it
            labels[i, at:at + n] = lab
            pos[i, at:at + n] = np.arange(n, dtype=np.int32)
            seg[i, at:at + n] = j
            at += n
    return Rows(ids, labels, pos, seg)


def target_count(labels: np.ndarray, segment_ids: np.ndarray, shift: int) -> int:
    """Targets the model scores at offset `shift` (1: next token, 1+d: MTP depth d): labels that
    are not ignored and lie in the same segment as the predicting position."""
    if shift >= labels.shape[1]:
        return 0
    lab = labels[:, shift:]
    same = segment_ids[:, shift:] == segment_ids[:, :-shift]
    return int(((lab != IGNORE_INDEX) & same).sum())
