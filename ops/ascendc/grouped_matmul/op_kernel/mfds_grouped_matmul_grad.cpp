// MfdsGroupedMatmulGrad: per group g of expert e,
//   dx[rows] = dy[rows] @ weight[e],   dweight[e] = dy[rows]^T @ x[rows];
// experts that no row chose get a zero dweight (written by the core that owns that expert).
#include "grouped_matmul_kernel.h"

template <typename T>
class GroupedMatmulGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR dy, GM_ADDR x, GM_ADDR w, GM_ADDR be, GM_ADDR dx, GM_ADDR dw,
                              const MfdsGroupedMatmulTilingData &t) {
    t_ = t;
    dyGm_.SetGlobalBuffer((__gm__ T *)dy);
    xGm_.SetGlobalBuffer((__gm__ T *)x);
    wGm_.SetGlobalBuffer((__gm__ T *)w);
    beGm_.SetGlobalBuffer((__gm__ int32_t *)be);
    dxGm_.SetGlobalBuffer((__gm__ T *)dx);
    dwGm_.SetGlobalBuffer((__gm__ T *)dw);
  }

  __aicore__ inline void Process(AscendC::TPipe *pipe) {
    REGIST_MATMUL_OBJ(pipe, GetSysWorkSpacePtr(), mmX_, &t_.mm, mmW_, &t_.mmW);
    const uint32_t block = t_.blocks ? t_.rows / t_.blocks : 1;
    const uint64_t wSize = static_cast<uint64_t>(t_.m) * t_.k;
    for (uint32_t e = AscendC::GetBlockIdx(); e < t_.experts; e += t_.cores)  // zero first: empty experts
      AscendC::InitGlobalMemory(dwGm_[e * wSize], wSize, static_cast<T>(0));
    AscendC::SyncAll();
    for (uint32_t n = AscendC::GetBlockIdx();; n += t_.cores) {
      const Group g = NthGroup(beGm_, t_.blocks, block, n);
      if (g.expert < 0) break;
      const uint32_t rows = g.end - g.begin;
      const uint64_t we = static_cast<uint64_t>(g.expert) * wSize;
      mmX_.SetSingleShape(rows, t_.k, t_.m);                         // dx = dy W_e
      mmX_.SetTensorA(dyGm_[static_cast<uint64_t>(g.begin) * t_.m]);
      mmX_.SetTensorB(wGm_[we], false);
      mmX_.IterateAll(dxGm_[static_cast<uint64_t>(g.begin) * t_.k]);
      mmX_.End();
      mmW_.SetSingleShape(t_.m, t_.k, rows);                         // dW_e += dy^T x (atomic: an
      mmW_.SetTensorA(dyGm_[static_cast<uint64_t>(g.begin) * t_.m], true);   // expert may own
      mmW_.SetTensorB(xGm_[static_cast<uint64_t>(g.begin) * t_.k], false);  // several groups)
      mmW_.IterateAll(dwGm_[we], 1);
      mmW_.End();
    }
  }

 private:
  matmul::Matmul<GmType<T>, GmType<T>, GmType<T>> mmX_, mmW_;
  MfdsGroupedMatmulTilingData t_;
  AscendC::GlobalTensor<T> dyGm_, xGm_, wGm_, dxGm_, dwGm_;
  AscendC::GlobalTensor<int32_t> beGm_;
};

extern "C" __global__ __aicore__ void mfds_grouped_matmul_grad(GM_ADDR dy, GM_ADDR x, GM_ADDR weight,
                                                               GM_ADDR block_expert, GM_ADDR dx, GM_ADDR dweight,
                                                               GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  AscendC::SetSysWorkspace(workspace);
  AscendC::TPipe pipe;
  GroupedMatmulGradKernel<DTYPE_DY> op;
  op.Init(dy, x, weight, block_expert, dx, dweight, t);
  op.Process(&pipe);
}
