// MfdsGroupedMatmul: y[rows of group g] = x[rows] @ weight[e(g)]^T.
#include "grouped_matmul_kernel.h"

template <typename T>
class GroupedMatmulKernel {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR w, GM_ADDR be, GM_ADDR y, const MfdsGroupedMatmulTilingData &t) {
    t_ = t;
    xGm_.SetGlobalBuffer((__gm__ T *)x);
    wGm_.SetGlobalBuffer((__gm__ T *)w);
    beGm_.SetGlobalBuffer((__gm__ int32_t *)be);
    yGm_.SetGlobalBuffer((__gm__ T *)y);
  }

  __aicore__ inline void Process(AscendC::TPipe *pipe) {
    REGIST_MATMUL_OBJ(pipe, GetSysWorkSpacePtr(), mm_, &t_.mm);
    const uint32_t block = t_.blocks ? t_.rows / t_.blocks : 1;
    for (uint32_t n = AscendC::GetBlockIdx();; n += t_.cores) {
      const Group g = NthGroup(beGm_, t_.blocks, block, n);
      if (g.expert < 0) break;
      mm_.SetSingleShape(g.end - g.begin, t_.m, t_.k);
      mm_.SetTensorA(xGm_[static_cast<uint64_t>(g.begin) * t_.k]);
      mm_.SetTensorB(wGm_[static_cast<uint64_t>(g.expert) * t_.m * t_.k], true);
      mm_.IterateAll(yGm_[static_cast<uint64_t>(g.begin) * t_.m]);
      mm_.End();
    }
  }

 private:
  matmul::Matmul<GmType<T>, GmType<T>, GmType<T>> mm_;
  MfdsGroupedMatmulTilingData t_;
  AscendC::GlobalTensor<T> xGm_, wGm_, yGm_;
  AscendC::GlobalTensor<int32_t> beGm_;
};

extern "C" __global__ __aicore__ void mfds_grouped_matmul(GM_ADDR x, GM_ADDR weight, GM_ADDR block_expert, GM_ADDR y,
                                                          GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  AscendC::SetSysWorkspace(workspace);
  AscendC::TPipe pipe;
  GroupedMatmulKernel<DTYPE_X> op;
  op.Init(x, weight, block_expert, y, t);
  op.Process(&pipe);
}
