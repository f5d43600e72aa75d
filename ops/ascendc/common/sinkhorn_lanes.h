// mHC's Sinkhorn on the vector unit, many matrices at once. A tile of T matrices [n, n] is
// turned lane-major ("planes"): plane (j, k) holds element (j, k) of every matrix, one matrix
// per lane, so a column or row sum of all T matrices is n - 1 vector adds of T lanes and the
// division one vector divide; the 4x4 matrices of V4 never have to fit a 32-byte block.
// Gather (element-wise, byte offsets) turns the rows of a tile into planes and back.
// The arithmetic and its order follow ops/cpu/sinkhorn.cc: each denominator is the sum in
// index order plus eps; the backward of y = c / (s + eps) is dc = (dy - sum_i dy_i y_i) / (s + eps).
#pragma once
#include "kernel_common.h"

namespace mfds {

// Offsets (bytes) of the two Gathers of a tile of `rows` matrices of nn elements, each padded
// to nnPad in the row layout, with `lanes` (>= rows, a multiple of 8) lanes per plane.
//   toLanes[e * lanes + t] -> element e of matrix t (lanes past the last matrix read the last)
//   toRows[t * nnPad + e]  -> lane t of plane e (the row padding reads plane 0: never stored)
__aicore__ inline void SinkhornOffsets(AscendC::LocalTensor<uint32_t> &toLanes, AscendC::LocalTensor<uint32_t> &toRows,
                                       uint32_t rows, uint32_t lanes, uint32_t nn, uint32_t nnPad) {
  for (uint32_t e = 0; e < nn; ++e)
    for (uint32_t t = 0; t < lanes; ++t)
      toLanes.SetValue(e * lanes + t, ((t < rows ? t : rows - 1) * nnPad + e) * sizeof(float));
  for (uint32_t t = 0; t < rows; ++t)
    for (uint32_t e = 0; e < nnPad; ++e)
      toRows.SetValue(t * nnPad + e, e < nn ? (e * lanes + t) * sizeof(float) : 0u);
  AscendC::PipeBarrier<PIPE_ALL>();   // scalar writes before the vector unit reads them
}

// plane index of the b-th element of line a: column a (cols) or row a
__aicore__ inline uint32_t LineElem(uint32_t n, bool cols, uint32_t a, uint32_t b) { return cols ? b * n + a : a * n + b; }

// One normalising step in place over every lane; den [n planes] receives sum + eps per line.
__aicore__ inline void NormaliseLanes(AscendC::LocalTensor<float> c, AscendC::LocalTensor<float> den, uint32_t n,
                                      uint32_t lanes, bool cols, float eps) {
  for (uint32_t a = 0; a < n; ++a) {
    auto d = den[a * lanes];
    if (n == 1) {
      AscendC::Adds(d, c[LineElem(n, cols, a, 0) * lanes], 0.0f, lanes);
    } else {
      AscendC::Add(d, c[LineElem(n, cols, a, 0) * lanes], c[LineElem(n, cols, a, 1) * lanes], lanes);
    }
    for (uint32_t b = 2; b < n; ++b) AscendC::Add(d, d, c[LineElem(n, cols, a, b) * lanes], lanes);
    AscendC::Adds(d, d, eps, lanes);
    for (uint32_t b = 0; b < n; ++b) {
      auto x = c[LineElem(n, cols, a, b) * lanes];
      AscendC::Div(x, x, d, lanes);
    }
  }
}

// The backward of one step over every lane, in place on g: y is the step's output, den its
// denominators; dot and tmp are one plane each.
__aicore__ inline void NormaliseBackLanes(AscendC::LocalTensor<float> g, AscendC::LocalTensor<float> y,
                                          AscendC::LocalTensor<float> den, AscendC::LocalTensor<float> dot,
                                          AscendC::LocalTensor<float> tmp, uint32_t n, uint32_t lanes, bool cols) {
  for (uint32_t a = 0; a < n; ++a) {
    const uint32_t i0 = LineElem(n, cols, a, 0) * lanes;
    AscendC::Mul(dot, g[i0], y[i0], lanes);
    for (uint32_t b = 1; b < n; ++b) {
      const uint32_t i = LineElem(n, cols, a, b) * lanes;
      AscendC::Mul(tmp, g[i], y[i], lanes);
      AscendC::Add(dot, dot, tmp, lanes);
    }
    for (uint32_t b = 0; b < n; ++b) {
      auto x = g[LineElem(n, cols, a, b) * lanes];
      AscendC::Sub(x, x, dot, lanes);
      AscendC::Div(x, x, den[a * lanes], lanes);
    }
  }
}

__aicore__ inline bool SinkhornColumnStep(uint32_t t) { return t % 2 == 0; }   // columns first, then rows, ...

// What both Sinkhorn kernels read from the tiling data (MfdsRowTilingData: rows of n*n elements,
// aux0 = n) and from params = (iters, eps), and the Gather offset tables they share.
struct SinkhornTile {
  uint32_t n = 1, nn = 1, nnPad = 8, tileRows = 8, lanes = 8, steps = 1;
  uint64_t row0 = 0, nrows = 0;   // this core's matrices
  float eps = 1e-6f;

  template <typename Tiling>
  __aicore__ inline void Init(const Tiling &t, GM_ADDR params) {
    n = t.aux0;
    nn = n * n;
    nnPad = AlignElems(nn, sizeof(float));
    tileRows = t.tileRows;
    lanes = AlignElems(tileRows, sizeof(float));
    CoreRows(t.rowsPerCore, t.lastRows, t.cores, row0, nrows);
    steps = 2 * static_cast<uint32_t>(((__gm__ float *)params)[0]) - 1;
    eps = ((__gm__ float *)params)[1];
  }

  __aicore__ inline uint32_t RowsAt(uint64_t done) const {   // matrices in the tile starting at `done`
    return static_cast<uint32_t>(nrows - done < tileRows ? nrows - done : tileRows);
  }

  __aicore__ inline uint32_t PlaneElems() const { return nn * lanes; }

  __aicore__ inline void InitOffsets(AscendC::TPipe &pipe, AscendC::TBuf<AscendC::QuePosition::VECCALC> &toLanes,
                                     AscendC::TBuf<AscendC::QuePosition::VECCALC> &toRows) const {
    pipe.InitBuffer(toLanes, PlaneElems() * sizeof(uint32_t));
    pipe.InitBuffer(toRows, tileRows * nnPad * sizeof(uint32_t));
    auto lanesTable = toLanes.Get<uint32_t>();
    auto rowsTable = toRows.Get<uint32_t>();
    SinkhornOffsets(lanesTable, rowsTable, tileRows, lanes, nn, nnPad);
  }
};

}  // namespace mfds
