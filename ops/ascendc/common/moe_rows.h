// The inverse of the permutation (slot -> row) for a core's tokens, shared by the kernels that
// combine rows back per token (permute grad, unpermute): one pass over `slot` [P] in chunks,
// keeping the rows of slots in [firstToken * k, (firstToken + nTokens) * k).
#pragma once
#include "kernel_common.h"

namespace mfds {

__aicore__ inline void RowsOfSlots(AscendC::GlobalTensor<int32_t> &slotGm, uint64_t rows, uint64_t firstSlot,
                                   uint64_t nSlots, AscendC::LocalTensor<int32_t> &chunk, uint32_t chunkLen,
                                   AscendC::LocalTensor<int32_t> &rowOf) {
  AscendC::Duplicate(rowOf, -1, AlignElems(static_cast<uint32_t>(nSlots), 4));
  AscendC::PipeBarrier<PIPE_ALL>();
  for (uint64_t base = 0; base < rows; base += chunkLen) {
    const uint32_t n = static_cast<uint32_t>(rows - base < chunkLen ? rows - base : chunkLen);
    AscendC::DataCopyExtParams p{1, static_cast<uint32_t>(n * sizeof(int32_t)), 0, 0, 0};
    AscendC::DataCopyPadExtParams<int32_t> pad{false, 0, 0, 0};
    AscendC::DataCopyPad(chunk, slotGm[base], p, pad);
    AscendC::PipeBarrier<PIPE_ALL>();
    for (uint32_t i = 0; i < n; ++i) {
      const int64_t s = chunk.GetValue(i);
      if (s >= static_cast<int64_t>(firstSlot) && s < static_cast<int64_t>(firstSlot + nSlots))
        rowOf.SetValue(static_cast<uint32_t>(s - firstSlot), static_cast<int32_t>(base + i));
    }
  }
}

}  // namespace mfds
