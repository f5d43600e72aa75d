// MfdsRmsNormGrad: dx = rstd * g*dy - rstd^3 / D * x * sum(g*dy*x) per row;
// dgamma = sum over rows of dy * x * rstd: every core accumulates its rows' partial sum in UB,
// writes it to workspace, and after a cross-core barrier core 0 adds the partials.
#include "../../common/kernel_common.h"

template <typename T>
class RmsNormGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR dy, GM_ADDR x, GM_ADDR gamma, GM_ADDR rstd, GM_ADDR dx, GM_ADDR dgamma,
                              GM_ADDR workspace, const MfdsRowTilingData &t) {
    cols_ = t.cols;
    colsPad_ = mfds::AlignElems(cols_, sizeof(float));
    tileRows_ = t.tileRows;
    cores_ = t.cores;
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    dyGm_.SetGlobalBuffer((__gm__ T *)dy);
    xGm_.SetGlobalBuffer((__gm__ T *)x);
    gammaGm_.SetGlobalBuffer((__gm__ T *)gamma);
    rstdGm_.SetGlobalBuffer((__gm__ float *)rstd);
    dxGm_.SetGlobalBuffer((__gm__ T *)dx);
    dgammaGm_.SetGlobalBuffer((__gm__ T *)dgamma);
    partialGm_.SetGlobalBuffer((__gm__ float *)workspace);
    pipe_.InitBuffer(dyQ_, mfds::kBufferNum, tileRows_ * colsPad_ * sizeof(T));
    pipe_.InitBuffer(xQ_, mfds::kBufferNum, tileRows_ * colsPad_ * sizeof(T));
    pipe_.InitBuffer(rQ_, mfds::kBufferNum, mfds::AlignElems(tileRows_, 4) * sizeof(float));
    pipe_.InitBuffer(dxQ_, mfds::kBufferNum, tileRows_ * colsPad_ * sizeof(T));
    pipe_.InitBuffer(dyf_, tileRows_ * colsPad_ * sizeof(float));
    pipe_.InitBuffer(xf_, tileRows_ * colsPad_ * sizeof(float));
    pipe_.InitBuffer(tmp_, colsPad_ * sizeof(float));
    pipe_.InitBuffer(red_, 64 * sizeof(float));
    pipe_.InitBuffer(gammaBuf_, colsPad_ * sizeof(float));
    pipe_.InitBuffer(gammaRaw_, colsPad_ * sizeof(T));
    pipe_.InitBuffer(acc_, colsPad_ * sizeof(float));
    auto graw = gammaRaw_.Get<T>();
    mfds::LoadRows(graw, gammaGm_, 0, 1, cols_);
    AscendC::PipeBarrier<PIPE_ALL>();
    auto gf = gammaBuf_.Get<float>();
    mfds::ToFloat(gf, graw, colsPad_);
    auto acc = acc_.Get<float>();
    AscendC::Duplicate(acc, 0.0f, colsPad_);
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < nrows_; done += tileRows_) {
      const uint32_t n = static_cast<uint32_t>(nrows_ - done < tileRows_ ? nrows_ - done : tileRows_);
      CopyIn(row0_ + done, n);
      Compute(n);
      CopyOut(row0_ + done, n);
    }
    ReduceGamma();
  }

 private:
  __aicore__ inline void CopyIn(uint64_t row, uint32_t n) {
    auto dy = dyQ_.AllocTensor<T>();
    auto x = xQ_.AllocTensor<T>();
    auto r = rQ_.AllocTensor<float>();
    mfds::LoadRows(dy, dyGm_, row, n, cols_);
    mfds::LoadRows(x, xGm_, row, n, cols_);
    mfds::LoadRows(r, rstdGm_, row, 1, n);
    dyQ_.EnQue(dy);
    xQ_.EnQue(x);
    rQ_.EnQue(r);
  }

  __aicore__ inline void Compute(uint32_t n) {
    auto dy = dyQ_.DeQue<T>();
    auto x = xQ_.DeQue<T>();
    auto r = rQ_.DeQue<float>();
    auto dx = dxQ_.AllocTensor<T>();
    auto dyf = dyf_.Get<float>();
    auto xf = xf_.Get<float>();
    auto tmp = tmp_.Get<float>();
    auto red = red_.Get<float>();
    auto gf = gammaBuf_.Get<float>();
    auto acc = acc_.Get<float>();
    mfds::ToFloat(dyf, dy, n * colsPad_);
    mfds::ToFloat(xf, x, n * colsPad_);
    for (uint32_t i = 0; i < n; ++i) {
      auto dyr = dyf[i * colsPad_];
      auto xr = xf[i * colsPad_];
      const float rs = r.GetValue(i);
      AscendC::Mul(tmp, dyr, xr, cols_);          // dy * x
      AscendC::Axpy(acc, tmp, rs, cols_);         // dgamma partial += dy * x * rstd
      AscendC::Mul(tmp, tmp, gf, cols_);          // g * dy * x
      AscendC::ReduceSum(red, tmp, red, cols_);
      const float c = rs * rs * rs * red.GetValue(0) / static_cast<float>(cols_);
      AscendC::Mul(dyr, dyr, gf, cols_);          // g * dy
      AscendC::Muls(dyr, dyr, rs, cols_);         // rstd * g * dy
      AscendC::Axpy(dyr, xr, -c, cols_);          // - c * x
    }
    mfds::FromFloat(dx, dyf, n * colsPad_);
    dxQ_.EnQue(dx);
    dyQ_.FreeTensor(dy);
    xQ_.FreeTensor(x);
    rQ_.FreeTensor(r);
  }

  __aicore__ inline void CopyOut(uint64_t row, uint32_t n) {
    auto dx = dxQ_.DeQue<T>();
    mfds::StoreRows(dxGm_, dx, row, n, cols_);
    dxQ_.FreeTensor(dx);
  }

  __aicore__ inline void ReduceGamma() {
    auto acc = acc_.Get<float>();
    const uint32_t b = AscendC::GetBlockIdx();
    AscendC::DataCopy(partialGm_[b * colsPad_], acc, colsPad_);
    AscendC::SyncAll();  // every core's partial is in workspace
    if (b != 0) return;
    auto tmp = tmp_.Get<float>();
    for (uint32_t c = 1; c < cores_; ++c) {
      AscendC::DataCopy(tmp, partialGm_[c * colsPad_], colsPad_);
      AscendC::PipeBarrier<PIPE_ALL>();
      AscendC::Add(acc, acc, tmp, colsPad_);
    }
    auto graw = gammaRaw_.Get<T>();
    mfds::FromFloat(graw, acc, colsPad_);
    AscendC::PipeBarrier<PIPE_ALL>();
    mfds::StoreRows(dgammaGm_, graw, 0, 1, cols_);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> dyQ_, xQ_, rQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> dxQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> dyf_, xf_, tmp_, red_, gammaBuf_, gammaRaw_, acc_;
  AscendC::GlobalTensor<T> dyGm_, xGm_, gammaGm_, dxGm_, dgammaGm_;
  AscendC::GlobalTensor<float> rstdGm_, partialGm_;
  uint32_t cols_ = 0, colsPad_ = 0, tileRows_ = 1, cores_ = 1;
  uint64_t row0_ = 0, nrows_ = 0;
};

extern "C" __global__ __aicore__ void mfds_rms_norm_grad(GM_ADDR dy, GM_ADDR x, GM_ADDR gamma, GM_ADDR rstd,
                                                         GM_ADDR dx, GM_ADDR dgamma, GM_ADDR workspace,
                                                         GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  RmsNormGradKernel<DTYPE_DY> op;
  op.Init(dy, x, gamma, rstd, dx, dgamma, AscendC::GetUserWorkspace(workspace), t);
  op.Process();
}
