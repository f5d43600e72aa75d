// MfdsSparseMlaAttention: MLA attention of each (batch, head, query) row over its top-k keys only
// (the semantics of ops/cpu/sparse_attention.cc). The chosen keys stream through the unified
// buffer in tiles with an online softmax: the running max m, the running sum l of exp(s - m) and
// the value accumulator are rescaled by exp(m_old - m_new) when a tile raises the max, so no
// [Sq, Sk] or [Sq, K] probability tensor exists. out = acc / l; stats = (m, log l), which the
// backward reads to recompute p = exp(s - m - log l). A row with no key left outputs zeros and
// stats (0, 0), as the CPU kernel does.
#include "../../common/topk_rows.h"

template <typename T>
class SparseMlaAttentionKernel {
 public:
  __aicore__ inline void Init(GM_ADDR q, GM_ADDR qpe, GM_ADDR kv, GM_ADDR kpe, GM_ADDR index, GM_ADDR bias,
                              GM_ADDR scale, GM_ADDR out, GM_ADDR stats, const MfdsSparseAttentionTilingData &t) {
    d_ = mfds::SparseDimsOf(t);
    mfds::CoreRows(d_.rowsPerCore, d_.lastRows, d_.cores, row0_, nrows_);
    rows_.Init(pipe_, d_, q, qpe, kv, kpe, index, bias, scale);
    outGm_.SetGlobalBuffer((__gm__ T *)out);
    statsGm_.SetGlobalBuffer((__gm__ float *)stats);
    pipe_.InitBuffer(acc_, d_.padV * 4);
    pipe_.InitBuffer(st_, 8 * 4);
    pipe_.InitBuffer(scratch_, 8 * 4);
  }

  __aicore__ inline void Process() {
    for (uint64_t r = row0_; r < row0_ + nrows_; ++r) Row(r);
  }

 private:
  __aicore__ inline void Row(uint64_t r) {
    rows_.LoadQuery(r);
    auto acc = acc_.Get<float>(), scratch = scratch_.Get<float>(), red = rows_.Red();
    AscendC::Duplicate(acc, 0.0f, d_.padV);
    bool any = false;
    float m = 0.0f, l = 0.0f;
    for (uint32_t t0 = 0; t0 < d_.k; t0 += d_.keyTile) {
      const uint32_t n = rows_.GatherAndScore(t0);
      if (n == 0) continue;
      auto s = rows_.S();
      AscendC::ReduceMax(red, s, red[8], n);
      AscendC::PipeBarrier<PIPE_ALL>();
      const float tileMax = red.GetValue(0);
      const float mNew = any && m > tileMax ? m : tileMax;
      if (any && mNew > m) {   // rescale what the earlier tiles summed
        const float corr = mfds::VecExp(scratch, m - mNew);
        AscendC::Muls(acc, acc, corr, d_.padV);
        l *= corr;
      }
      m = mNew;
      any = true;
      AscendC::Adds(s, s, -m, n);          // p = exp(s - m)
      AscendC::PipeBarrier<PIPE_V>();
      AscendC::Exp(s, s, n);
      AscendC::PipeBarrier<PIPE_ALL>();
      for (uint32_t c = 0; c < n; ++c) {
        const float p = s.GetValue(c);
        l += p;
        AscendC::Axpy(acc, rows_.Value(c), p, d_.dv);   // acc += p v
        AscendC::PipeBarrier<PIPE_V>();
      }
    }
    auto st = st_.Get<float>();
    if (any) {
      AscendC::Muls(acc, acc, 1.0f / l, d_.padV);
      st.SetValue(0, m);
      st.SetValue(1, mfds::VecLog(scratch, l));
    } else {
      st.SetValue(0, 0.0f);
      st.SetValue(1, 0.0f);
    }
    rows_.StoreFloat(outGm_, d_.OAt(rows_.bi_, rows_.i_, rows_.hh_), acc, d_.dv);
    mfds::StoreRun(statsGm_, d_.StatsAt(rows_.bi_, rows_.i_, rows_.hh_), st, 2);
    AscendC::PipeBarrier<PIPE_ALL>();
  }

  AscendC::TPipe pipe_;
  mfds::SparseDims d_{};
  mfds::TopkRows<T> rows_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> acc_, st_, scratch_;
  AscendC::GlobalTensor<T> outGm_;
  AscendC::GlobalTensor<float> statsGm_;
  uint64_t row0_ = 0, nrows_ = 0;
};

extern "C" __global__ __aicore__ void mfds_sparse_mla_attention(GM_ADDR q, GM_ADDR q_pe, GM_ADDR kv, GM_ADDR k_pe,
                                                                GM_ADDR index, GM_ADDR bias, GM_ADDR scale, GM_ADDR out,
                                                                GM_ADDR stats, GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  SparseMlaAttentionKernel<DTYPE_Q> op;
  op.Init(q, q_pe, kv, k_pe, index, bias, scale, out, stats, t);
  op.Process();
}
