// MfdsMoePermuteGrad: dx[n] = sum over the k rows holding token n of dx_perm[row].
#include "../../common/moe_combine.h"

extern "C" __global__ __aicore__ void mfds_moe_permute_grad(GM_ADDR dx_perm, GM_ADDR slot, GM_ADDR expert_idx,
                                                            GM_ADDR dx, GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  MoeCombineKernel<DTYPE_DX_PERM, false> op;
  op.Init(dx_perm, slot, expert_idx, dx, t);
  op.Process();
}
