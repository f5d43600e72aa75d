// MfdsSparseMlaAttentionGrad: the backward of MfdsSparseMlaAttention (ops/cpu/sparse_attention.cc's
// math). Per (batch, head, query) row, with p = exp(s - m - log l) recomputed from the forward's
// stats and delta = dout . out:
//   ds = p (dout . v_j - delta) scale;  dq_nope += ds k_nope_j;  dq_pe += ds k_pe_j   (the row's own)
//   dk_nope_j += ds q_nope;  dv_j += p dout;  dk_pe_j += ds q_pe                        (scattered)
// The scattered rows are shared by every query that chose the key (and k_pe by every head), on
// every core, so they are atomically added into a float32 workspace: zeroed by the cores first,
// all cores synchronised, rows processed, synchronised again, then cast into dkv and dk_pe.
// q's rope channels get a zero gradient (the model feeds q_pe separately).
#include "../../common/topk_rows.h"

template <typename T>
class SparseMlaAttentionGradKernel {
 public:
  __aicore__ inline void Init(GM_ADDR dout, GM_ADDR q, GM_ADDR qpe, GM_ADDR kv, GM_ADDR kpe, GM_ADDR index,
                              GM_ADDR bias, GM_ADDR scale, GM_ADDR out, GM_ADDR stats, GM_ADDR dq, GM_ADDR dqpe,
                              GM_ADDR dkv, GM_ADDR dkpe, GM_ADDR workspace, const MfdsSparseAttentionTilingData &t) {
    d_ = mfds::SparseDimsOf(t);
    mfds::CoreRows(d_.rowsPerCore, d_.lastRows, d_.cores, row0_, nrows_);
    rows_.Init(pipe_, d_, q, qpe, kv, kpe, index, bias, scale, kChunk);   // the final cast goes by chunks
    doutGm_.SetGlobalBuffer((__gm__ T *)dout);
    outGm_.SetGlobalBuffer((__gm__ T *)out);
    statsGm_.SetGlobalBuffer((__gm__ float *)stats);
    dqGm_.SetGlobalBuffer((__gm__ T *)dq);
    dqpeGm_.SetGlobalBuffer((__gm__ T *)dqpe);
    dkvGm_.SetGlobalBuffer((__gm__ T *)dkv);
    dkpeGm_.SetGlobalBuffer((__gm__ T *)dkpe);
    kvElems_ = static_cast<uint64_t>(d_.b) * d_.sk * d_.h * (d_.dn + d_.dv);
    kpeElems_ = static_cast<uint64_t>(d_.b) * d_.sk * d_.dr;
    __gm__ float *ws = (__gm__ float *)AscendC::GetUserWorkspace(workspace);
    wsKv_.SetGlobalBuffer(ws);
    wsKpe_.SetGlobalBuffer(ws + kvElems_);
    pipe_.InitBuffer(do_, d_.padV * 4);
    pipe_.InitBuffer(o_, d_.padV * 4);
    pipe_.InitBuffer(dqn_, d_.padN * 4);
    pipe_.InitBuffer(dqp_, d_.padR * 4);
    pipe_.InitBuffer(gN_, d_.padN * 4);
    pipe_.InitBuffer(gV_, d_.padV * 4);
    pipe_.InitBuffer(gR_, d_.padR * 4);
    pipe_.InitBuffer(st_, 8 * 4);
    pipe_.InitBuffer(chunk_, kChunk * 4);
  }

  __aicore__ inline void Process() {
    ForMyShare(kvElems_ + kpeElems_, [&](uint64_t at, uint32_t n) {   // zero the accumulators
      auto z = chunk_.Get<float>();
      AscendC::Duplicate(z, 0.0f, kChunk);
      AscendC::PipeBarrier<PIPE_ALL>();
      StoreWorkspace(at, z, n);
    });
    AscendC::SyncAll();
    for (uint64_t r = row0_; r < row0_ + nrows_; ++r) Row(r);
    AscendC::SyncAll();
    ForMyShare(kvElems_ + kpeElems_, [&](uint64_t at, uint32_t n) {   // float32 sums into the outputs
      auto c = chunk_.Get<float>();
      if (at < kvElems_) {
        mfds::LoadRun(c, wsKv_, at, n);
        rows_.StoreFloat(dkvGm_, at, c, n);
      } else {
        mfds::LoadRun(c, wsKpe_, at - kvElems_, n);
        rows_.StoreFloat(dkpeGm_, at - kvElems_, c, n);
      }
    });
  }

 private:
  static constexpr uint32_t kChunk = 2048;

  // this core's part of [0, total) in chunks that never straddle the kv / k_pe boundary
  template <typename F>
  __aicore__ inline void ForMyShare(uint64_t total, F f) {
    const uint64_t per = (total + d_.cores - 1) / d_.cores;
    const uint64_t begin = per * AscendC::GetBlockIdx(), end = begin + per < total ? begin + per : total;
    for (uint64_t at = begin; at < end;) {
      const uint64_t limit = at < kvElems_ && end > kvElems_ ? kvElems_ : end;
      const uint32_t n = static_cast<uint32_t>(limit - at < kChunk ? limit - at : kChunk);
      f(at, n);
      at += n;
    }
  }

