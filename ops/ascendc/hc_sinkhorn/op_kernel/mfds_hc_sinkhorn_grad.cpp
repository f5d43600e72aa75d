// MfdsHcSinkhornGrad: dcomb of MfdsHcSinkhorn from comb and dout. Per tile it recomputes the
// forward lane-major and keeps every step's output and denominators in UB (the host sizes the
// tile for kSinkhornMaxIters), then runs the steps' backwards in reverse (common/sinkhorn_lanes.h;
// the math of ops/cpu/sinkhorn.cc). Nothing but comb is kept between the passes.
#include "../../common/kernel_common.h"
#include "../../common/sinkhorn_lanes.h"

class HcSinkhornGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR comb, GM_ADDR dout, GM_ADDR params, GM_ADDR dcomb, const MfdsRowTilingData &t) {
    n_ = t.aux0;
    nn_ = n_ * n_;
    nnPad_ = mfds::AlignElems(nn_, sizeof(float));
    tileRows_ = t.tileRows;
    lanes_ = mfds::AlignElems(tileRows_, sizeof(float));
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    combGm_.SetGlobalBuffer((__gm__ float *)comb);
    doutGm_.SetGlobalBuffer((__gm__ float *)dout);
    dcombGm_.SetGlobalBuffer((__gm__ float *)dcomb);
    steps_ = 2 * static_cast<uint32_t>(((__gm__ float *)params)[0]) - 1;
    eps_ = ((__gm__ float *)params)[1];
    const uint32_t rowBytes = tileRows_ * nnPad_ * sizeof(float);
    pipe_.InitBuffer(combQ_, mfds::kBufferNum, rowBytes);
    pipe_.InitBuffer(doutQ_, mfds::kBufferNum, rowBytes);
    pipe_.InitBuffer(outQ_, mfds::kBufferNum, rowBytes);
    pipe_.InitBuffer(state_, steps_ * nn_ * lanes_ * sizeof(float));
    pipe_.InitBuffer(den_, steps_ * n_ * lanes_ * sizeof(float));
    pipe_.InitBuffer(grad_, nn_ * lanes_ * sizeof(float));
    pipe_.InitBuffer(dot_, lanes_ * sizeof(float));
    pipe_.InitBuffer(tmp_, lanes_ * sizeof(float));
    pipe_.InitBuffer(toLanes_, nn_ * lanes_ * sizeof(uint32_t));
    pipe_.InitBuffer(toRows_, tileRows_ * nnPad_ * sizeof(uint32_t));
    auto toLanes = toLanes_.Get<uint32_t>();
    auto toRows = toRows_.Get<uint32_t>();
    mfds::SinkhornOffsets(toLanes, toRows, tileRows_, lanes_, nn_, nnPad_);
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < nrows_; done += tileRows_) {
      const uint32_t n = static_cast<uint32_t>(nrows_ - done < tileRows_ ? nrows_ - done : tileRows_);
      auto c = combQ_.AllocTensor<float>();
      auto d = doutQ_.AllocTensor<float>();
      mfds::LoadRows(c, combGm_, row0_ + done, n, nn_);
      mfds::LoadRows(d, doutGm_, row0_ + done, n, nn_);
      combQ_.EnQue(c);
      doutQ_.EnQue(d);
      Compute(n);
      auto g = outQ_.DeQue<float>();
      mfds::StoreRows(dcombGm_, g, row0_ + done, n, nn_);
      outQ_.FreeTensor(g);
    }
  }

 private:
  __aicore__ inline void Compute(uint32_t n) {
    auto c = combQ_.DeQue<float>();
    auto d = doutQ_.DeQue<float>();
    auto out = outQ_.AllocTensor<float>();
    auto state = state_.Get<float>();
    auto den = den_.Get<float>();
    auto g = grad_.Get<float>();
    auto dot = dot_.Get<float>();
    auto tmp = tmp_.Get<float>();
    auto toLanes = toLanes_.Get<uint32_t>();
    auto toRows = toRows_.Get<uint32_t>();
    const uint32_t plane = nn_ * lanes_;
    // forward again: state[s] is step s's output, den[s] its denominators
    AscendC::Gather(state, c, toLanes, 0u, plane);
    for (uint32_t s = 0; s < steps_; ++s) {
      if (s > 0) AscendC::DataCopy(state[s * plane], state[(s - 1) * plane], plane);
      mfds::NormaliseLanes(state[s * plane], den[s * n_ * lanes_], n_, lanes_, mfds::SinkhornColumnStep(s), eps_);
    }
    AscendC::Gather(g, d, toLanes, 0u, plane);
    for (uint32_t s = steps_; s-- > 0;)
      mfds::NormaliseBackLanes(g, state[s * plane], den[s * n_ * lanes_], dot, tmp, n_, lanes_,
                               mfds::SinkhornColumnStep(s));
    AscendC::Gather(out, g, toRows, 0u, n * nnPad_);
    outQ_.EnQue(out);
    combQ_.FreeTensor(c);
    doutQ_.FreeTensor(d);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> combQ_, doutQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> outQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> state_, den_, grad_, dot_, tmp_, toLanes_, toRows_;
  AscendC::GlobalTensor<float> combGm_, doutGm_, dcombGm_;
  uint32_t n_ = 1, nn_ = 1, nnPad_ = 8, tileRows_ = 8, lanes_ = 8, steps_ = 1;
  uint64_t row0_ = 0, nrows_ = 0;
  float eps_ = 1e-6f;
};

extern "C" __global__ __aicore__ void mfds_hc_sinkhorn_grad(GM_ADDR comb, GM_ADDR dout, GM_ADDR params, GM_ADDR dcomb,
                                                            GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  HcSinkhornGradKernel op;
  op.Init(comb, dout, params, dcomb, t);
  op.Process();
}
