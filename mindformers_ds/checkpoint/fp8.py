"""FP8 codecs and 128x128 block (de)quantisation of DeepSeek releases, in numpy.

float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; 0x7F/0xFF are
NaN; largest finite 448. float8_e5m2 is the high byte of an IEEE half. A quantised weight
W [out, in] is stored as codes plus `weight_scale_inv` [ceil(out/B), ceil(in/B)] (float32),
and W = decode(codes) * scale of its block; edge blocks may be ragged.
"""
from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0


def _e4m3_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = (codes & 0x7).astype(np.float64)
    val = np.where(exp == 0, np.ldexp(man / 8.0, -6), np.ldexp(1.0 + man / 8.0, exp.astype(np.int64) - 7))
    val = sign * val
    val[(codes & 0x7F) == 0x7F] = np.nan
    return val.astype(np.float32)


E4M3_TABLE = _e4m3_table()
_POS_VALUES = E4M3_TABLE[:0x7F].astype(np.float64)  # codes 0x00..0x7E: 0 .. 448, increasing


def decode_fp8(codes: np.ndarray, tag: str = "F8_E4M3") -> np.ndarray:
    if tag == "F8_E5M2":
        return (codes.astype(np.uint16) << 8).view(np.float16).astype(np.float32)
    return E4M3_TABLE[codes]


def encode_e4m3(x: np.ndarray) -> np.ndarray:
    """float -> e4m3fn codes, round to nearest (ties to even code), saturating at +-448."""
    x = np.asarray(x, np.float64)
    mag = np.minimum(np.abs(x), E4M3_MAX)
    hi = np.clip(np.searchsorted(_POS_VALUES, mag, side="left"), 0, len(_POS_VALUES) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = mag - _POS_VALUES[lo], _POS_VALUES[hi] - mag
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    code = np.where(np.signbit(x), code | 0x80, code).astype(np.uint8)  # -0.0 keeps its sign, as torch does
    code[np.isnan(x)] = 0x7F
    return code


def block_dequant(codes: np.ndarray, scale_inv: np.ndarray, block: int = 128, tag: str = "F8_E4M3") -> np.ndarray:
    """W[out, in] = decode(codes) * scale_inv[i // block, j // block] (float32)."""
    out_dim, in_dim = codes.shape
    want = (-(-out_dim // block), -(-in_dim // block))
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"scale shape {list(scale_inv.shape)} does not match weight {[out_dim, in_dim]} "
                         f"with {block}x{block} blocks (expected {list(want)})")
    if tag == "F8_E4M3":  # the C++ kernel is ~3.7x faster and bit-identical (tests/test_ops.py)
        from ..ops import native
        out = native.fp8_block_dequant(codes, scale_inv, block)
        if out is not None:
            return out
    return block_dequant_numpy(codes, scale_inv, block, tag)


def block_dequant_numpy(codes: np.ndarray, scale_inv: np.ndarray, block: int = 128,
                        tag: str = "F8_E4M3") -> np.ndarray:
    out_dim, in_dim = codes.shape
    w = decode_fp8(codes, tag)
    s = np.repeat(np.repeat(scale_inv.astype(np.float32), block, 0), block, 1)[:out_dim, :in_dim]
    return w * s


def block_quant(w: np.ndarray, block: int = 128):
    """float weight -> (e4m3 codes, scale_inv) with one scale per block: amax / 448."""
    out_dim, in_dim = w.shape
    rb, cb = -(-out_dim // block), -(-in_dim // block)
    padded = np.zeros((rb * block, cb * block), np.float32)
    padded[:out_dim, :in_dim] = w
    blocks = padded.reshape(rb, block, cb, block)
    amax = np.abs(blocks).max(axis=(1, 3))
    scale = np.where(amax > 0, amax / E4M3_MAX, 1.0).astype(np.float32)
    q = blocks / np.repeat(np.repeat(scale, 1, 0), 1, 1)[:, None, :, None]
    codes = encode_e4m3(q).reshape(rb * block, cb * block)[:out_dim, :in_dim]
    return np.ascontiguousarray(codes), scale
