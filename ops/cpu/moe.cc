// MoE token dispatch and expert compute (the semantics of mindformers_ds/ops/composite.py).
//
//   MoePermute:   x [N, H], idx [N, k] int32 -> x_perm [T, H], slot [T] i32, row_expert [T] i32, counts [E] i32
//                 rows sorted by expert, token order inside an expert, no padding (T = N*k);
//                 slot[r] = n*k + j is the routing choice row r holds.
//   MoePermuteGrad:   dx_perm [P, H], slot [P], idx [N, k] (shape only) -> dx [N, H]
//   MoeUnpermute:     y [P, H], slot [P], w [N, k]                      -> out [N, H] = sum_j w[n,j] y[row(n,j)]
//   MoeUnpermuteGrad: dout [N, H], y [P, H], slot [P], w [N, k]         -> dy [P, H], dw [N, k]
//   GroupedMatmul:      x [P, K], w [E, M, K], block_expert [NB]        -> y [P, M] (rows of block b use
//                       expert block_expert[b]; block = P / NB: 1 with MoePermute, 32.. with the composite)
//   GroupedMatmulGradX: dy [P, M], w [E, M, K], block_expert [NB]       -> dx [P, K]
//   GroupedMatmulGradW: dy [P, M], x [P, K], block_expert [NB], w (shape) -> dw [E, M, K]
// Slots >= N*k mark padding rows (composite path): they read zeros and write nothing.
// Index inputs must be int32: a kernel given another dtype fails instead of misreading it.
#include "common.h"

#include <algorithm>

namespace {

// rows [begin, end) of each maximal run of blocks with the same expert
struct Run {
  int64_t begin, end;
  int32_t expert;
};

std::vector<Run> runs(const int32_t *block_expert, int64_t nb, int64_t block) {
  std::vector<Run> out;
  for (int64_t b = 0; b < nb; ++b) {
    if (!out.empty() && out.back().expert == block_expert[b] && out.back().end == b * block) {
      out.back().end += block;
    } else {
      out.push_back({b * block, (b + 1) * block, block_expert[b]});
    }
  }
  return out;
}

// row of each slot (-1: none), inverting slot_of_row
std::vector<int64_t> rows_of_slots(const int32_t *slot, int64_t p, int64_t t) {
  std::vector<int64_t> row(t, -1);
  for (int64_t r = 0; r < p; ++r)
    if (slot[r] >= 0 && slot[r] < t) row[slot[r]] = r;
  return row;
}

// The GEMMs run on OpenMP threads: MindSpore's oneDNN is built for a threadpool runtime, so
// dnnl_sgemm called outside it uses one core (measured: 99 GFLOP/s alone, 175 as two halves).
// Forward and dX split every expert's rows into chunks; dW splits the output rows of every
// expert's weight, so each thread owns its slice of dW and no two threads add into the same one.
constexpr int64_t kRowChunk = 128;

std::vector<Run> row_chunks(const std::vector<Run> &rs) {
  std::vector<Run> out;
  for (const Run &r : rs)
    for (int64_t b = r.begin; b < r.end; b += kRowChunk) out.push_back({b, std::min(b + kRowChunk, r.end), r.expert});
  return out;
}

}  // namespace

MFDS_AOT(MoePermute) {
  if (nparam != 6 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[1], "int32")) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const int32_t *idx = static_cast<const int32_t *>(params[1]);
  float *xp = static_cast<float *>(params[2]);
  int32_t *slot = static_cast<int32_t *>(params[3]);
  int32_t *row_expert = static_cast<int32_t *>(params[4]);
  int32_t *counts = static_cast<int32_t *>(params[5]);
  const int64_t n = shapes[0][0], h = shapes[0][1], k = shapes[1][1], t = n * k, e = shapes[5][0];
  std::vector<int64_t> offset(e + 1, 0);
  std::memset(counts, 0, sizeof(int32_t) * e);
  for (int64_t i = 0; i < t; ++i) {
    if (idx[i] < 0 || idx[i] >= e) return 2;
    counts[idx[i]]++;
  }
  for (int64_t j = 0; j < e; ++j) offset[j + 1] = offset[j] + counts[j];
  for (int64_t i = 0; i < t; ++i) {  // stable: token order inside each expert's group
    const int64_t r = offset[idx[i]]++;
    slot[r] = static_cast<int32_t>(i);
    row_expert[r] = idx[i];
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < t; ++r) std::memcpy(xp + r * h, x + (slot[r] / k) * h, sizeof(float) * h);
  return 0;
}

MFDS_AOT(MoePermuteGrad) {
  if (nparam != 4 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[1], "int32")) return 1;
  const float *dxp = static_cast<const float *>(params[0]);
  const int32_t *slot = static_cast<const int32_t *>(params[1]);
  float *dx = static_cast<float *>(params[3]);
  const int64_t p = shapes[0][0], h = shapes[0][1], n = shapes[2][0], k = shapes[2][1];
  const std::vector<int64_t> row = rows_of_slots(slot, p, n * k);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float *out = dx + i * h;
    std::memset(out, 0, sizeof(float) * h);
    for (int64_t j = 0; j < k; ++j)
      if (row[i * k + j] >= 0) mfds::axpy(out, dxp + row[i * k + j] * h, 1.0f, h);
  }
  return 0;
}

