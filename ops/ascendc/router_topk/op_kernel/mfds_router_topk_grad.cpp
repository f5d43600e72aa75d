// MfdsRouterTopkGrad: dlogits from the gradients of the weights (through the normalisation)
// and of the scores (through sigmoid / softmax); the bias gets none (it only steers the choice).
#include "../../common/kernel_common.h"

class RouterTopkGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR scores, GM_ADDR indices, GM_ADDR dweights, GM_ADDR dscores, GM_ADDR params,
                              GM_ADDR dlogits, GM_ADDR dbias, const MfdsRowTilingData &t) {
    e_ = t.cols;
    pad_ = mfds::AlignElems(e_, sizeof(float));
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    const __gm__ float *p = (__gm__ float *)params;
    k_ = static_cast<int>(p[0]);
    sigmoid_ = p[3] > 0.5f;
    normalised_ = p[5] > 0.5f && (sigmoid_ || k_ > 1);
    scale_ = p[6];
    sGm_.SetGlobalBuffer((__gm__ float *)scores);
    iGm_.SetGlobalBuffer((__gm__ int32_t *)indices);
    dwGm_.SetGlobalBuffer((__gm__ float *)dweights);
    dsGm_.SetGlobalBuffer((__gm__ float *)dscores);
    dlGm_.SetGlobalBuffer((__gm__ float *)dlogits);
    dbGm_.SetGlobalBuffer((__gm__ float *)dbias);
    pipe_.InitBuffer(sQ_, mfds::kBufferNum, pad_ * sizeof(float));
    pipe_.InitBuffer(dsQ_, mfds::kBufferNum, pad_ * sizeof(float));
    pipe_.InitBuffer(kQ_, mfds::kBufferNum, 64);
    pipe_.InitBuffer(dlQ_, mfds::kBufferNum, pad_ * sizeof(float));
    pipe_.InitBuffer(tmp_, pad_ * sizeof(float));
    pipe_.InitBuffer(red_, 64 * sizeof(float));
    if (AscendC::GetBlockIdx() == 0) {  // dbias = 0
      auto z = tmp_.Get<float>();
      AscendC::Duplicate(z, 0.0f, pad_);
      AscendC::PipeBarrier<PIPE_ALL>();
      mfds::StoreRows(dbGm_, z, 0, 1, e_);
    }
  }

  __aicore__ inline void Process() {
    for (uint64_t r = row0_; r < row0_ + nrows_; ++r) {
      auto s = sQ_.AllocTensor<float>();
      auto ds = dsQ_.AllocTensor<float>();
      auto kb = kQ_.AllocTensor<float>();
      mfds::LoadRows(s, sGm_, r, 1, e_);
      mfds::LoadRows(ds, dsGm_, r, 1, e_);
      mfds::LoadRows(kb, dwGm_, r, 1, k_);
      auto ki = kb[8].ReinterpretCast<int32_t>();
      mfds::LoadRows(ki, iGm_, r, 1, k_);
      sQ_.EnQue(s);
      dsQ_.EnQue(ds);
      kQ_.EnQue(kb);
      Token();
      auto dl = dlQ_.DeQue<float>();
      mfds::StoreRows(dlGm_, dl, r, 1, e_);
      dlQ_.FreeTensor(dl);
    }
  }

 private:
  __aicore__ inline void Token() {
    auto s = sQ_.DeQue<float>();
    auto ds = dsQ_.DeQue<float>();
    auto kb = kQ_.DeQue<float>();
    auto idx = kb[8].ReinterpretCast<int32_t>();
    auto dl = dlQ_.AllocTensor<float>();
    auto tmp = tmp_.Get<float>();
    auto red = red_.Get<float>();
    AscendC::PipeBarrier<PIPE_ALL>();
    if (normalised_) {  // w_j = c s_j / (S + eps): ds_j += c (dw_j / den - sum_i dw_i s_i / den^2)
      const float c = sigmoid_ ? scale_ : 1.0f;
      float sum = 0.0f, dot = 0.0f;
      for (int j = 0; j < k_; ++j) {
        const float sv = s.GetValue(idx.GetValue(j));
        sum += sv;
        dot += kb.GetValue(j) * sv;
      }
      const float den = sum + 1e-20f;
      for (int j = 0; j < k_; ++j) {
        const int e = idx.GetValue(j);
        ds.SetValue(e, ds.GetValue(e) + c * (kb.GetValue(j) / den - dot / (den * den)));
      }
    } else {
      for (int j = 0; j < k_; ++j) {
        const int e = idx.GetValue(j);
        ds.SetValue(e, ds.GetValue(e) + scale_ * kb.GetValue(j));
      }
    }
    if (sigmoid_) {  // dl = ds * s (1 - s)
      AscendC::Muls(tmp, s, -1.0f, e_);
      AscendC::Adds(tmp, tmp, 1.0f, e_);
      AscendC::Mul(tmp, tmp, s, e_);
      AscendC::Mul(dl, ds, tmp, e_);
    } else {         // dl = s (ds - sum(ds s))
      AscendC::Mul(tmp, ds, s, e_);
      AscendC::ReduceSum(red, tmp, red, e_);
      AscendC::Adds(tmp, ds, -red.GetValue(0), e_);
      AscendC::Mul(dl, tmp, s, e_);
    }
    dlQ_.EnQue(dl);
    sQ_.FreeTensor(s);
    dsQ_.FreeTensor(ds);
    kQ_.FreeTensor(kb);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> sQ_, dsQ_, kQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> dlQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> tmp_, red_;
  AscendC::GlobalTensor<float> sGm_, dwGm_, dsGm_, dlGm_, dbGm_;
  AscendC::GlobalTensor<int32_t> iGm_;
  uint32_t e_ = 0, pad_ = 0;
  int k_ = 1;
  bool sigmoid_ = true, normalised_ = true;
  float scale_ = 1.0f;
  uint64_t row0_ = 0, nrows_ = 0;
};

extern "C" __global__ __aicore__ void mfds_router_topk_grad(GM_ADDR logits, GM_ADDR scores, GM_ADDR indices,
                                                            GM_ADDR dweights, GM_ADDR dscores, GM_ADDR params,
                                                            GM_ADDR dlogits, GM_ADDR dbias, GM_ADDR workspace,
                                                            GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  RouterTopkGradKernel op;
  op.Init(scores, indices, dweights, dscores, params, dlogits, dbias, t);
  op.Process();
}
