// Block-FP8 dequantisation of DeepSeek releases: out[i, j] = e4m3(codes[i, j]) * scale[i/B, j/B].
//   Fp8BlockDequant: codes [O, I] uint8, scale [ceil(O/B), ceil(I/B)] float32 -> out [O, I] float32
// (B = 128; ragged edge blocks handled). `mfds_fp8_block_dequant` is the same loop for the
// converter, called through ctypes without MindSpore.
#include "common.h"

namespace {
float kE4M3[256];
bool init_table() {
  for (int c = 0; c < 256; ++c) {
    const int sign = c >> 7, exp = (c >> 3) & 0xF, man = c & 7;
    float v = exp == 0 ? std::ldexp(man / 8.0f, -6) : std::ldexp(1.0f + man / 8.0f, exp - 7);
    if ((c & 0x7F) == 0x7F) v = std::nanf("");
    kE4M3[c] = sign ? -v : v;
  }
  return true;
}
const bool kTableReady = init_table();
}  // namespace

extern "C" void mfds_fp8_block_dequant(const uint8_t *codes, const float *scale, float *out, int64_t rows,
                                       int64_t cols, int64_t block) {
  const int64_t cb = (cols + block - 1) / block;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const float *srow = scale + (i / block) * cb;
    const uint8_t *c = codes + i * cols;
    float *o = out + i * cols;
    for (int64_t j = 0; j < cols; ++j) o[j] = kE4M3[c[j]] * srow[j / block];
  }
}

MFDS_AOT(Fp8BlockDequant) {
  if (nparam != 3 || !mfds::is(dtypes[0], "uint8") || !kTableReady) return 1;
  const int64_t rows = shapes[0][0], cols = shapes[0][1], block = 128;
  if (shapes[1][0] != (rows + block - 1) / block || shapes[1][1] != (cols + block - 1) / block) return 3;
  mfds_fp8_block_dequant(static_cast<const uint8_t *>(params[0]), static_cast<const float *>(params[1]),
                         static_cast<float *>(params[2]), rows, cols, block);
  return 0;
}
