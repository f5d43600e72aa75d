"""A conversion plan's pieces: every output tensor is (name, dtype, shape) plus the list of
pieces that produce its bytes (a whole source tensor, or rows of one slice of a stacked one),
each read, FP8/FP4-dequantised and cast only when it is written."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from .fp8 import block_quant
from .mapping import dequantise, is_quantised
from .reader import CheckpointReader
from .safetensors_io import DTYPES, CheckpointError, from_float32, to_float32


@dataclass
class Piece:
    """How to produce part of an output tensor: read `src` (all of it, or rows [r0, r1) of slice
    `index` of a stacked tensor), decode, and encode as the output tag ('raw' keeps the bytes)."""
    src: str
    index: Optional[int] = None
    r0: int = 0
    r1: Optional[int] = None
    quant: Optional[str] = None  # 'codes' | 'scale': FP8 block re-quantisation outputs


@dataclass
class OutTensor:
    name: str
    tag: str
    shape: Tuple[int, ...]
    pieces: List[Piece] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.tag].itemsize


def produce(reader: CheckpointReader, piece: Piece, out_tag: str) -> np.ndarray:
    """The storage array of one piece, in the output dtype."""
    if piece.index is None:
        tag, arr = reader.get(piece.src)
    else:
        tag, arr = reader.get_rows(piece.src, piece.index, piece.r0, piece.r1)
    if piece.quant is None and tag == out_tag:
        return arr  # byte-exact copy (also quantised tensors kept as they are: V4's MTP block)
    if is_quantised(reader, piece.src, tag):
        f32 = dequantise(reader, piece.src, tag, arr)
    else:
        f32 = to_float32(tag, arr)
    if piece.quant is not None:
        codes, scale = block_quant(f32)
        return codes if piece.quant == "codes" else scale
    if out_tag not in ("F32", "F16", "BF16"):
        raise CheckpointError(f"{reader.weight_map[piece.src]}: cannot convert tensor {piece.src!r} from {tag} to {out_tag}")
    return from_float32(f32, out_tag)
