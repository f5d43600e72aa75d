// MfdsSwiglu: y = silu(gate) * up on rows of [gate; up], float32 math, double-buffered rows.
#include "../../common/kernel_common.h"

template <typename T>
class SwigluKernel {
 public:
  __aicore__ inline void Init(GM_ADDR gu, GM_ADDR y, const MfdsRowTilingData &t) {
    inter_ = t.cols / 2;
    pad_ = mfds::AlignElems(inter_, sizeof(float));
    tileRows_ = t.tileRows;
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    guGm_.SetGlobalBuffer((__gm__ T *)gu);
    yGm_.SetGlobalBuffer((__gm__ T *)y);
    pipe_.InitBuffer(gQ_, mfds::kBufferNum, tileRows_ * pad_ * sizeof(T));
    pipe_.InitBuffer(uQ_, mfds::kBufferNum, tileRows_ * pad_ * sizeof(T));
    pipe_.InitBuffer(yQ_, mfds::kBufferNum, tileRows_ * pad_ * sizeof(T));
    pipe_.InitBuffer(gf_, tileRows_ * pad_ * sizeof(float));
    pipe_.InitBuffer(uf_, tileRows_ * pad_ * sizeof(float));
    pipe_.InitBuffer(sf_, tileRows_ * pad_ * sizeof(float));
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < nrows_; done += tileRows_) {
      const uint32_t n = static_cast<uint32_t>(nrows_ - done < tileRows_ ? nrows_ - done : tileRows_);
      const uint64_t row = row0_ + done;
      // gate and up halves of each row: strided copies (row stride 2I, length I)
      auto g = gQ_.AllocTensor<T>();
      auto u = uQ_.AllocTensor<T>();
      AscendC::DataCopyExtParams p{static_cast<uint16_t>(n), static_cast<uint32_t>(inter_ * sizeof(T)),
                                   static_cast<uint32_t>(inter_ * sizeof(T)), 0, 0};
      AscendC::DataCopyPadExtParams<T> pad{false, 0, 0, 0};
      AscendC::DataCopyPad(g, guGm_[row * 2 * inter_], p, pad);
      AscendC::DataCopyPad(u, guGm_[row * 2 * inter_ + inter_], p, pad);
      gQ_.EnQue(g);
      uQ_.EnQue(u);
      Compute(n);
      auto y = yQ_.DeQue<T>();
      mfds::StoreRows(yGm_, y, row, n, inter_);
      yQ_.FreeTensor(y);
    }
  }

 private:
  __aicore__ inline void Compute(uint32_t n) {
    auto g = gQ_.DeQue<T>();
    auto u = uQ_.DeQue<T>();
    auto y = yQ_.AllocTensor<T>();
    auto gf = gf_.Get<float>();
    auto uf = uf_.Get<float>();
    auto sf = sf_.Get<float>();
    const uint32_t len = n * pad_;
    mfds::ToFloat(gf, g, len);
    mfds::ToFloat(uf, u, len);
    mfds::Sigmoid(sf, gf, len);
    AscendC::Mul(gf, gf, sf, len);  // silu(g)
    AscendC::Mul(gf, gf, uf, len);
    mfds::FromFloat(y, gf, len);
    yQ_.EnQue(y);
    gQ_.FreeTensor(g);
    uQ_.FreeTensor(u);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> gQ_, uQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> yQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> gf_, uf_, sf_;
  AscendC::GlobalTensor<T> guGm_, yGm_;
  uint32_t inter_ = 0, pad_ = 0, tileRows_ = 1;
  uint64_t row0_ = 0, nrows_ = 0;
};

extern "C" __global__ __aicore__ void mfds_swiglu(GM_ADDR gate_up, GM_ADDR y, GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  SwigluKernel<DTYPE_GATE_UP> op;
  op.Init(gate_up, y, t);
  op.Process();
}
