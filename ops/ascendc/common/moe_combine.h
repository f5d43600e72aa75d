// out[n] = sum_j w[n, j] * src[row(n, j)] for a core's tokens (w = 1 for the permute grad).
#pragma once
#include "moe_rows.h"

template <typename T, bool kWeighted>
class MoeCombineKernel {
 public:
  __aicore__ inline void Init(GM_ADDR src, GM_ADDR slot, GM_ADDR weight, GM_ADDR out, const MfdsRowTilingData &t) {
    h_ = t.cols;
    pad_ = mfds::AlignElems(h_, sizeof(float));
    k_ = t.aux0;
    rows_ = t.aux1;
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, n0_, nn_);
    srcGm_.SetGlobalBuffer((__gm__ T *)src);
    slotGm_.SetGlobalBuffer((__gm__ int32_t *)slot);
    wGm_.SetGlobalBuffer((__gm__ float *)weight);
    outGm_.SetGlobalBuffer((__gm__ T *)out);
    pipe_.InitBuffer(inQ_, mfds::kBufferNum, pad_ * sizeof(T));
    pipe_.InitBuffer(outQ_, mfds::kBufferNum, pad_ * sizeof(T));
    pipe_.InitBuffer(acc_, pad_ * sizeof(float));
    pipe_.InitBuffer(rowf_, pad_ * sizeof(float));
    pipe_.InitBuffer(chunk_, 2048 * sizeof(int32_t));
    pipe_.InitBuffer(rowOf_, mfds::AlignElems(static_cast<uint32_t>(nn_ * k_), 4) * sizeof(int32_t));
    pipe_.InitBuffer(w_, mfds::AlignElems(static_cast<uint32_t>(nn_ * k_), 8) * sizeof(float));
  }

  __aicore__ inline void Process() {
    auto chunk = chunk_.Get<int32_t>();
    auto rowOf = rowOf_.Get<int32_t>();
    mfds::RowsOfSlots(slotGm_, rows_, n0_ * k_, nn_ * k_, chunk, 2048, rowOf);
    auto w = w_.Get<float>();
    if (kWeighted) {
      AscendC::DataCopyExtParams p{1, static_cast<uint32_t>(nn_ * k_ * sizeof(float)), 0, 0, 0};
      AscendC::DataCopyPadExtParams<float> pad{false, 0, 0, 0};
      AscendC::DataCopyPad(w, wGm_[n0_ * k_], p, pad);
      AscendC::PipeBarrier<PIPE_ALL>();
    }
    auto acc = acc_.Get<float>();
    auto rowf = rowf_.Get<float>();
    for (uint64_t n = 0; n < nn_; ++n) {
      AscendC::Duplicate(acc, 0.0f, pad_);
      for (uint32_t j = 0; j < k_; ++j) {
        const int32_t r = rowOf.GetValue(static_cast<uint32_t>(n * k_ + j));
        if (r < 0) continue;
        auto in = inQ_.AllocTensor<T>();
        mfds::LoadRows(in, srcGm_, static_cast<uint64_t>(r), 1, h_);
        inQ_.EnQue(in);
        in = inQ_.DeQue<T>();
        mfds::ToFloat(rowf, in, pad_);
        AscendC::Axpy(acc, rowf, kWeighted ? w.GetValue(static_cast<uint32_t>(n * k_ + j)) : 1.0f, pad_);
        inQ_.FreeTensor(in);
      }
      auto out = outQ_.AllocTensor<T>();
      mfds::FromFloat(out, acc, pad_);
      outQ_.EnQue(out);
      out = outQ_.DeQue<T>();
      mfds::StoreRows(outGm_, out, n0_ + n, 1, h_);
      outQ_.FreeTensor(out);
    }
  }

 private:
  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> inQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> outQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> acc_, rowf_, chunk_, rowOf_, w_;
  AscendC::GlobalTensor<T> srcGm_, outGm_;
  AscendC::GlobalTensor<int32_t> slotGm_;
  AscendC::GlobalTensor<float> wGm_;
  uint32_t h_ = 0, pad_ = 0, k_ = 1;
  uint64_t rows_ = 0, n0_ = 0, nn_ = 0;
};
