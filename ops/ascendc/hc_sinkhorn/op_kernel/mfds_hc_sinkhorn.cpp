// MfdsHcSinkhorn: mHC's Sinkhorn normalisation of comb [R, n, n] (params = (iters, eps)): first
// over the columns, then iters - 1 times over the rows and the columns (ops/cpu/sinkhorn.cc).
// Each core streams its matrices through UB in tiles, each tile lane-major for the vector unit
// (common/sinkhorn_lanes.h).
#include "../../common/kernel_common.h"
#include "../../common/sinkhorn_lanes.h"

class HcSinkhornKernel {
 public:
  __aicore__ inline void Init(GM_ADDR comb, GM_ADDR params, GM_ADDR out, const MfdsRowTilingData &t) {
    g_.Init(t, params);
    combGm_.SetGlobalBuffer((__gm__ float *)comb);
    outGm_.SetGlobalBuffer((__gm__ float *)out);
    pipe_.InitBuffer(inQ_, mfds::kBufferNum, g_.tileRows * g_.nnPad * sizeof(float));
    pipe_.InitBuffer(outQ_, mfds::kBufferNum, g_.tileRows * g_.nnPad * sizeof(float));
    pipe_.InitBuffer(planes_, g_.PlaneElems() * sizeof(float));
    pipe_.InitBuffer(den_, g_.n * g_.lanes * sizeof(float));
    g_.InitOffsets(pipe_, toLanes_, toRows_);
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < g_.nrows; done += g_.tileRows) {
      const uint32_t n = g_.RowsAt(done);
      auto x = inQ_.AllocTensor<float>();
      mfds::LoadRows(x, combGm_, g_.row0 + done, n, g_.nn);
      inQ_.EnQue(x);
      Compute(n);
      auto y = outQ_.DeQue<float>();
      mfds::StoreRows(outGm_, y, g_.row0 + done, n, g_.nn);
      outQ_.FreeTensor(y);
    }
  }

 private:
  __aicore__ inline void Compute(uint32_t n) {
    auto x = inQ_.DeQue<float>();
    auto y = outQ_.AllocTensor<float>();
    auto planes = planes_.Get<float>();
    auto den = den_.Get<float>();
    AscendC::Gather(planes, x, toLanes_.Get<uint32_t>(), 0u, g_.PlaneElems());
    for (uint32_t s = 0; s < g_.steps; ++s)
      mfds::NormaliseLanes(planes, den, g_.n, g_.lanes, mfds::SinkhornColumnStep(s), g_.eps);
    AscendC::Gather(y, planes, toRows_.Get<uint32_t>(), 0u, n * g_.nnPad);
    outQ_.EnQue(y);
    inQ_.FreeTensor(x);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> inQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> outQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> planes_, den_, toLanes_, toRows_;
  AscendC::GlobalTensor<float> combGm_, outGm_;
  mfds::SinkhornTile g_;
};

extern "C" __global__ __aicore__ void mfds_hc_sinkhorn(GM_ADDR comb, GM_ADDR params, GM_ADDR out, GM_ADDR workspace,
                                                       GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  HcSinkhornKernel op;
  op.Init(comb, params, out, t);
  op.Process();
}
