"""FP4 (e2m1, two per byte) and UE8M0 block scales of DeepSeek-V4's quantised release, decoded in
numpy, against torch's own float4/float8_e8m0 dtypes and transformers' dequantiser."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mindformers_ds.checkpoint.fp4 import E2M1_TABLE, block_dequant_fp4, decode_ue8m0, unpack_e2m1
from mindformers_ds.checkpoint.safetensors_io import to_float32


def test_all_16_e2m1_codes_match_transformers_table_and_sign_bits():
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    ref = np.array(Fp8Dequantize._FP4_E2M1_LUT, np.float32)
    np.testing.assert_array_equal(E2M1_TABLE, ref)
    assert np.array_equal(np.signbit(E2M1_TABLE), np.signbit(ref))  # -0.0 stays negative zero


def test_nibble_order_low_first_on_every_byte():
    packed = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = unpack_e2m1(packed)
    assert out.shape == (16, 32)
    np.testing.assert_array_equal(out[:, 0::2], E2M1_TABLE[packed & 0xF])
    np.testing.assert_array_equal(out[:, 1::2], E2M1_TABLE[packed >> 4])
    assert unpack_e2m1(np.array([0x21], np.uint8)).tolist() == [0.5, 1.0]


def test_all_256_ue8m0_codes_match_torch_float8_e8m0fnu():
    codes = np.arange(256, dtype=np.uint8)
    ref = torch.from_numpy(codes.copy()).view(torch.float8_e8m0fnu).float().numpy()
    ours = decode_ue8m0(codes)
    np.testing.assert_array_equal(ours[:255], ref[:255])
    assert np.isnan(ours[255]) and np.isnan(ref[255])
    np.testing.assert_array_equal(to_float32("F8_E8M0", codes), ours)


def test_ragged_block_weight_matches_a_float64_loop():
    rng = np.random.default_rng(0)
    rows, cols = 5, 70                                  # 70 = 2 full 32-blocks + a ragged 6
    packed = rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
    scales = rng.integers(120, 135, (rows, 3), dtype=np.uint8)
    got = block_dequant_fp4(packed, scales)
    want = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            byte = int(packed[r, c // 2])
            code = byte & 0xF if c % 2 == 0 else byte >> 4
            sign = -1.0 if code & 8 else 1.0
            e, m = (code >> 1) & 3, code & 1
            value = m * 0.5 if e == 0 else (1 + m / 2) * 2.0 ** (e - 1)
            want[r, c] = sign * value * 2.0 ** (int(scales[r, c // 32]) - 127)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    with pytest.raises(ValueError, match="scale grid"):
        block_dequant_fp4(packed, scales[:, :2])


def test_matches_transformers_dequantiser_on_a_divisible_expert_weight():
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    rng = np.random.default_rng(1)
    packed = rng.integers(0, 256, (8, 64), dtype=np.uint8)      # [8, 128] e2m1
    scales = rng.integers(110, 140, (8, 4), dtype=np.uint8)      # [1, 32] blocks
    deq = Fp8Dequantize(None)
    ref = deq._dequantize_one(torch.from_numpy(packed.view(np.int8).copy()),
                              torch.from_numpy(scales.copy()), torch.float32).numpy()
    np.testing.assert_array_equal(block_dequant_fp4(packed, scales), ref)
