// MfdsHcSinkhornGrad: dcomb of MfdsHcSinkhorn from comb and dout. Per tile it recomputes the
// forward lane-major and keeps every step's output and denominators in UB (the host sizes the
// tile for kSinkhornMaxIters), then runs the steps' backwards in reverse (common/sinkhorn_lanes.h;
// the math of ops/cpu/sinkhorn.cc). Nothing but comb is kept between the passes.
#include "../../common/kernel_common.h"
#include "../../common/sinkhorn_lanes.h"

class HcSinkhornGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR comb, GM_ADDR dout, GM_ADDR params, GM_ADDR dcomb, const MfdsRowTilingData &t) {
    g_.Init(t, params);
    combGm_.SetGlobalBuffer((__gm__ float *)comb);
    doutGm_.SetGlobalBuffer((__gm__ float *)dout);
    dcombGm_.SetGlobalBuffer((__gm__ float *)dcomb);
    const uint32_t rowBytes = g_.tileRows * g_.nnPad * sizeof(float);
    pipe_.InitBuffer(combQ_, mfds::kBufferNum, rowBytes);
    pipe_.InitBuffer(doutQ_, mfds::kBufferNum, rowBytes);
    pipe_.InitBuffer(outQ_, mfds::kBufferNum, rowBytes);
    pipe_.InitBuffer(state_, g_.steps * g_.PlaneElems() * sizeof(float));
    pipe_.InitBuffer(den_, g_.steps * g_.n * g_.lanes * sizeof(float));
    pipe_.InitBuffer(grad_, g_.PlaneElems() * sizeof(float));
    pipe_.InitBuffer(dot_, g_.lanes * sizeof(float));
    pipe_.InitBuffer(tmp_, g_.lanes * sizeof(float));
    g_.InitOffsets(pipe_, toLanes_, toRows_);
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < g_.nrows; done += g_.tileRows) {
      const uint32_t n = g_.RowsAt(done);
      auto c = combQ_.AllocTensor<float>();
      auto d = doutQ_.AllocTensor<float>();
      mfds::LoadRows(c, combGm_, g_.row0 + done, n, g_.nn);
      mfds::LoadRows(d, doutGm_, g_.row0 + done, n, g_.nn);
      combQ_.EnQue(c);
      doutQ_.EnQue(d);
      Compute(n);
      auto out = outQ_.DeQue<float>();
      mfds::StoreRows(dcombGm_, out, g_.row0 + done, n, g_.nn);
      outQ_.FreeTensor(out);
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
    const uint32_t plane = g_.PlaneElems(), lines = g_.n * g_.lanes;
    // forward again: state[s] is step s's output, den[s] its denominators
    AscendC::Gather(state, c, toLanes_.Get<uint32_t>(), 0u, plane);
    for (uint32_t s = 0; s < g_.steps; ++s) {
      if (s > 0) AscendC::DataCopy(state[s * plane], state[(s - 1) * plane], plane);
      mfds::NormaliseLanes(state[s * plane], den[s * lines], g_.n, g_.lanes, mfds::SinkhornColumnStep(s), g_.eps);
    }
    AscendC::Gather(g, d, toLanes_.Get<uint32_t>(), 0u, plane);
    for (uint32_t s = g_.steps; s-- > 0;)
      mfds::NormaliseBackLanes(g, state[s * plane], den[s * lines], dot_.Get<float>(), tmp_.Get<float>(), g_.n,
                               g_.lanes, mfds::SinkhornColumnStep(s));
    AscendC::Gather(out, g, toRows_.Get<uint32_t>(), 0u, n * g_.nnPad);
    outQ_.EnQue(out);
    combQ_.FreeTensor(c);
    doutQ_.FreeTensor(d);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> combQ_, doutQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> outQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> state_, den_, grad_, dot_, tmp_, toLanes_, toRows_;
  AscendC::GlobalTensor<float> combGm_, doutGm_, dcombGm_;
  mfds::SinkhornTile g_;
};

extern "C" __global__ __aicore__ void mfds_hc_sinkhorn_grad(GM_ADDR comb, GM_ADDR dout, GM_ADDR params, GM_ADDR dcomb,
                                                            GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  HcSinkhornGradKernel op;
  op.Init(comb, dout, params, dcomb, t);
  op.Process();
}