MFDS_AOT(MoeUnpermute) {
  if (nparam != 4 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[1], "int32")) return 1;
  const float *y = static_cast<const float *>(params[0]);
  const int32_t *slot = static_cast<const int32_t *>(params[1]);
  const float *w = static_cast<const float *>(params[2]);
  float *out = static_cast<float *>(params[3]);
  const int64_t p = shapes[0][0], h = shapes[0][1], n = shapes[2][0], k = shapes[2][1];
  const std::vector<int64_t> row = rows_of_slots(slot, p, n * k);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float *o = out + i * h;
    std::memset(o, 0, sizeof(float) * h);
    for (int64_t j = 0; j < k; ++j)
      if (row[i * k + j] >= 0) mfds::axpy(o, y + row[i * k + j] * h, w[i * k + j], h);
  }
  return 0;
}

MFDS_AOT(MoeUnpermuteGrad) {
  if (nparam != 6 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[2], "int32")) return 1;
  const float *dout = static_cast<const float *>(params[0]);
  const float *y = static_cast<const float *>(params[1]);
  const int32_t *slot = static_cast<const int32_t *>(params[2]);
  const float *w = static_cast<const float *>(params[3]);
  float *dy = static_cast<float *>(params[4]);
  float *dw = static_cast<float *>(params[5]);
  const int64_t p = shapes[1][0], h = shapes[1][1], n = shapes[3][0], k = shapes[3][1], t = n * k;
  std::memset(dw, 0, sizeof(float) * t);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < p; ++r) {
    float *dyr = dy + r * h;
    const int64_t s = slot[r];
    if (s < 0 || s >= t) {
      std::memset(dyr, 0, sizeof(float) * h);
      continue;
    }
    const float *g = dout + (s / k) * h;
    const float ws = w[s];
#pragma omp simd
    for (int64_t c = 0; c < h; ++c) dyr[c] = ws * g[c];
    dw[s] = mfds::dot(y + r * h, g, h);
  }
  return 0;
}

MFDS_AOT(GroupedMatmul) {
  if (nparam != 4 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[2], "int32")) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const int32_t *be = static_cast<const int32_t *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t p = shapes[0][0], kd = shapes[0][1], m = shapes[1][1], nb = shapes[2][0];
  const std::vector<Run> chunks = row_chunks(runs(be, nb, nb ? p / nb : 1));
#pragma omp parallel for schedule(dynamic)
  for (size_t c = 0; c < chunks.size(); ++c) {  // Y = X W_e^T for each chunk of an expert's rows
    const Run &run = chunks[c];
    const float *we = w + static_cast<int64_t>(run.expert) * m * kd;
    mfds::sgemm('N', 'T', run.end - run.begin, m, kd, 1.0f, x + run.begin * kd, kd, we, kd, 0.0f,
                y + run.begin * m, m);
  }
  return 0;
}

MFDS_AOT(GroupedMatmulGradX) {
  if (nparam != 4 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[2], "int32")) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const int32_t *be = static_cast<const int32_t *>(params[2]);
  float *dx = static_cast<float *>(params[3]);
  const int64_t p = shapes[0][0], m = shapes[0][1], kd = shapes[1][2], nb = shapes[2][0];
  const std::vector<Run> chunks = row_chunks(runs(be, nb, nb ? p / nb : 1));
#pragma omp parallel for schedule(dynamic)
  for (size_t c = 0; c < chunks.size(); ++c) {  // dX = dY W_e
    const Run &run = chunks[c];
    const float *we = w + static_cast<int64_t>(run.expert) * m * kd;
    mfds::sgemm('N', 'N', run.end - run.begin, kd, m, 1.0f, dy + run.begin * m, m, we, kd, 0.0f,
                dx + run.begin * kd, kd);
  }
  return 0;
}

MFDS_AOT(GroupedMatmulGradW) {
  if (nparam != 5 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[2], "int32")) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const int32_t *be = static_cast<const int32_t *>(params[2]);
  float *dw = static_cast<float *>(params[4]);
  const int64_t p = shapes[0][0], m = shapes[0][1], kd = shapes[1][1], nb = shapes[2][0];
  const int64_t e = shapes[4][0];
  std::memset(dw, 0, sizeof(float) * e * m * kd);  // experts without tokens get zero gradients
  const std::vector<Run> rs = runs(be, nb, nb ? p / nb : 1);
  constexpr int64_t kOutChunk = 64;
  const int64_t pieces = (m + kOutChunk - 1) / kOutChunk;
#pragma omp parallel for schedule(dynamic)
  for (int64_t piece = 0; piece < pieces; ++piece) {  // dW_e[rows of piece] += dY[:, piece]^T X
    const int64_t m0 = piece * kOutChunk, mn = std::min(kOutChunk, m - m0);
    for (const Run &run : rs) {
      float *dwe = dw + (static_cast<int64_t>(run.expert) * m + m0) * kd;
      mfds::sgemm('T', 'N', mn, kd, run.end - run.begin, 1.0f, dy + run.begin * m + m0, m, x + run.begin * kd, kd,
                  1.0f, dwe, kd);
    }
  }
  return 0;
}
