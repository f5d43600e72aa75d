// MfdsHcSinkhorn: mHC's Sinkhorn normalisation of comb [R, n, n] (params = (iters, eps)): first
// over the columns, then iters - 1 times over the rows and the columns (ops/cpu/sinkhorn.cc).
// Each core streams its matrices through UB in tiles, each tile lane-major for the vector unit
// (common/sinkhorn_lanes.h).
#include "../../common/kernel_common.h"
#include "../../common/sinkhorn_lanes.h"

class HcSinkhornKernel {
 public:
  __aicore__ inline void Init(GM_ADDR comb, GM_ADDR params, GM_ADDR out, const MfdsRowTilingData &t) {
    n_ = t.aux0;
    nn_ = n_ * n_;
    nnPad_ = mfds::AlignElems(nn_, sizeof(float));
    tileRows_ = t.tileRows;
    lanes_ = mfds::AlignElems(tileRows_, sizeof(float));
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    combGm_.SetGlobalBuffer((__gm__ float *)comb);
    outGm_.SetGlobalBuffer((__gm__ float *)out);
    steps_ = 2 * static_cast<uint32_t>(((__gm__ float *)params)[0]) - 1;
    eps_ = ((__gm__ float *)params)[1];
    pipe_.InitBuffer(inQ_, mfds::kBufferNum, tileRows_ * nnPad_ * sizeof(float));
    pipe_.InitBuffer(outQ_, mfds::kBufferNum, tileRows_ * nnPad_ * sizeof(float));
    pipe_.InitBuffer(planes_, nn_ * lanes_ * sizeof(float));
    pipe_.InitBuffer(den_, n_ * lanes_ * sizeof(float));
    pipe_.InitBuffer(toLanes_, nn_ * lanes_ * sizeof(uint32_t));
    pipe_.InitBuffer(toRows_, tileRows_ * nnPad_ * sizeof(uint32_t));
    auto toLanes = toLanes_.Get<uint32_t>();
    auto toRows = toRows_.Get<uint32_t>();
    mfds::SinkhornOffsets(toLanes, toRows, tileRows_, lanes_, nn_, nnPad_);
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < nrows_; done += tileRows_) {
      const uint32_t n = static_cast<uint32_t>(nrows_ - done < tileRows_ ? nrows_ - done : tileRows_);
      auto x = inQ_.AllocTensor<float>();
      mfds::LoadRows(x, combGm_, row0_ + done, n, nn_);
      inQ_.EnQue(x);
      Compute(n);
      auto y = outQ_.DeQue<float>();
      mfds::StoreRows(outGm_, y, row0_ + done, n, nn_);
      outQ_.FreeTensor(y);
    }
  }

 private:
  __aicore__ inline void Compute(uint32_t n) {
    auto x = inQ_.DeQue<float>();
    auto y = outQ_.AllocTensor<float>();
    auto planes = planes_.Get<float>();
    auto den = den_.Get<float>();
    auto toLanes = toLanes_.Get<uint32_t>();
    auto toRows = toRows_.Get<uint32_t>();
    AscendC::Gather(planes, x, toLanes, 0u, nn_ * lanes_);
    for (uint32_t s = 0; s < steps_; ++s) mfds::NormaliseLanes(planes, den, n_, lanes_, mfds::SinkhornColumnStep(s), eps_);
    AscendC::Gather(y, planes, toRows, 0u, n * nnPad_);
    outQ_.EnQue(y);
    inQ_.FreeTensor(x);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> inQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> outQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> planes_, den_, toLanes_, toRows_;
  AscendC::GlobalTensor<float> combGm_, outGm_;
  uint32_t n_ = 1, nn_ = 1, nnPad_ = 8, tileRows_ = 8, lanes_ = 8, steps_ = 1;
  uint64_t row0_ = 0, nrows_ = 0;
  float eps_ = 1e-6f;
};

extern "C" __global__ __aicore__ void mfds_hc_sinkhorn(GM_ADDR comb, GM_ADDR params, GM_ADDR out, GM_ADDR workspace,
                                                       GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  HcSinkhornKernel op;
  op.Init(comb, params, out, t);
  op.Process();
}
