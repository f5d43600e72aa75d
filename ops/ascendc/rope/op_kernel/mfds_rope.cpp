#include "rope_kernel.h"

extern "C" __global__ __aicore__ void mfds_rope(GM_ADDR x, GM_ADDR cos, GM_ADDR sin, GM_ADDR mode, GM_ADDR y,
                                                GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  RopeKernel<DTYPE_X, false> op;
  op.Init(x, cos, sin, mode, y, t);
  op.Process();
}
