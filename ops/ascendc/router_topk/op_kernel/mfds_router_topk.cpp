// MfdsRouterTopk: DeepSeek routing per token (the semantics of the CPU kernel router.cc):
// sigmoid or softmax scores (vector unit), biased choice, group limiting (top-2 sum or max per
// group), top-k in descending order with ties to the lower index (scalar unit: E <= 256, k <= 8),
// weights normalised and scaled per the V2/V3 rules.
#include "../../common/kernel_common.h"

struct RouterParams {
  int k, groups, topkGroups, sigmoid, method, norm, hasBias;
  float scale;
};

class RouterTopkKernel {
 public:
  __aicore__ inline void Init(GM_ADDR logits, GM_ADDR bias, GM_ADDR params, GM_ADDR weights, GM_ADDR indices,
                              GM_ADDR scores, const MfdsRowTilingData &t) {
    e_ = t.cols;
    pad_ = mfds::AlignElems(e_, sizeof(float));
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    const __gm__ float *p = (__gm__ float *)params;
    prm_ = {static_cast<int>(p[0]), static_cast<int>(p[1]), static_cast<int>(p[2]), static_cast<int>(p[3]),
            static_cast<int>(p[4]), static_cast<int>(p[5]), static_cast<int>(p[7]), p[6]};
    lGm_.SetGlobalBuffer((__gm__ float *)logits);
    bGm_.SetGlobalBuffer((__gm__ float *)bias);
    wGm_.SetGlobalBuffer((__gm__ float *)weights);
    iGm_.SetGlobalBuffer((__gm__ int32_t *)indices);
    sGm_.SetGlobalBuffer((__gm__ float *)scores);
    pipe_.InitBuffer(lQ_, mfds::kBufferNum, pad_ * sizeof(float));
    pipe_.InitBuffer(sQ_, mfds::kBufferNum, pad_ * sizeof(float));
    pipe_.InitBuffer(wQ_, mfds::kBufferNum, 32);
    pipe_.InitBuffer(iQ_, mfds::kBufferNum, 32);
    pipe_.InitBuffer(choice_, pad_ * sizeof(float));
    pipe_.InitBuffer(bias_, pad_ * sizeof(float));
    pipe_.InitBuffer(red_, 64 * sizeof(float));
    auto b = bias_.Get<float>();
    if (prm_.hasBias) {
      mfds::LoadRows(b, bGm_, 0, 1, e_);
      AscendC::PipeBarrier<PIPE_ALL>();
    } else {
      AscendC::Duplicate(b, 0.0f, pad_);
    }
  }

  __aicore__ inline void Process() {
    for (uint64_t r = row0_; r < row0_ + nrows_; ++r) {
      auto l = lQ_.AllocTensor<float>();
      mfds::LoadRows(l, lGm_, r, 1, e_);
      lQ_.EnQue(l);
      Token();
      auto s = sQ_.DeQue<float>();
      auto w = wQ_.DeQue<float>();
      auto i = iQ_.DeQue<int32_t>();
      mfds::StoreRows(sGm_, s, r, 1, e_);
      mfds::StoreRows(wGm_, w, r, 1, prm_.k);
      mfds::StoreRows(iGm_, i, r, 1, prm_.k);
      sQ_.FreeTensor(s);
      wQ_.FreeTensor(w);
      iQ_.FreeTensor(i);
    }
  }

 private:
  __aicore__ inline void Token() {
    auto l = lQ_.DeQue<float>();
    auto s = sQ_.AllocTensor<float>();
    auto w = wQ_.AllocTensor<float>();
    auto idx = iQ_.AllocTensor<int32_t>();
    auto c = choice_.Get<float>();
    auto b = bias_.Get<float>();
    auto red = red_.Get<float>();
    if (prm_.sigmoid) {
      mfds::Sigmoid(s, l, e_);
    } else {  // softmax: exp(l - max) / sum
      AscendC::ReduceMax(red, l, red, e_);
      AscendC::Adds(s, l, -red.GetValue(0), e_);
      AscendC::Exp(s, s, e_);
      AscendC::ReduceSum(red, s, red, e_);
      AscendC::Muls(s, s, 1.0f / red.GetValue(0), e_);
    }
    AscendC::Add(c, s, b, e_);
    AscendC::PipeBarrier<PIPE_ALL>();
    const float kNegInf = -3.4e38f;
    if (prm_.method != 0 && prm_.groups > 1) {
      const int per = e_ / prm_.groups;
      float gscore[256];
      bool keep[256];
      for (int g = 0; g < prm_.groups; ++g) {
        float a = kNegInf, bb = kNegInf;
        for (int j = 0; j < per; ++j) {
          const float v = c.GetValue(g * per + j);
          if (v > a) { bb = a; a = v; } else if (v > bb) { bb = v; }
        }
        gscore[g] = prm_.method == 2 ? a + bb : a;
        keep[g] = false;
      }
      for (int t = 0; t < prm_.topkGroups; ++t) {
        int best = -1;
        for (int g = 0; g < prm_.groups; ++g)
          if (!keep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
        keep[best] = true;
      }
      const float fill = prm_.method == 2 ? kNegInf : 0.0f;
      for (int g = 0; g < prm_.groups; ++g)
        if (!keep[g]) for (int j = 0; j < per; ++j) c.SetValue(g * per + j, fill);
    }
    float sum = 0.0f;
    for (int t = 0; t < prm_.k; ++t) {  // descending, ties to the lower index
      int best = -1;
      float bv = kNegInf;
      for (uint32_t j = 0; j < e_; ++j) {
        const float v = c.GetValue(j);
        if (best < 0 || v > bv) { best = static_cast<int>(j); bv = v; }
      }
      idx.SetValue(t, best);
      const float sv = s.GetValue(best);
      w.SetValue(t, sv);
      sum += sv;
      c.SetValue(best, -3.4e38f * 2.0f);  // -inf: taken
    }
    const bool normalised = prm_.norm && (prm_.sigmoid || prm_.k > 1);
    const float mult = normalised ? (prm_.sigmoid ? prm_.scale : 1.0f) / (sum + 1e-20f) : prm_.scale;
    for (int t = 0; t < prm_.k; ++t) w.SetValue(t, w.GetValue(t) * mult);
    sQ_.EnQue(s);
    wQ_.EnQue(w);
    iQ_.EnQue(idx);
    lQ_.FreeTensor(l);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> lQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> sQ_, wQ_, iQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> choice_, bias_, red_;
  AscendC::GlobalTensor<float> lGm_, bGm_, wGm_, sGm_;
  AscendC::GlobalTensor<int32_t> iGm_;
  RouterParams prm_{};
  uint32_t e_ = 0, pad_ = 0;
  uint64_t row0_ = 0, nrows_ = 0;
};

extern "C" __global__ __aicore__ void mfds_router_topk(GM_ADDR logits, GM_ADDR bias, GM_ADDR params, GM_ADDR weights,
                                                       GM_ADDR indices, GM_ADDR scores, GM_ADDR workspace,
                                                       GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  RouterTopkKernel op;
  op.Init(logits, bias, params, weights, indices, scores, t);
  op.Process();
}
