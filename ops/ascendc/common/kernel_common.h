// Device-side helpers shared by mindformers_ds' AscendC kernels.
// All kernels compute in float32 inside the unified buffer: fp16/bf16 inputs are cast on the
// way in and back on the way out, so results match the CPU kernels' float32 arithmetic.
// Rows of any length are moved with DataCopyPad (no 32-byte alignment requirement in GM).
#pragma once
#include "kernel_operator.h"

namespace mfds {

constexpr int32_t kBufferNum = 2;  // double buffering of the streaming queues

__aicore__ inline uint32_t AlignElems(uint32_t n, uint32_t elemBytes) {
  const uint32_t per = 32 / elemBytes;
  return (n + per - 1) / per * per;
}

// rows [row0, row0 + nrows) of a [*, cols] GM tensor into a UB tile with padded stride
template <typename T>
__aicore__ inline void LoadRows(AscendC::LocalTensor<T> &dst, AscendC::GlobalTensor<T> &src, uint64_t row0,
                                uint32_t nrows, uint32_t cols) {
  AscendC::DataCopyExtParams p{static_cast<uint16_t>(nrows), static_cast<uint32_t>(cols * sizeof(T)), 0, 0, 0};
  AscendC::DataCopyPadExtParams<T> pad{false, 0, 0, 0};
  AscendC::DataCopyPad(dst, src[row0 * cols], p, pad);
}

template <typename T>
__aicore__ inline void StoreRows(AscendC::GlobalTensor<T> &dst, AscendC::LocalTensor<T> &src, uint64_t row0,
                                 uint32_t nrows, uint32_t cols) {
  AscendC::DataCopyExtParams p{static_cast<uint16_t>(nrows), static_cast<uint32_t>(cols * sizeof(T)), 0, 0, 0};
  AscendC::DataCopyPad(dst[row0 * cols], src, p);
}

// float32 view of a tile: a cast for fp16/bf16, a copy-free pass-through for float32
template <typename T>
__aicore__ inline void ToFloat(AscendC::LocalTensor<float> &dst, AscendC::LocalTensor<T> &src, uint32_t n) {
  if constexpr (std::is_same_v<T, float>) {
    AscendC::DataCopy(dst, src, n);
  } else {
    AscendC::Cast(dst, src, AscendC::RoundMode::CAST_NONE, n);
  }
}

template <typename T>
__aicore__ inline void FromFloat(AscendC::LocalTensor<T> &dst, AscendC::LocalTensor<float> &src, uint32_t n) {
  if constexpr (std::is_same_v<T, float>) {
    AscendC::DataCopy(dst, src, n);
  } else {
    AscendC::Cast(dst, src, AscendC::RoundMode::CAST_RINT, n);
  }
}

// s = 1 / (1 + exp(-x)) elementwise (tmp may alias nothing else)
__aicore__ inline void Sigmoid(AscendC::LocalTensor<float> &s, AscendC::LocalTensor<float> &x, uint32_t n) {
  AscendC::Muls(s, x, -1.0f, n);
  AscendC::Exp(s, s, n);
  AscendC::Adds(s, s, 1.0f, n);
  AscendC::Reciprocal(s, s, n);
}

// this core's first row and row count from the row split in the tiling data
__aicore__ inline void CoreRows(uint64_t rowsPerCore, uint64_t lastRows, uint32_t cores, uint64_t &row0,
                                uint64_t &nrows) {
  const uint32_t b = AscendC::GetBlockIdx();
  row0 = rowsPerCore * b;
  nrows = b + 1 == cores ? lastRows : rowsPerCore;
}

}  // namespace mfds
