"""The CPU kernel library called straight from numpy through ctypes, for callers outside a
MindSpore graph (the checkpoint converter). Importing this module does not import MindSpore."""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np

from . import build

_FP8_BLOCK = 128  # the kernel's block size: DeepSeek's weight_scale_inv blocks


def fp8_block_dequant(codes: np.ndarray, scale: np.ndarray, block: int = _FP8_BLOCK) -> Optional[np.ndarray]:
    """float32 W = e4m3(codes) * scale[i // 128, j // 128] by the C++ kernel (ops/cpu/fp8.cc),
    or None when it does not apply (another block size) or the library is not available."""
    if block != _FP8_BLOCK or codes.ndim != 2:
        return None
    lib = build.library()
    if lib is None:
        return None
    fn = ctypes.CDLL(lib).mfds_fp8_block_dequant
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    codes = np.ascontiguousarray(codes, np.uint8)
    scale = np.ascontiguousarray(scale, np.float32)
    out = np.empty(codes.shape, np.float32)
    fn(codes.ctypes.data, scale.ctypes.data, out.ctypes.data, codes.shape[0], codes.shape[1], block)
    return out
