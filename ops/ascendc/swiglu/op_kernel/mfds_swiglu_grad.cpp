// MfdsSwigluGrad: with s = sigmoid(g): dg = dy * u * s * (1 + g (1 - s)), du = dy * g * s.
#include "../../common/kernel_common.h"

template <typename T>
class SwigluGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR gu, GM_ADDR dy, GM_ADDR dgu, const MfdsRowTilingData &t) {
    inter_ = t.cols / 2;
    pad_ = mfds::AlignElems(inter_, sizeof(float));
    tileRows_ = t.tileRows;
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    guGm_.SetGlobalBuffer((__gm__ T *)gu);
    dyGm_.SetGlobalBuffer((__gm__ T *)dy);
    dguGm_.SetGlobalBuffer((__gm__ T *)dgu);
    for (auto *q : {&gQ_, &uQ_, &dyQ_}) pipe_.InitBuffer(*q, mfds::kBufferNum, tileRows_ * pad_ * sizeof(T));
    pipe_.InitBuffer(dgQ_, mfds::kBufferNum, tileRows_ * pad_ * sizeof(T));
    pipe_.InitBuffer(duQ_, mfds::kBufferNum, tileRows_ * pad_ * sizeof(T));
    for (auto *b : {&gf_, &uf_, &sf_, &df_, &tf_}) pipe_.InitBuffer(*b, tileRows_ * pad_ * sizeof(float));
  }

  __aicore__ inline void Process() {
    AscendC::DataCopyPadExtParams<T> pad{false, 0, 0, 0};
    for (uint64_t done = 0; done < nrows_; done += tileRows_) {
      const uint32_t n = static_cast<uint32_t>(nrows_ - done < tileRows_ ? nrows_ - done : tileRows_);
      const uint64_t row = row0_ + done;
      AscendC::DataCopyExtParams half{static_cast<uint16_t>(n), static_cast<uint32_t>(inter_ * sizeof(T)),
                                      static_cast<uint32_t>(inter_ * sizeof(T)), 0, 0};
      auto g = gQ_.AllocTensor<T>();
      auto u = uQ_.AllocTensor<T>();
      auto d = dyQ_.AllocTensor<T>();
      AscendC::DataCopyPad(g, guGm_[row * 2 * inter_], half, pad);
      AscendC::DataCopyPad(u, guGm_[row * 2 * inter_ + inter_], half, pad);
      mfds::LoadRows(d, dyGm_, row, n, inter_);
      gQ_.EnQue(g);
      uQ_.EnQue(u);
      dyQ_.EnQue(d);
      Compute(n);
      auto dg = dgQ_.DeQue<T>();
      auto du = duQ_.DeQue<T>();
      AscendC::DataCopyExtParams out{static_cast<uint16_t>(n), static_cast<uint32_t>(inter_ * sizeof(T)), 0,
                                     static_cast<uint32_t>(inter_ * sizeof(T)), 0};
      AscendC::DataCopyPad(dguGm_[row * 2 * inter_], dg, out);
      AscendC::DataCopyPad(dguGm_[row * 2 * inter_ + inter_], du, out);
      dgQ_.FreeTensor(dg);
      duQ_.FreeTensor(du);
    }
  }

 private:
  __aicore__ inline void Compute(uint32_t n) {
    auto g = gQ_.DeQue<T>();
    auto u = uQ_.DeQue<T>();
    auto d = dyQ_.DeQue<T>();
    auto dg = dgQ_.AllocTensor<T>();
    auto du = duQ_.AllocTensor<T>();
    auto gf = gf_.Get<float>(), uf = uf_.Get<float>(), sf = sf_.Get<float>(), df = df_.Get<float>(),
         tf = tf_.Get<float>();
    const uint32_t len = n * pad_;
    mfds::ToFloat(gf, g, len);
    mfds::ToFloat(uf, u, len);
    mfds::ToFloat(df, d, len);
    mfds::Sigmoid(sf, gf, len);
    // du = dy * g * s
    AscendC::Mul(tf, gf, sf, len);
    AscendC::Mul(tf, tf, df, len);
    mfds::FromFloat(du, tf, len);
    // dg = dy * u * s * (1 + g (1 - s))
    AscendC::Muls(tf, sf, -1.0f, len);
    AscendC::Adds(tf, tf, 1.0f, len);
    AscendC::Mul(tf, tf, gf, len);
    AscendC::Adds(tf, tf, 1.0f, len);
    AscendC::Mul(tf, tf, sf, len);
    AscendC::Mul(tf, tf, uf, len);
    AscendC::Mul(tf, tf, df, len);
    mfds::FromFloat(dg, tf, len);
    dgQ_.EnQue(dg);
    duQ_.EnQue(du);
    gQ_.FreeTensor(g);
    uQ_.FreeTensor(u);
    dyQ_.FreeTensor(d);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> gQ_, uQ_, dyQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> dgQ_, duQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> gf_, uf_, sf_, df_, tf_;
  AscendC::GlobalTensor<T> guGm_, dyGm_, dguGm_;
  uint32_t inter_ = 0, pad_ = 0, tileRows_ = 1;
  uint64_t row0_ = 0, nrows_ = 0;
};

extern "C" __global__ __aicore__ void mfds_swiglu_grad(GM_ADDR gate_up, GM_ADDR dy, GM_ADDR dgate_up,
                                                       GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  SwigluGradKernel<DTYPE_GATE_UP> op;
  op.Init(gate_up, dy, dgate_up, t);
  op.Process();
}
