// Rotary embedding on rows (b, h, s) of x [B, H, S, D] with cos/sin rows (b, s) of width D/2.
// Forward:  [x1, x2] = pairs of x (interleaved (2i, 2i+1) when mode = 1, halves otherwise),
//           y = [x1 c - x2 s, x2 c + x1 s]
// Backward: [d1, d2] = halves of dy, dx1 = d1 c + d2 s, dx2 = -d1 s + d2 c, scattered back
//           into the pair layout.
// The pair layout is a permutation: Gather with byte-offset tables built once per core.
#pragma once
#include "../../common/kernel_common.h"

template <typename T, bool kBackward>
class RopeKernel {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR cs, GM_ADDR sn, GM_ADDR mode, GM_ADDR y,
                              const MfdsRowTilingData &t) {
    d_ = t.cols;
    half_ = d_ / 2;
    pad_ = mfds::AlignElems(d_, sizeof(float));
    heads_ = t.aux0;
    seq_ = t.aux1;
    cosBatch_ = t.aux2;
    tileRows_ = t.tileRows;
    interleaved_ = ((__gm__ float *)mode)[0] > 0.5f;
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    xGm_.SetGlobalBuffer((__gm__ T *)x);
    cGm_.SetGlobalBuffer((__gm__ T *)cs);
    sGm_.SetGlobalBuffer((__gm__ T *)sn);
    yGm_.SetGlobalBuffer((__gm__ T *)y);
    pipe_.InitBuffer(xQ_, mfds::kBufferNum, tileRows_ * pad_ * sizeof(T));
    pipe_.InitBuffer(yQ_, mfds::kBufferNum, tileRows_ * pad_ * sizeof(T));
    pipe_.InitBuffer(csQ_, mfds::kBufferNum, 2 * tileRows_ * pad_ * sizeof(T));
    for (auto *b : {&xf_, &pf_, &of_}) pipe_.InitBuffer(*b, tileRows_ * pad_ * sizeof(float));
    pipe_.InitBuffer(cf_, tileRows_ * pad_ * sizeof(float));
    pipe_.InitBuffer(sf_, tileRows_ * pad_ * sizeof(float));
    pipe_.InitBuffer(perm_, pad_ * sizeof(uint32_t));
    pipe_.InitBuffer(inv_, pad_ * sizeof(uint32_t));
    // perm: pair layout -> [firsts, seconds]; inv: back (byte offsets for Gather)
    auto perm = perm_.Get<uint32_t>();
    auto inv = inv_.Get<uint32_t>();
    for (uint32_t i = 0; i < half_; ++i) {
      const uint32_t i1 = interleaved_ ? 2 * i : i, i2 = interleaved_ ? 2 * i + 1 : i + half_;
      perm.SetValue(i, i1 * sizeof(float));
      perm.SetValue(i + half_, i2 * sizeof(float));
      inv.SetValue(i1, i * sizeof(float));
      inv.SetValue(i2, (i + half_) * sizeof(float));
    }
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < nrows_; done += tileRows_) {
      const uint32_t n = static_cast<uint32_t>(nrows_ - done < tileRows_ ? nrows_ - done : tileRows_);
      CopyIn(row0_ + done, n);
      Compute(n);
      auto y = yQ_.DeQue<T>();
      mfds::StoreRows(yGm_, y, row0_ + done, n, d_);
      yQ_.FreeTensor(y);
    }
  }

 private:
  __aicore__ inline void CopyIn(uint64_t row, uint32_t n) {
    auto x = xQ_.AllocTensor<T>();
    auto cs = csQ_.AllocTensor<T>();
    mfds::LoadRows(x, xGm_, row, n, d_);
    for (uint32_t i = 0; i < n; ++i) {  // the (b, s) cos/sin row of every (b, h, s) row
      const uint64_t r = row + i, s = r % seq_, b = r / (static_cast<uint64_t>(heads_) * seq_);
      const uint64_t crow = (cosBatch_ == 1 ? 0 : b) * seq_ + s;
      auto c = cs[i * pad_];
      auto sn = cs[(tileRows_ + i) * pad_];
      mfds::LoadRows(c, cGm_, crow, 1, half_);
      mfds::LoadRows(sn, sGm_, crow, 1, half_);
    }
    xQ_.EnQue(x);
    csQ_.EnQue(cs);
  }

  __aicore__ inline void Compute(uint32_t n) {
    auto x = xQ_.DeQue<T>();
    auto cs = csQ_.DeQue<T>();
    auto y = yQ_.AllocTensor<T>();
    auto xf = xf_.Get<float>(), pf = pf_.Get<float>(), of = of_.Get<float>(), cf = cf_.Get<float>(),
         sf = sf_.Get<float>();
    auto perm = perm_.Get<uint32_t>();
    auto inv = inv_.Get<uint32_t>();
    mfds::ToFloat(xf, x, n * pad_);
    mfds::ToFloat(cf, cs, n * pad_);
    auto snRaw = cs[tileRows_ * pad_];
    mfds::ToFloat(sf, snRaw, n * pad_);
    for (uint32_t i = 0; i < n; ++i) {
      auto xr = xf[i * pad_], pr = pf[i * pad_], orow = of[i * pad_], c = cf[i * pad_], s = sf[i * pad_];
      if (!kBackward) {
        AscendC::Gather(pr, xr, perm, 0, d_);                   // [x1, x2]
      } else {
        AscendC::DataCopy(pr, xr, pad_);                        // dy is already [d1, d2]
      }
      auto a = pr, b = pr[half_], oa = orow, ob = orow[half_];
      // forward:  oa = a c - b s, ob = b c + a s;  backward: oa = a c + b s, ob = b c - a s
      AscendC::Mul(oa, a, c, half_);
      AscendC::Mul(ob, b, s, half_);
      if (!kBackward) AscendC::Sub(oa, oa, ob, half_); else AscendC::Add(oa, oa, ob, half_);
      AscendC::Mul(ob, b, c, half_);
      AscendC::Mul(xr, a, s, half_);                          // xr is free as scratch now
      if (!kBackward) AscendC::Add(ob, ob, xr, half_); else AscendC::Sub(ob, ob, xr, half_);
      if (kBackward) {
        AscendC::Gather(xr, orow, inv, 0, d_);                 // back to the pair layout
        AscendC::DataCopy(orow, xr, pad_);
      }
    }
    mfds::FromFloat(y, of, n * pad_);
    yQ_.EnQue(y);
    xQ_.FreeTensor(x);
    csQ_.FreeTensor(cs);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> xQ_, csQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> yQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> xf_, pf_, of_, cf_, sf_, perm_, inv_;
  AscendC::GlobalTensor<T> xGm_, cGm_, sGm_, yGm_;
  uint32_t d_ = 0, half_ = 0, pad_ = 0, heads_ = 1, seq_ = 1, cosBatch_ = 1, tileRows_ = 1;
  uint64_t row0_ = 0, nrows_ = 0;
  bool interleaved_ = true;
};
