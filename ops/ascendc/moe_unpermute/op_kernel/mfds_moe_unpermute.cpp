// MfdsMoeUnpermute: out[n] = sum_j weight[n, j] * y_perm[row(n, j)].
#include "../../common/moe_combine.h"

extern "C" __global__ __aicore__ void mfds_moe_unpermute(GM_ADDR y_perm, GM_ADDR slot, GM_ADDR weight, GM_ADDR out,
                                                         GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  MoeCombineKernel<DTYPE_Y_PERM, true> op;
  op.Init(y_perm, slot, weight, out, t);
  op.Process();
}
