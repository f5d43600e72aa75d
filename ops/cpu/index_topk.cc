// The Lightning Indexer's scoring and top-k in one pass (DeepSeek-V3.2's DSA; the frozen
// indexer, whose scores nothing differentiates): each query's k best keys without the
// [B, Hi, S, T] logits or the [B, S, T] score matrix of the composite.
//
//   IndexTopk: q [B, S, Hi, Di] (roped), keys [B, T, Di], w [B, S, Hi] (weights_proj(x) / sqrt(Hi)),
//              mask [B|1, 1, S, T] bool, scale [1]          -> top [B, S, K] float32, chosen [B, S, K] int32
//
//   score[b, s, t] = sum_h w[b, s, h] * relu((q[b, s, h] . keys[b, t]) * scale),  -inf where the mask drops t
//   (chosen, top) = the K largest scores of the row, in descending order, ties to the lower index,
//                   then (a row with fewer than K allowed keys) dropped keys in ascending order with
//                   score -inf: ops.topk on the composite's score matrix gives the same kept keys in
//                   the same order (its -inf fill is some other set of dropped keys).
//
// Work: blocks of kRows queries of one batch row on OpenMP threads (dynamic: under the causal
// mask later blocks see more keys). A block scans its mask rows for the span of allowed keys
// [lo, hi), scores only that span, kChunk keys at a time: one oneDNN GEMM of the block's
// [kRows * Hi, Di] queries against the chunk's [kChunk, Di] keys, then relu, the head weights and
// the head sum over the chunk (vectorised along the keys). Selection ranks only the keys that
// reach a bar estimated from a sample of the row (select_row). Cost O(S * T * Hi * Di) for the
// GEMMs, as the composite, but nothing of size S * T outlives its block (the composite
// materialised [B, Hi, S, T] logits).
#include "common.h"

#include <algorithm>
#include <functional>
#include <limits>

namespace {

constexpr int64_t kRows = 32;     // queries per block (rows of the GEMM: kRows * Hi)
constexpr int64_t kChunk = 512;   // keys per GEMM
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Entry {
  float score;
  int32_t key;
};

struct Dims {
  int64_t b, s, hi, di, t, k, mask_b;
};

bool dims_of(int *ndims, int64_t **shapes, Dims *d) {
  if (ndims[0] != 4 || ndims[1] != 3 || ndims[2] != 3 || ndims[3] != 4 || ndims[5] != 3) return false;
  *d = Dims{shapes[0][0], shapes[0][1], shapes[0][2], shapes[0][3], shapes[1][1], shapes[5][2], shapes[3][0]};
  return shapes[1][0] == d->b && shapes[1][2] == d->di && shapes[2][0] == d->b && shapes[2][1] == d->s &&
         shapes[2][2] == d->hi && (d->mask_b == 1 || d->mask_b == d->b) && shapes[3][1] == 1 &&
         shapes[3][2] == d->s && shapes[3][3] == d->t && shapes[5][0] == d->b && shapes[5][1] == d->s &&
         d->k > 0 && d->k <= d->t;
}

// The mask row of query s of batch row bi (a [1, 1, S, T] mask is shared by the batch).
inline const uint8_t *mask_row(const Dims &d, const uint8_t *mask, int64_t bi, int64_t s) {
  return mask + ((d.mask_b == 1 ? 0 : bi) * d.s + s) * d.t;
}

// Scores of the block's rows [s0, s0 + n) over keys [lo, hi) into sc (row stride hi - lo).
void score_block(const Dims &d, const float *q, const float *keys, const float *w, const uint8_t *mask, float scale,
                 int64_t bi, int64_t s0, int64_t n, int64_t lo, int64_t hi, float *logits, float *sc) {
  const int64_t span = hi - lo;
  const float *qb = q + (bi * d.s + s0) * d.hi * d.di;   // [n * Hi, Di], contiguous
  for (int64_t t0 = lo; t0 < hi; t0 += kChunk) {
    const int64_t tc = std::min(kChunk, hi - t0);
    mfds::sgemm('N', 'T', n * d.hi, tc, d.di, 1.0f, qb, d.di, keys + (bi * d.t + t0) * d.di, d.di, 0.0f, logits,
                kChunk);
    for (int64_t i = 0; i < n; ++i) {
      float *row = sc + i * span + (t0 - lo);
      const float *wi = w + (bi * d.s + s0 + i) * d.hi;
      const uint8_t *m = mask_row(d, mask, bi, s0 + i) + t0;
      std::fill(row, row + tc, 0.0f);
      for (int64_t h = 0; h < d.hi; ++h) {
        const float *lg = logits + (i * d.hi + h) * kChunk;
        const float wh = wi[h];
#pragma omp simd
        for (int64_t j = 0; j < tc; ++j) {
          const float v = lg[j] * scale;
          row[j] += (v > 0.0f ? v : 0.0f) * wh;
        }
      }
#pragma omp simd
      for (int64_t j = 0; j < tc; ++j) row[j] = m[j] ? row[j] : kNegInf;
    }
  }
}

// Per-thread buffers of select_row.
struct Scratch {
  std::vector<float> sample;
  std::vector<int32_t> keys;
  std::vector<Entry> cand;
};

// The K best of one row: scores sc over keys [lo, hi) (the rest dropped) -> top, chosen.
// A long row first estimates a bar from a sample of 2K of its scores (the score about 2K keys of
// the row reach), collects the keys at or above it without branches, and falls back to every
// allowed key when fewer than K made it (the bar only filters: the result is exact either way).
// The candidates (about 2K instead of the row) are then ranked: ties go to the lower index.
void select_row(const Dims &d, const float *sc, int64_t lo, int64_t hi, Scratch &w, float *top, int32_t *chosen) {
  const int64_t span = hi - lo;
  float bar = kNegInf;
  if (span > 8 * d.k) {
    const int64_t m = 2 * d.k, stride = span / m;
    w.sample.resize(m);
    for (int64_t i = 0; i < m; ++i) w.sample[i] = sc[i * stride];
    const int64_t r = std::max<int64_t>(1, 2 * d.k * m / span);   // about 2K keys of the row reach it
    std::nth_element(w.sample.begin(), w.sample.begin() + (r - 1), w.sample.end(), std::greater<float>());
    bar = w.sample[r - 1];
  }
  w.keys.resize(span);
  int64_t n = 0;
  for (int pass = 0; pass < 2; ++pass) {
    n = 0;
    for (int64_t t = 0; t < span; ++t) {
      w.keys[n] = static_cast<int32_t>(lo + t);
      n += (sc[t] >= bar) & (sc[t] != kNegInf);
    }
    if (n >= d.k || bar == kNegInf) break;
    bar = kNegInf;   // the sample overshot: every allowed key is a candidate
  }
  const auto better = [](const Entry &a, const Entry &b) {
    return a.score > b.score || (a.score == b.score && a.key < b.key);
  };
  w.cand.resize(n);
  for (int64_t j = 0; j < n; ++j) w.cand[j] = Entry{sc[w.keys[j] - lo], w.keys[j]};
  const int64_t kept = std::min(n, d.k);
  if (n > kept) std::nth_element(w.cand.begin(), w.cand.begin() + (kept - 1), w.cand.end(), better);
  std::sort(w.cand.begin(), w.cand.begin() + kept, better);   // best first
  for (int64_t j = 0; j < kept; ++j) {
    chosen[j] = w.cand[j].key;
    top[j] = w.cand[j].score;
  }
  // fewer allowed keys than K: dropped ones follow, in ascending order
  int64_t j = kept;
  for (int32_t t = 0; j < d.k; ++t) {
    if (t >= lo && t < hi && sc[t - lo] != kNegInf) continue;
    chosen[j] = t;
    top[j++] = kNegInf;
  }
}

}  // namespace