  __aicore__ inline void StoreWorkspace(uint64_t at, AscendC::LocalTensor<float> src, uint32_t n) {
    if (at < kvElems_) {
      mfds::StoreRun(wsKv_, at, src, n);
    } else {
      mfds::StoreRun(wsKpe_, at - kvElems_, src, n);
    }
    AscendC::PipeBarrier<PIPE_ALL>();
  }

  __aicore__ inline void AtomicAdd(AscendC::GlobalTensor<float> &dst, uint64_t at, AscendC::LocalTensor<float> src,
                                   uint32_t n) {
    AscendC::PipeBarrier<PIPE_ALL>();
    AscendC::SetAtomicAdd<float>();
    mfds::StoreRun(dst, at, src, n);
    AscendC::SetAtomicNone();
    AscendC::PipeBarrier<PIPE_ALL>();
  }

  __aicore__ inline void Row(uint64_t r) {
    rows_.LoadQuery(r);
    const uint64_t bi = rows_.bi_, i = rows_.i_, hh = rows_.hh_;
    auto dO = do_.Get<float>(), o = o_.Get<float>(), dqn = dqn_.Get<float>(), dqp = dqp_.Get<float>();
    auto gN = gN_.Get<float>(), gV = gV_.Get<float>(), gR = gR_.Get<float>(), st = st_.Get<float>();
    auto tmp = rows_.Tmp(), red = rows_.Red();
    rows_.LoadFloat(dO, doutGm_, d_.OAt(bi, i, hh), d_.dv);
    rows_.LoadFloat(o, outGm_, d_.OAt(bi, i, hh), d_.dv);
    mfds::LoadRun(st, statsGm_, d_.StatsAt(bi, i, hh), 2);
    AscendC::Duplicate(dqn, 0.0f, d_.padN);
    AscendC::Duplicate(dqp, 0.0f, d_.padR);
    AscendC::PipeBarrier<PIPE_ALL>();
    const float delta = mfds::Dot(dO, o, tmp, red, d_.dv);
    const float shift = st.GetValue(0) + st.GetValue(1);   // m + log l
    for (uint32_t t0 = 0; t0 < d_.k; t0 += d_.keyTile) {
      const uint32_t n = rows_.GatherAndScore(t0);
      if (n == 0) continue;
      auto s = rows_.S();
      AscendC::Adds(s, s, -shift, n);   // p = exp(s - m - log l)
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Exp(s, s, n);
      AscendC::PipeBarrier<PIPE_ALL>();
      auto keys = rows_.Keys();
      for (uint32_t c = 0; c < n; ++c) {
        const float p = s.GetValue(c);
        const int32_t j = keys.GetValue(c);
        const float ds = p * (mfds::Dot(dO, rows_.Value(c), tmp, red, d_.dv) - delta) * rows_.Scale();
        AscendC::Axpy(dqn, rows_.KNope(c), ds, d_.dn);
        AscendC::Axpy(dqp, rows_.KRope(c), ds, d_.dr);
        AscendC::Muls(gN, rows_.QNope(), ds, d_.dn);
        AscendC::Muls(gV, dO, p, d_.dv);
        AscendC::Muls(gR, rows_.QRope(), ds, d_.dr);
        AtomicAdd(wsKv_, d_.KvAt(bi, j, hh), gN, d_.dn);
        AtomicAdd(wsKv_, d_.KvAt(bi, j, hh) + d_.dn, gV, d_.dv);
        AtomicAdd(wsKpe_, d_.KpeAt(bi, j), gR, d_.dr);
      }
    }
    rows_.StoreFloat(dqGm_, d_.QAt(bi, i, hh), dqn, d_.dn);
    AscendC::Duplicate(gR, 0.0f, d_.padR);   // q's rope channels
    rows_.StoreFloat(dqGm_, d_.QAt(bi, i, hh) + d_.dn, gR, d_.dr);
    rows_.StoreFloat(dqpeGm_, d_.QpeAt(bi, i, hh), dqp, d_.dr);
  }

  AscendC::TPipe pipe_;
  mfds::SparseDims d_{};
  mfds::TopkRows<T> rows_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> do_, o_, dqn_, dqp_, gN_, gV_, gR_, st_, chunk_;
  AscendC::GlobalTensor<T> doutGm_, outGm_, dqGm_, dqpeGm_, dkvGm_, dkpeGm_;
  AscendC::GlobalTensor<float> statsGm_, wsKv_, wsKpe_;
  uint64_t row0_ = 0, nrows_ = 0, kvElems_ = 0, kpeElems_ = 0;
};

extern "C" __global__ __aicore__ void mfds_sparse_mla_attention_grad(GM_ADDR dout, GM_ADDR q, GM_ADDR q_pe, GM_ADDR kv,
                                                                     GM_ADDR k_pe, GM_ADDR index, GM_ADDR bias,
                                                                     GM_ADDR scale, GM_ADDR out, GM_ADDR stats,
                                                                     GM_ADDR dq, GM_ADDR dq_pe, GM_ADDR dkv,
                                                                     GM_ADDR dk_pe, GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  SparseMlaAttentionGradKernel<DTYPE_Q> op;
  op.Init(dout, q, q_pe, kv, k_pe, index, bias, scale, out, stats, dq, dq_pe, dkv, dk_pe, workspace, t);
  op.Process();
}
