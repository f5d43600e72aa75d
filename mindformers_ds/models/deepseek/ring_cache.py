"""Fixed-size ring caches for decoding (V4's sliding window and its compressors' open windows).

A ring of P slots keeps the last P positions of a sequence: position p lives in slot p % P. As of
position `last`, slot j holds p_j = last - ((last - j) mod P), the latest position <= last in that
slot, and nothing when p_j < 0 (fewer than P positions so far). Shapes are static, rows decode
at positions of their own, and slots are written by blending with a one-hot row (exact: the
other slots are multiplied by 1 and added 0).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops


def ring_positions(last, slots: int):
    """p_j [B, P] for last [B]: the position each slot holds (negative: none yet)."""
    last = last.reshape(-1, 1)
    j = ops.arange(slots, dtype=ms.int32).reshape(1, slots)
    return last - (last - j + slots) % slots     # last - j + P > 0: the remainder is the plain one


def ring_from_sequence(seq, last, slots: int, fill: float):
    """The ring [B, P, C] of a whole sequence seq [B, L, C] as of position last [B]; slots
    holding no position get `fill`."""
    b, _, c = seq.shape
    p = ring_positions(last, slots)
    picked = ops.gather_elements(seq, 1, ops.broadcast_to(ops.maximum(p, 0).expand_dims(-1), (b, slots, c)))
    return ops.where((p >= 0).expand_dims(-1), picked, ops.full_like(picked, fill))


def one_hot_rows(index, size: int, dtype=ms.float32):
    """[B, size, 1]: 1 at row index[b] (no row where index is outside 0..size-1)."""
    rows = ops.arange(size, dtype=ms.int32).reshape(1, size)
    return (rows == index.reshape(-1, 1)).astype(dtype).expand_dims(-1)


def blend_rows(cache, value, put):
    """cache [B, P, C] with value [B, 1, C] where put [B, P, 1] is 1."""
    return cache * (1.0 - put) + value * put