MFDS_AOT(IndexTopk) {
  Dims d;
  if (nparam != 7 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[3], "bool") ||
      !mfds::is(dtypes[6], "int32") || !dims_of(ndims, shapes, &d))
    return 1;
  const float *q = static_cast<const float *>(params[0]), *keys = static_cast<const float *>(params[1]);
  const float *w = static_cast<const float *>(params[2]);
  const uint8_t *mask = static_cast<const uint8_t *>(params[3]);
  const float scale = static_cast<const float *>(params[4])[0];
  float *top = static_cast<float *>(params[5]);
  int32_t *chosen = static_cast<int32_t *>(params[6]);
  const int64_t blocks = (d.s + kRows - 1) / kRows;
#pragma omp parallel
  {
    std::vector<float> logits(kRows * d.hi * kChunk), sc;
    Scratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < d.b * blocks; ++item) {
      const int64_t bi = item / blocks, s0 = (item % blocks) * kRows, n = std::min(kRows, d.s - s0);
      int64_t block_lo = d.t, block_hi = 0;
      for (int64_t i = 0; i < n; ++i) {   // the union of the rows' spans of allowed keys
        const uint8_t *m = mask_row(d, mask, bi, s0 + i);
        const int64_t a = std::find(m, m + d.t, uint8_t(1)) - m;   // memchr-fast
        int64_t z = d.t;
        while (z > a && !m[z - 1]) --z;
        if (a < z) block_lo = std::min(block_lo, a), block_hi = std::max(block_hi, z);
      }
      if (block_lo >= block_hi) block_lo = block_hi = 0;   // nothing allowed in the block
      sc.resize(n * (block_hi - block_lo));
      if (block_hi > block_lo)
        score_block(d, q, keys, w, mask, scale, bi, s0, n, block_lo, block_hi, logits.data(), sc.data());
      for (int64_t i = 0; i < n; ++i) {
        const int64_t at = (bi * d.s + s0 + i) * d.k;
        select_row(d, sc.data() + i * (block_hi - block_lo), block_lo, block_hi, scratch, top + at, chosen + at);
      }
    }
  }
  return 0;
}
