// Grouped matmul over expert groups on the cube unit (the semantics of the CPU GroupedMatmul*).
// block_expert [NB] gives each block of P/NB rows its expert; consecutive blocks of one expert
// form a group. Core c takes groups c, c + cores, ... and runs each as one Matmul with the
// group's own shape (SetSingleShape), so there is neither padding nor a gathered weight copy.
#pragma once
#include "kernel_operator.h"
#include "lib/matmul_intf.h"

template <typename T>
using GmType = matmul::MatmulType<AscendC::TPosition::GM, CubeFormat::ND, T, true>;  // transposable

struct Group {
  uint32_t begin, end;
  int32_t expert;
};

// the group-th run of equal experts in block_expert, or end == begin when there are fewer runs
__aicore__ inline Group NthGroup(AscendC::GlobalTensor<int32_t> &be, uint32_t blocks, uint32_t block,
                                 uint32_t n) {
  Group g{0, 0, -1};
  uint32_t seen = 0;
  for (uint32_t b = 0; b < blocks; ++b) {
    const int32_t e = be.GetValue(b);
    if (b == 0 || e != g.expert) {
      if (b > 0 && seen++ == n) return g;
      g = {b * block, b * block, e};
    }
    g.end = (b + 1) * block;
  }
  if (seen == n && blocks > 0) return g;
  return {0, 0, -1};
}
