"""FP4 (e2m1) weights with UE8M0 block scales, as DeepSeek-V4's quantised release ships its
routed experts, decoded in numpy (torch is not needed).

e2m1: 1 sign, 2 exponent (bias 1), 1 mantissa bit; exponent 0 is subnormal (m x 0.5), so the
16 codes are +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}. Two codes per byte, the low nibble first (the
element with the lower index). UE8M0: an unsigned exponent byte, scale = 2^(byte - 127),
0xFF is NaN. A weight W [out, in] is stored as packed bytes [out, in/2] plus a scale grid
[ceil(out/Br), ceil(in/Bc)] (block [1, 32] for the experts); edge blocks may be ragged.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def _e2m1_table() -> np.ndarray:
    codes = np.arange(16, dtype=np.int64)
    sign = np.where(codes & 0x8, -1.0, 1.0)
    exp, man = (codes >> 1) & 0x3, (codes & 0x1).astype(np.float64)
    val = np.where(exp == 0, man * 0.5, np.ldexp(1.0 + man / 2.0, exp - 1))
    return (sign * val).astype(np.float32)


E2M1_TABLE = _e2m1_table()


def unpack_e2m1(packed: np.ndarray) -> np.ndarray:
    """[..., n] bytes (uint8 or int8) -> float32 [..., 2n]."""
    u8 = np.ascontiguousarray(packed).view(np.uint8)
    out = np.empty(u8.shape[:-1] + (2 * u8.shape[-1],), np.float32)
    out[..., 0::2] = E2M1_TABLE[u8 & 0xF]
    out[..., 1::2] = E2M1_TABLE[u8 >> 4]
    return out


def decode_ue8m0(codes: np.ndarray) -> np.ndarray:
    """UE8M0 exponent bytes -> float32 scales 2^(code - 127); 0xFF is NaN."""
    c = np.ascontiguousarray(codes).view(np.uint8).astype(np.int32)
    nan = c == 0xFF
    out = np.ldexp(np.float32(1.0), np.where(nan, 127, c) - 127).astype(np.float32)
    out[nan] = np.nan
    return out


def block_dequant_fp4(packed: np.ndarray, scales: np.ndarray, block: Tuple[int, int] = (1, 32)) -> np.ndarray:
    """Packed e2m1 weight [rows, cols/2] and its scale grid -> float32 [rows, cols]. `scales` are
    UE8M0 bytes (uint8) or already float32."""
    w = unpack_e2m1(packed)
    s = decode_ue8m0(scales) if scales.dtype in (np.uint8, np.int8) else scales.astype(np.float32)
    rows, cols = w.shape[-2:]
    br, bc = block
    want = (-(-rows // br), -(-cols // bc))
    if tuple(s.shape[-2:]) != want:
        raise ValueError(f"scale grid {tuple(s.shape[-2:])} does not match weight [{rows}, {cols}] in "
                         f"{br}x{bc} blocks (expected {want})")
    full = np.repeat(np.repeat(s, br, axis=-2)[..., :rows, :], bc, axis=-1)[..., :cols]
    return w * full
