// MfdsFp8BlockDequant: out[i, j] = e4m3(codes[i, j]) * scale[i / 128, j / 128].
// The 910B has no fp8 arithmetic: a 256-entry float table of every e4m3 value is built in UB
// once per core, codes become byte offsets (u8 -> f16 -> i32, x4) and Gather decodes a row;
// each 128-column block is then scaled.
#include "../../common/kernel_common.h"

class Fp8DequantKernel {
 public:
  __aicore__ inline void Init(GM_ADDR codes, GM_ADDR scale, GM_ADDR out, const MfdsRowTilingData &t) {
    cols_ = t.cols;
    pad_ = mfds::AlignElems(cols_, 1);
    scaleCols_ = t.aux0;
    tileRows_ = t.tileRows;
    mfds::CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0_, nrows_);
    cGm_.SetGlobalBuffer((__gm__ uint8_t *)codes);
    sGm_.SetGlobalBuffer((__gm__ float *)scale);
    oGm_.SetGlobalBuffer((__gm__ float *)out);
    pipe_.InitBuffer(cQ_, mfds::kBufferNum, tileRows_ * pad_);
    pipe_.InitBuffer(oQ_, mfds::kBufferNum, tileRows_ * pad_ * sizeof(float));
    pipe_.InitBuffer(half_, pad_ * sizeof(half));
    pipe_.InitBuffer(idx_, pad_ * sizeof(int32_t));
    pipe_.InitBuffer(lut_, 256 * sizeof(float));
    pipe_.InitBuffer(srow_, mfds::AlignElems(scaleCols_, 4) * sizeof(float));
    auto lut = lut_.Get<float>();
    for (int c = 0; c < 256; ++c) {  // e4m3fn: bias 7, no infinities, 0x7F/0xFF NaN
      const int e = (c >> 3) & 0xF, m = c & 7;
      float v = e == 0 ? m * 0.001953125f : (1.0f + m * 0.125f) * Pow2(e - 7);
      if ((c & 0x7F) == 0x7F) v = __builtin_nanf("");
      lut.SetValue(c, (c & 0x80) ? -v : v);
    }
  }

  __aicore__ inline void Process() {
    for (uint64_t done = 0; done < nrows_; done += tileRows_) {
      const uint32_t n = static_cast<uint32_t>(nrows_ - done < tileRows_ ? nrows_ - done : tileRows_);
      const uint64_t row = row0_ + done;
      auto c = cQ_.AllocTensor<uint8_t>();
      mfds::LoadRows(c, cGm_, row, n, cols_);
      cQ_.EnQue(c);
      Compute(row, n);
      auto o = oQ_.DeQue<float>();
      mfds::StoreRows(oGm_, o, row, n, cols_);
      oQ_.FreeTensor(o);
    }
  }

 private:
  __aicore__ static inline float Pow2(int e) {
    float v = 1.0f;
    for (; e > 0; --e) v *= 2.0f;
    for (; e < 0; ++e) v *= 0.5f;
    return v;
  }

  __aicore__ inline void Compute(uint64_t row, uint32_t n) {
    auto c = cQ_.DeQue<uint8_t>();
    auto o = oQ_.AllocTensor<float>();
    auto h = half_.Get<half>();
    auto idx = idx_.Get<int32_t>();
    auto lut = lut_.Get<float>();
    auto srow = srow_.Get<float>();
    uint64_t loadedScaleRow = ~0ull;
    for (uint32_t i = 0; i < n; ++i) {
      AscendC::Cast(h, c[i * pad_], AscendC::RoundMode::CAST_NONE, cols_);
      AscendC::Cast(idx, h, AscendC::RoundMode::CAST_ROUND, cols_);
      AscendC::ShiftLeft(idx, idx, static_cast<int32_t>(2), cols_);   // byte offset into the table
      auto orow = o[i * pad_];
      AscendC::Gather(orow, lut, idx.ReinterpretCast<uint32_t>(), 0, cols_);
      const uint64_t sr = (row + i) / 128;
      if (sr != loadedScaleRow) {
        mfds::LoadRows(srow, sGm_, sr, 1, scaleCols_);
        AscendC::PipeBarrier<PIPE_ALL>();
        loadedScaleRow = sr;
      }
      for (uint32_t b = 0; b < scaleCols_; ++b) {
        const uint32_t len = (b + 1) * 128 <= cols_ ? 128 : cols_ - b * 128;  // ragged last block
        auto blk = orow[b * 128];
        AscendC::Muls(blk, blk, srow.GetValue(b), len);
      }
    }
    oQ_.EnQue(o);
    cQ_.FreeTensor(c);
  }

  AscendC::TPipe pipe_;
  AscendC::TQue<AscendC::QuePosition::VECIN, mfds::kBufferNum> cQ_;
  AscendC::TQue<AscendC::QuePosition::VECOUT, mfds::kBufferNum> oQ_;
  AscendC::TBuf<AscendC::QuePosition::VECCALC> half_, idx_, lut_, srow_;
  AscendC::GlobalTensor<uint8_t> cGm_;
  AscendC::GlobalTensor<float> sGm_, oGm_;
  uint32_t cols_ = 0, pad_ = 0, scaleCols_ = 1, tileRows_ = 1;
  uint64_t row0_ = 0, nrows_ = 0;
};

extern "C" __global__ __aicore__ void mfds_fp8_block_dequant(GM_ADDR codes, GM_ADDR scale, GM_ADDR out,
                                                             GM_ADDR workspace, GM_ADDR tiling) {
  GET_TILING_DATA(t, tiling);
  Fp8DequantKernel op;
  op.Init(codes, scale, out, t);
  op.Process();
}
