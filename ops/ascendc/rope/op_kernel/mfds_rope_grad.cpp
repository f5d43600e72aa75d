#include "rope_kernel.h"

extern "C" __global__ __aicore__ void mfds_rope_grad(GM_ADDR dy, GM_ADDR cos, GM_ADDR sin, GM_ADDR mode, GM_ADDR dx,
                                                     GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  RopeKernel<DTYPE_DY, true> op;
  op.Init(dy, cos, sin, mode, dx, t);
  op.Process();
}
