"""Attention masks shared by training, prefill and decoding."""
from __future__ import annotations

import mindspore as ms
from mindspore import ops


def attention_mask(batch: int, seq: int, segment_ids=None):
    """Causal mask [B|1, 1, S, S] (True = may attend); with segment ids it is block-diagonal,
    so packed samples never see each other."""
    pos = ops.arange(seq, dtype=ms.int32)
    causal = (pos.expand_dims(0) <= pos.expand_dims(1)).reshape(1, 1, seq, seq)
    if segment_ids is None:
        return causal
    same = segment_ids.expand_dims(2) == segment_ids.expand_dims(1)
    return ops.logical_and(causal, same.expand_dims(1))
