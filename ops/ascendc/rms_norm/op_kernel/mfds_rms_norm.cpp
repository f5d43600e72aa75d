// MfdsRmsNorm: y = gamma * x * rstd, rstd = 1 / sqrt(mean(x^2) + eps), per row, float32 math.
#include "../../common/kernel_common.h"

template <typename T>
class RmsNormKernel {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR gamma, GM_ADDR eps, GM_ADDR y, GM_ADDR rstd,
                              const MfdsRowTilingData &t) {
    cols_ = t.cols;
    colsPad_ = mfds::AlignElems(cols_, sizeof(float));
    tileRows_ = t.tileRows;
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    xGm_.SetGlobalBuffer((__gm__ T *)x);
    yGm_.SetGlobalBuffer((__gm__ T *)y);
    gammaGm_.SetGlobalBuffer((__gm__ T *)gamma);
    rstdGm_.SetGlobalBuffer((__gm__ float *)rstd);
    eps_ = ((__gm__ float *)eps)[0];
    pipe_.InitBuffer(inQ_, mfds::kBufferNum, tileRows_ * colsPad_ * sizeof(T));
    pipe_.InitBuffer(outQ_, mfds::kBufferNum, tileRows_ * colsPad_ * sizeof(T));
    pipe_.InitBuffer(rstdQ_, mfds::kBufferNum, mfds::AlignElems(tileRows_, 4) * sizeof(float));
    pipe_.InitBuffer(xf_, tileRows_ * colsPad_ * sizeof(float));
    pipe_.InitBuffer(sq_, colsPad_ * sizeof(float));
    pipe_.InitBuffer(red_, 64 * sizeof(float));
    pipe_.InitBuffer(gammaBuf_, colsPad_ * sizeof(float));
    pipe_.InitBuffer(gammaRaw_, colsPad_ * sizeof(T));
    auto graw = gammaRaw_.Get<T>();
    mfds::LoadRows(graw, gammaGm_, 0, 1, cols_);
    AscendC::PipeBarrier<PIPE_ALL>();
    auto gf = gammaBuf_.Get<float>();
    mfds::ToFloat(gf, graw, colsPad_);
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < nrows_; done += tileRows_) {
      const uint32_t n = static_cast<uint32_t>(nrows_ - done < tileRows_ ? nrows_ - done : tileRows_);
      CopyIn(row0_ + done, n);
      Compute(n);
      CopyOut(row0_ + done, n);
    }
  }

 private:
  __aicore__ inline void CopyIn(uint64_t row, uint32_t n) {
    auto x = inQ_.AllocTensor<T>();
    mfds::LoadRows(x, xGm_, row, n, cols_);
    inQ_.EnQue(x);
  }

  __aicore__ inline void Compute(uint32_t n) {
    auto x = inQ_.DeQue<T>();
    auto y = outQ_.AllocTensor<T>();
    auto r = rstdQ_.AllocTensor<float>();
    auto xf = xf_.Get<float>();
    auto sq = sq_.Get<float>();
    auto red = red_.Get<float>();
    auto gf = gammaBuf_.Get<float>();
    mfds::ToFloat(xf, x, n * colsPad_);
    for (uint32_t i = 0; i < n; ++i) {  // sum of squares of every row of the tile
      auto row = xf[i * colsPad_];
      AscendC::Mul(sq, row, row, cols_);
      AscendC::ReduceSum(red, sq, red, cols_);
      r.SetValue(i, red.GetValue(0));
    }
    AscendC::Muls(r, r, 1.0f / static_cast<float>(cols_), n);  // rstd = 1 / sqrt(mean + eps), as a vector
    AscendC::Adds(r, r, eps_, n);
    AscendC::Sqrt(r, r, n);
    AscendC::Reciprocal(r, r, n);
    for (uint32_t i = 0; i < n; ++i) {
      auto row = xf[i * colsPad_];
      AscendC::Muls(row, row, r.GetValue(i), cols_);
      AscendC::Mul(row, row, gf, cols_);
    }
    mfds::FromFloat(y, xf, n * colsPad_);
    outQ_.EnQue(y);
    rstdQ_.EnQue(r);
    inQ_.FreeTensor(x);
  }

  __aicore__ inline void CopyOut(uint64_t row, uint32_t n) {
    auto y = outQ_.DeQue<T>();
    auto r = rstdQ_.DeQue<float>();
    mfds::StoreRows(yGm_, y, row, n, cols_);
    mfds::StoreRows(rstdGm_, r, row, 1, n);
    outQ_.FreeTensor(y);
    rstdQ_.FreeTensor(r);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> inQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> outQ_, rstdQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> xf_, sq_, red_, gammaBuf_, gammaRaw_;
  AscendC::GlobalTensor<T> xGm_, yGm_, gammaGm_;
  AscendC::GlobalTensor<float> rstdGm_;
  uint32_t cols_ = 0, colsPad_ = 0, tileRows_ = 1;
  uint64_t row0_ = 0, nrows_ = 0;
  float eps_ = 1e-6f;
};

extern "C" __global__ __aicore__ void mfds_rms_norm(GM_ADDR x, GM_ADDR gamma, GM_ADDR eps, GM_ADDR y, GM_ADDR rstd,
                                                    GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  RmsNormKernel<DTYPE_X> op;
  op.Init(x, gamma, eps, y, rstd, t);
  op.Process();
}
