// MfdsMoePermute: rows sorted by expert, token order inside a group, no padding (T = N*k rows).
// Each core makes the (cheap, scalar) pass over the expert ids itself -- counts, group offsets,
// then the stable placement -- and copies only the rows that land in its share of the output,
// through a double-buffered queue. No cross-core synchronisation is needed.
#include "../../common/kernel_common.h"

constexpr uint32_t kIdxChunk = 2048;

template <typename T>
class MoePermuteKernel {
 public:
  __aicore__ inline void Init(GM_ADDR x, GM_ADDR idx, GM_ADDR xp, GM_ADDR slot, GM_ADDR rexp, GM_ADDR counts,
                              const MfdsRowTilingData &t) {
    h_ = t.cols;
    k_ = t.aux0;
    e_ = t.aux1;
    total_ = t.rows;
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, r0_, nr_);
    xGm_.SetGlobalBuffer((__gm__ T *)x);
    idxGm_.SetGlobalBuffer((__gm__ int32_t *)idx);
    xpGm_.SetGlobalBuffer((__gm__ T *)xp);
    slotGm_.SetGlobalBuffer((__gm__ int32_t *)slot);
    rexpGm_.SetGlobalBuffer((__gm__ int32_t *)rexp);
    countsGm_.SetGlobalBuffer((__gm__ int32_t *)counts);
    pipe_.InitBuffer(rowQ_, mfds::kBufferNum, mfds::AlignElems(h_, sizeof(T)) * sizeof(T));
    pipe_.InitBuffer(idxBuf_, kIdxChunk * sizeof(int32_t));
    pipe_.InitBuffer(offBuf_, mfds::AlignElems(e_ + 1, 4) * sizeof(int32_t));
    pipe_.InitBuffer(mine_, 2 * mfds::AlignElems(static_cast<uint32_t>(nr_), 4) * sizeof(int32_t));
  }

  __aicore__ inline void Process() {
    auto off = offBuf_.Get<int32_t>();
    AscendC::Duplicate(off, 0, mfds::AlignElems(e_ + 1, 4));
    AscendC::PipeBarrier<PIPE_ALL>();
    ForEachId([&](uint64_t, int32_t e) { off.SetValue(e + 1, off.GetValue(e + 1) + 1); });
    if (AscendC::GetBlockIdx() == 0) {  // counts[e] = off[e + 1] before the prefix sum
      auto cnt = off[1];
      mfds::StoreRows(countsGm_, cnt, 0, 1, e_);
      AscendC::PipeBarrier<PIPE_ALL>();
    }
    for (uint32_t e = 0; e < e_; ++e) off.SetValue(e + 1, off.GetValue(e + 1) + off.GetValue(e));
    auto slots = mine_.Get<int32_t>();
    auto experts = slots[mfds::AlignElems(static_cast<uint32_t>(nr_), 4)];
    ForEachId([&](uint64_t t, int32_t e) {
      const uint64_t pos = off.GetValue(e);
      off.SetValue(e, static_cast<int32_t>(pos + 1));
      if (pos < r0_ || pos >= r0_ + nr_) return;
      slots.SetValue(pos - r0_, static_cast<int32_t>(t));
      experts.SetValue(pos - r0_, e);
      auto row = rowQ_.AllocTensor<T>();  // x[token] -> x_perm[pos], double buffered
      mfds::LoadRows(row, xGm_, t / k_, 1, h_);
      rowQ_.EnQue(row);
      row = rowQ_.DeQue<T>();
      mfds::StoreRows(xpGm_, row, pos, 1, h_);
      rowQ_.FreeTensor(row);
    });
    AscendC::PipeBarrier<PIPE_ALL>();
    mfds::StoreRows(slotGm_, slots, r0_, 1, static_cast<uint32_t>(nr_));
    mfds::StoreRows(rexpGm_, experts, r0_, 1, static_cast<uint32_t>(nr_));
  }

 private:
  template <typename F>
  __aicore__ inline void ForEachId(F &&f) {  // stream the [N, k] expert ids in chunks
    auto buf = idxBuf_.Get<int32_t>();
    for (uint64_t base = 0; base < total_; base += kIdxChunk) {
      const uint32_t n = static_cast<uint32_t>(total_ - base < kIdxChunk ? total_ - base : kIdxChunk);
      AscendC::DataCopyExtParams p{1, static_cast<uint32_t>(n * sizeof(int32_t)), 0, 0, 0};
      AscendC::DataCopyPadExtParams<int32_t> pad{false, 0, 0, 0};
      AscendC::DataCopyPad(buf, idxGm_[base], p, pad);
      AscendC::PipeBarrier<PIPE_ALL>();
      for (uint32_t i = 0; i < n; ++i) f(base + i, buf.GetValue(i));
    }
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> rowQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> idxBuf_, offBuf_, mine_;
  AscendC::GlobalTensor<T> xGm_, xpGm_;
  AscendC::GlobalTensor<int32_t> idxGm_, slotGm_, rexpGm_, countsGm_;
  uint32_t h_ = 0, k_ = 1, e_ = 1;
  uint64_t total_ = 0, r0_ = 0, nr_ = 0;
};

extern "C" __global__ __aicore__ void mfds_moe_permute(GM_ADDR x, GM_ADDR expert_idx, GM_ADDR x_perm, GM_ADDR slot,
                                                       GM_ADDR row_expert, GM_ADDR counts, GM_ADDR workspace,
                                                       GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  MoePermuteKernel<DTYPE_X> op;
  op.Init(x, expert_idx, x_perm, slot, row_expert, counts, t);
  op.Process();
}
