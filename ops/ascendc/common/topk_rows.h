// Device side shared by MfdsSparseMlaAttention and its gradient: one (batch, head, query) row's
// query and chosen keys in the unified buffer (the semantics of ops/cpu/sparse_attention.cc).
//
// A chosen key j = index[t] whose bias is below -1e29 (the model's mask value, -1e30), or that
// lies outside [0, Sk), is dropped. The kept keys of a tile are gathered row by row with
// DataCopyPad (a key's k_nope, value and rope rows sit at unaligned GM offsets), cast to float32,
// and scored on the vector unit: s = (q_nope . k_nope + q_pe . k_pe) * scale + bias.
#pragma once
#include "kernel_common.h"

namespace mfds {

constexpr float kMaskedBelow = -1e29f;

struct SparseDims {
  uint32_t b, sq, sk, h, dn, dr, dv, k, keyTile;
  uint32_t padN, padR, padV, padK;
  uint64_t rowsPerCore, lastRows;
  uint32_t cores;
  // the layouts of ops/cpu/mla_layout.h
  __aicore__ inline uint64_t QAt(uint64_t bi, uint64_t i, uint64_t hh) const { return ((bi * sq + i) * h + hh) * (dn + dr); }
  __aicore__ inline uint64_t QpeAt(uint64_t bi, uint64_t i, uint64_t hh) const { return ((bi * h + hh) * sq + i) * dr; }
  __aicore__ inline uint64_t KvAt(uint64_t bi, uint64_t j, uint64_t hh) const { return ((bi * sk + j) * h + hh) * (dn + dv); }
  __aicore__ inline uint64_t KpeAt(uint64_t bi, uint64_t j) const { return (bi * sk + j) * dr; }
  __aicore__ inline uint64_t OAt(uint64_t bi, uint64_t i, uint64_t hh) const { return ((bi * sq + i) * h + hh) * dv; }
  __aicore__ inline uint64_t StatsAt(uint64_t bi, uint64_t i, uint64_t hh) const { return ((bi * h + hh) * sq + i) * 2; }
};

template <typename Tiling>
__aicore__ inline SparseDims SparseDimsOf(const Tiling &t) {
  SparseDims d{t.b, t.sq, t.sk, t.h, t.dn, t.dr, t.dv, t.k, t.keyTile, 0, 0, 0, 0, t.rowsPerCore, t.lastRows, t.cores};
  d.padN = AlignElems(d.dn, 4), d.padR = AlignElems(d.dr, 4), d.padV = AlignElems(d.dv, 4), d.padK = AlignElems(d.k, 4);
  return d;
}

// one contiguous GM run of `n` elements into UB (any GM offset)
template <typename T>
__aicore__ inline void LoadRun(AscendC::LocalTensor<T> dst, AscendC::GlobalTensor<T> &src, uint64_t at, uint32_t n) {
  AscendC::DataCopyExtParams p{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
  AscendC::DataCopyPadExtParams<T> pad{false, 0, 0, 0};
  AscendC::DataCopyPad(dst, src[at], p, pad);
}

template <typename T>
__aicore__ inline void StoreRun(AscendC::GlobalTensor<T> &dst, uint64_t at, AscendC::LocalTensor<T> src, uint32_t n) {
  AscendC::DataCopyExtParams p{1, static_cast<uint32_t>(n * sizeof(T)), 0, 0, 0};
  AscendC::DataCopyPad(dst[at], src, p);
}

// exp (or log) of one scalar through the vector unit (the AI core's scalar unit has no libm)
__aicore__ inline float ScalarOnVector(AscendC::LocalTensor<float> &scratch, float x, bool log) {
  AscendC::PipeBarrier<PIPE_ALL>();
  scratch.SetValue(0, x);
  AscendC::PipeBarrier<PIPE_ALL>();
  if (log) {
    AscendC::Ln(scratch, scratch, 8);
  } else {
    AscendC::Exp(scratch, scratch, 8);
  }
  AscendC::PipeBarrier<PIPE_ALL>();
  return scratch.GetValue(0);
}

__aicore__ inline float VecExp(AscendC::LocalTensor<float> &scratch, float x) { return ScalarOnVector(scratch, x, false); }
__aicore__ inline float VecLog(AscendC::LocalTensor<float> &scratch, float x) { return ScalarOnVector(scratch, x, true); }

// dot(a, b) over n floats (tmp: n floats of scratch, red: the reduction's work space)
__aicore__ inline float Dot(AscendC::LocalTensor<float> a, AscendC::LocalTensor<float> b, AscendC::LocalTensor<float> tmp,
                            AscendC::LocalTensor<float> &red, uint32_t n) {
  AscendC::Mul(tmp, a, b, n);
  AscendC::PipeBarrier<PIPE_V>();
  AscendC::ReduceSum(red, tmp, red[8], n);
  AscendC::PipeBarrier<PIPE_ALL>();
  return red.GetValue(0);
}

// The query row and its chosen keys (T: the op's dtype; everything is float32 once in UB).
template <typename T>
class TopkRows {
 public:
  // minRaw: the longest run the caller converts through LoadFloat / StoreFloat besides the rows
  __aicore__ inline void Init(AscendC::TPipe &pipe, const SparseDims &d, GM_ADDR q, GM_ADDR qpe, GM_ADDR kv, GM_ADDR kpe,
                              GM_ADDR index, GM_ADDR bias, GM_ADDR scale, uint32_t minRaw = 0) {
    d_ = d;
    qGm_.SetGlobalBuffer((__gm__ T *)q);
    qpeGm_.SetGlobalBuffer((__gm__ T *)qpe);
    kvGm_.SetGlobalBuffer((__gm__ T *)kv);
    kpeGm_.SetGlobalBuffer((__gm__ T *)kpe);
    idxGm_.SetGlobalBuffer((__gm__ int32_t *)index);
    biasGm_.SetGlobalBuffer((__gm__ float *)bias);
    scale_ = ((__gm__ float *)scale)[0];
    const uint32_t widest = d.padN > d.padV ? (d.padN > d.padR ? d.padN : d.padR) : (d.padV > d.padR ? d.padV : d.padR);
    pipe.InitBuffer(raw_, (widest > minRaw ? widest : AlignElems(minRaw, 4)) * 4);
    pipe.InitBuffer(qn_, d.padN * 4);
    pipe.InitBuffer(qp_, d.padR * 4);
    pipe.InitBuffer(idx_, d.padK * 4);
    pipe.InitBuffer(bias_, d.padK * 4);
    pipe.InitBuffer(kn_, d.keyTile * d.padN * 4);
    pipe.InitBuffer(v_, d.keyTile * d.padV * 4);
    pipe.InitBuffer(kp_, d.keyTile * d.padR * 4);
    pipe.InitBuffer(s_, d.keyTile * 4);
    pipe.InitBuffer(keys_, d.keyTile * 4);
    pipe.InitBuffer(tmp_, widest * 4);
    pipe.InitBuffer(red_, 64 * 4);
  }

  // row r of this op: (batch, head, query) in that order
  __aicore__ inline void LoadQuery(uint64_t r) {
    i_ = r % d_.sq;
    hh_ = (r / d_.sq) % d_.h;
    bi_ = r / (static_cast<uint64_t>(d_.sq) * d_.h);
    auto qn = qn_.Get<float>(), qp = qp_.Get<float>();
    LoadFloat(qn, qGm_, d_.QAt(bi_, i_, hh_), d_.dn);            // q's rope channels are unused
    LoadFloat(qp, qpeGm_, d_.QpeAt(bi_, i_, hh_), d_.dr);
    auto idx = idx_.Get<int32_t>();
    auto bias = bias_.Get<float>();
    LoadRun(idx, idxGm_, (bi_ * d_.sq + i_) * d_.k, d_.k);
    LoadRun(bias, biasGm_, (bi_ * d_.sq + i_) * d_.k, d_.k);
    AscendC::PipeBarrier<PIPE_ALL>();
  }

  // gathers the kept keys of chosen places [t0, t0 + keyTile) and scores them into S(); returns
  // how many were kept (their key indices in Keys())
  __aicore__ inline uint32_t GatherAndScore(uint32_t t0) {
    auto idx = idx_.Get<int32_t>();
    auto bias = bias_.Get<float>();
    auto keys = keys_.Get<int32_t>();
    auto s = s_.Get<float>();
    const uint32_t end = t0 + d_.keyTile < d_.k ? t0 + d_.keyTile : d_.k;
    uint32_t n = 0;
    for (uint32_t t = t0; t < end; ++t) {
      const int32_t j = idx.GetValue(t);
      const float b = bias.GetValue(t);
      if (b < kMaskedBelow || j < 0 || j >= static_cast<int32_t>(d_.sk)) continue;
      auto kn = kn_.Get<float>(), v = v_.Get<float>(), kp = kp_.Get<float>();
      LoadFloat(kn[n * d_.padN], kvGm_, d_.KvAt(bi_, j, hh_), d_.dn);
      LoadFloat(v[n * d_.padV], kvGm_, d_.KvAt(bi_, j, hh_) + d_.dn, d_.dv);
      LoadFloat(kp[n * d_.padR], kpeGm_, d_.KpeAt(bi_, j), d_.dr);
      keys.SetValue(n, j);
      s.SetValue(n, b);   // the bias, to which the scaled dot products are added below
      ++n;
    }
    AscendC::PipeBarrier<PIPE_ALL>();
    auto qn = qn_.Get<float>(), qp = qp_.Get<float>(), tmp = tmp_.Get<float>(), red = red_.Get<float>();
    auto kn = kn_.Get<float>(), kp = kp_.Get<float>();
    for (uint32_t c = 0; c < n; ++c) {
      const float dot = Dot(qn, kn[c * d_.padN], tmp, red, d_.dn) + Dot(qp, kp[c * d_.padR], tmp, red, d_.dr);
      s.SetValue(c, s.GetValue(c) + dot * scale_);
    }
    AscendC::PipeBarrier<PIPE_ALL>();
    return n;
  }

  __aicore__ inline AscendC::LocalTensor<float> S() { return s_.Get<float>(); }
  __aicore__ inline AscendC::LocalTensor<int32_t> Keys() { return keys_.Get<int32_t>(); }
  __aicore__ inline AscendC::LocalTensor<float> KNope(uint32_t c) { return kn_.Get<float>()[c * d_.padN]; }
  __aicore__ inline AscendC::LocalTensor<float> Value(uint32_t c) { return v_.Get<float>()[c * d_.padV]; }
  __aicore__ inline AscendC::LocalTensor<float> KRope(uint32_t c) { return kp_.Get<float>()[c * d_.padR]; }
  __aicore__ inline AscendC::LocalTensor<float> QNope() { return qn_.Get<float>(); }
  __aicore__ inline AscendC::LocalTensor<float> QRope() { return qp_.Get<float>(); }
  __aicore__ inline AscendC::LocalTensor<float> Tmp() { return tmp_.Get<float>(); }
  __aicore__ inline AscendC::LocalTensor<float> Red() { return red_.Get<float>(); }
  __aicore__ inline float Scale() const { return scale_; }
  uint64_t bi_ = 0, i_ = 0, hh_ = 0;

  // n elements of a T tensor at GM offset `at` into float32 UB
  __aicore__ inline void LoadFloat(AscendC::LocalTensor<float> dst, AscendC::GlobalTensor<T> &src, uint64_t at, uint32_t n) {
    if constexpr (std::is_same_v<T, float>) {
      LoadRun(dst, src, at, n);
    } else {
      auto raw = raw_.Get<T>();
      LoadRun(raw, src, at, n);
      AscendC::PipeBarrier<PIPE_ALL>();
      AscendC::Cast(dst, raw, AscendC::RoundMode::CAST_NONE, n);   // n, not padded: rows sit back to back
      AscendC::PipeBarrier<PIPE_ALL>();
    }
  }

  // n float32 UB elements to GM offset `at` of a T tensor
  __aicore__ inline void StoreFloat(AscendC::GlobalTensor<T> &dst, uint64_t at, AscendC::LocalTensor<float> src, uint32_t n) {
    AscendC::PipeBarrier<PIPE_ALL>();
    if constexpr (std::is_same_v<T, float>) {
      StoreRun(dst, at, src, n);
    } else {
      auto raw = raw_.Get<T>();
      AscendC::Cast(raw, src, AscendC::RoundMode::CAST_RINT, n);
      AscendC::PipeBarrier<PIPE_ALL>();
      StoreRun(dst, at, raw, n);
    }
    AscendC::PipeBarrier<PIPE_ALL>();
  }

 private:
  SparseDims d_{};
  float scale_ = 1.0f;
  AscendC::GlobalTensor<T> qGm_, qpeGm_, kvGm_, kpeGm_;
  AscendC::GlobalTensor<int32_t> idxGm_;
  AscendC::GlobalTensor<float> biasGm_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> raw_, qn_, qp_, idx_, bias_, kn_, v_, kp_, s_, keys_, tmp_, red_;
};

}  // namespace mfds
