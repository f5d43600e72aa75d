// MfdsMoeUnpermuteGrad, per row r holding slot s (padding rows: zeros):
//   dy_perm[r] = weight[s] * dout[s / k],   dweight[s] = <y_perm[r], dout[s / k]>
// Every slot has exactly one row, so each dweight element has a single writer.
#include "../../common/kernel_common.h"

template <typename T>
class MoeUnpermuteGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR dout, GM_ADDR y, GM_ADDR slot, GM_ADDR weight, GM_ADDR dy, GM_ADDR dw,
                              const MfdsRowTilingData &t) {
    h_ = t.cols;
    pad_ = mfds::AlignElems(h_, sizeof(float));
    k_ = t.aux0;
    slots_ = static_cast<uint64_t>(t.aux1) * k_;
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, r0_, nr_);
    doutGm_.SetGlobalBuffer((__gm__ T *)dout);
    yGm_.SetGlobalBuffer((__gm__ T *)y);
    slotGm_.SetGlobalBuffer((__gm__ int32_t *)slot);
    wGm_.SetGlobalBuffer((__gm__ float *)weight);
    dyGm_.SetGlobalBuffer((__gm__ T *)dy);
    dwGm_.SetGlobalBuffer((__gm__ float *)dw);
    pipe_.InitBuffer(yQ_, mfds::kBufferNum, pad_ * sizeof(T));
    pipe_.InitBuffer(gQ_, mfds::kBufferNum, pad_ * sizeof(T));
    pipe_.InitBuffer(dyQ_, mfds::kBufferNum, pad_ * sizeof(T));
    for (auto *b : {&yf_, &gf_, &tmp_}) pipe_.InitBuffer(*b, pad_ * sizeof(float));
    pipe_.InitBuffer(red_, 64 * sizeof(float));
    pipe_.InitBuffer(one_, 32);
  }

  __aicore__ inline void Process() {
    auto yf = yf_.Get<float>(), gf = gf_.Get<float>(), tmp = tmp_.Get<float>(), red = red_.Get<float>();
    auto one = one_.Get<float>();
    for (uint64_t r = r0_; r < r0_ + nr_; ++r) {
      const int64_t s = slotGm_.GetValue(r);
      auto dy = dyQ_.AllocTensor<T>();
      if (s < 0 || s >= static_cast<int64_t>(slots_)) {  // padding row
        AscendC::Duplicate(tmp, 0.0f, pad_);
        mfds::FromFloat(dy, tmp, pad_);
      } else {
        auto y = yQ_.AllocTensor<T>();
        auto g = gQ_.AllocTensor<T>();
        mfds::LoadRows(y, yGm_, r, 1, h_);
        mfds::LoadRows(g, doutGm_, static_cast<uint64_t>(s) / k_, 1, h_);
        yQ_.EnQue(y);
        gQ_.EnQue(g);
        y = yQ_.DeQue<T>();
        g = gQ_.DeQue<T>();
        mfds::ToFloat(yf, y, pad_);
        mfds::ToFloat(gf, g, pad_);
        AscendC::Mul(tmp, yf, gf, h_);
        AscendC::ReduceSum(red, tmp, red, h_);
        one.SetValue(0, red.GetValue(0));
        AscendC::PipeBarrier<PIPE_ALL>();
        mfds::StoreRows(dwGm_, one, static_cast<uint64_t>(s), 1, 1);
        AscendC::Muls(tmp, gf, wGm_.GetValue(static_cast<uint64_t>(s)), pad_);
        mfds::FromFloat(dy, tmp, pad_);
        yQ_.FreeTensor(y);
        gQ_.FreeTensor(g);
      }
      dyQ_.EnQue(dy);
      dy = dyQ_.DeQue<T>();
      mfds::StoreRows(dyGm_, dy, r, 1, h_);
      dyQ_.FreeTensor(dy);
    }
  }

 private:
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> yQ_, gQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> dyQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> yf_, gf_, tmp_, red_, one_;
  AscendC::GlobalTensor<T> doutGm_, yGm_, dyGm_;
  AscendC::GlobalTensor<int32_t> slotGm_;
  AscendC::GlobalTensor<float> wGm_, dwGm_;
  uint32_t h_ = 0, pad_ = 0, k_ = 1;
  uint64_t slots_ = 0, r0_ = 0, nr_ = 0;
};

extern "C" __global__ __aicore__ void mfds_moe_unpermute_grad(GM_ADDR dout, GM_ADDR y_perm, GM_ADDR slot,
                                                              GM_ADDR weight, GM_ADDR dy_perm, GM_ADDR dweight,
                                                              GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  MoeUnpermuteGradKernel<DTYPE_DOUT> op;
  op.Init(dout, y_perm, slot, weight, dy_perm, dweight, t);
  op.Process();
}
