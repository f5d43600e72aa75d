// Fused MLA attention: scores, additive mask, softmax and the weighted sum of values in one op,
// and its backward, without any [B, H, Sq, Sk] tensor in memory (the semantics of
// MLAttention.attend's composite path in mindformers_ds/models/deepseek/attention.py).
//
//   MlaAttention:     q [B, Sq, H, Dn+Dr], q_pe [B, H, Sq, Dr], kv [B, Sk, H, Dn+Dv], k_pe [B, Sk, Dr],
//                     bias [B|1, 1, Sq, Sk], scale [1]          -> out [B, Sq, H, Dv], stats [B, H, Sq, 2]
//   MlaAttentionGrad: dout, q, q_pe, kv, k_pe, bias, scale, out, stats
//                     -> dq [B, Sq, H, Dn+Dr] (rope channels 0), dq_pe, dkv [B, Sk, H, Dn+Dv], dk_pe
//
// score[i, j] = (q_nope[i] . k_nope[j] + q_pe[i] . k_pe[j]) * scale + bias[i, j]; q and kv are read
// in the layouts the projections produce (head-interleaved rows), so no transposes are needed;
// q's rope channels are ignored (q_pe holds them rotated) and the rotary key k_pe is shared by
// all heads, never copied per head. The output is already in o_proj's input layout.
//
// Work splits over (batch, head) pairs on OpenMP threads (MindSpore's oneDNN is built for a
// threadpool runtime, so each dnnl_sgemm call here runs on its calling thread) and, inside a
// pair, over blocks of kRows queries. A block only visits the key range [lo, hi) that holds all
// its unmasked keys: masked scores add -1e30 in the composite path, so their probabilities are
// exactly 0 and skipping them changes nothing but the summation order (a causal mask halves the
// work). A row with no unmasked key is what the composite path makes uniform; its block visits
// every key, bias included, and gets the same result.
// The backward recomputes the probabilities from each row's saved max and log-sum (flash-attention
// style). The two are kept apart: for an all-masked row the max is -1e30, and their sum would lose
// the log-sum entirely.
#include "common.h"
#include "mla_layout.h"

#include <algorithm>
#include <limits>

namespace {

constexpr int64_t kRows = 64;       // queries per block
constexpr float kMaskedBelow = -1e29f;  // bias below this marks a masked key (MASK_VALUE = -1e30)

struct Dims : mfds::MlaDims {
  int64_t bm;  // the mask's batch: 1 (shared) or B
};

bool dims_of(int *ndims, int64_t **shapes, Dims *d) {
  if (!mfds::mla_dims_of(ndims, shapes, d) || ndims[4] != 4) return false;
  d->bm = shapes[4][0];
  return shapes[4][2] == d->sq && shapes[4][3] == d->sk && (d->bm == 1 || d->bm == d->b);
}

// [lo, hi) key range of every query block of every mask batch
struct Range {
  int64_t lo, hi;
};

std::vector<Range> key_ranges(const float *bias, const Dims &d) {
  const int64_t blocks = (d.sq + kRows - 1) / kRows;
  std::vector<Range> out(d.bm * blocks);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < d.bm * blocks; ++t) {
    const int64_t mb = t / blocks, r0 = (t % blocks) * kRows, r1 = std::min(r0 + kRows, d.sq);
    int64_t lo = d.sk, hi = 0;
    bool empty_row = false;
    for (int64_t i = r0; i < r1; ++i) {
      const float *row = bias + (mb * d.sq + i) * d.sk;
      int64_t first = 0, last = d.sk;
      while (first < d.sk && row[first] < kMaskedBelow) ++first;
      while (last > first && row[last - 1] < kMaskedBelow) --last;
      if (first == d.sk) empty_row = true;
      lo = std::min(lo, first), hi = std::max(hi, last);
    }
    out[t] = empty_row ? Range{0, d.sk} : Range{lo, hi};
  }
  return out;
}

// One (batch, head) pair's rows, and its mask row (the mask may be shared by the batch).
struct Pair : mfds::MlaPair {
  Pair(const Dims &dims, int64_t b, int64_t h) : mfds::MlaPair{dims, b, h}, bm(dims.bm) {}
  int64_t bm;
  int64_t bias_at(int64_t i, int64_t j) const { return ((bm == 1 ? 0 : bi) * d.sq + i) * d.sk + j; }
};

// s [n, w] = q_nope k_nope^T + q_pe k_pe^T over rows [r0, r0+n) and keys [lo, lo+w), unscaled
void raw_scores(const Pair &p, const float *q, const float *qpe, const float *kv, const float *kpe, int64_t r0,
                int64_t n, int64_t lo, int64_t w, float *s) {
  const mfds::MlaDims &d = p.d;
  mfds::sgemm('N', 'T', n, w, d.dn, 1.0f, q + p.q_at(r0), p.q_ld(), kv + p.kv_at(lo), p.kv_ld(), 0.0f, s, w);
  mfds::sgemm('N', 'T', n, w, d.dr, 1.0f, qpe + p.qpe_at(r0), d.dr, kpe + p.kpe_at(lo), d.dr, 1.0f, s, w);
}

// On one row: raw scores -> probabilities p (from the row's max m and log-sum ls), and dP ->
// d(raw score) = p (dP - delta) scale, the softmax backward with delta = dO . O.
void softmax_backward_row(float *__restrict p, float *__restrict dp, const float *__restrict bias, int64_t w,
                          float scale, float m, float ls, float delta) {
#pragma omp simd
  for (int64_t j = 0; j < w; ++j) {
    const float pj = mfds::fast_exp((p[j] * scale + bias[j] - m) - ls);
    p[j] = pj;
    dp[j] = pj * (dp[j] - delta) * scale;
  }
}

}  // namespace

MFDS_AOT(MlaAttention) {
  Dims d;
  if (nparam != 8 || !mfds::is(dtypes[0], "float32") || !dims_of(ndims, shapes, &d)) return 1;
  const float *q = static_cast<const float *>(params[0]), *qpe = static_cast<const float *>(params[1]);
  const float *kv = static_cast<const float *>(params[2]), *kpe = static_cast<const float *>(params[3]);
  const float *bias = static_cast<const float *>(params[4]);
  const float scale = static_cast<const float *>(params[5])[0];
  float *out = static_cast<float *>(params[6]), *stats = static_cast<float *>(params[7]);
  const std::vector<Range> ranges = key_ranges(bias, d);
  const int64_t blocks = (d.sq + kRows - 1) / kRows;
#pragma omp parallel
  {
    std::vector<float> s(kRows * d.sk);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t bi = 0; bi < d.b; ++bi) {
      for (int64_t hh = 0; hh < d.h; ++hh) {
        const Pair p{d, bi, hh};
        for (int64_t blk = 0; blk < blocks; ++blk) {
          const int64_t r0 = blk * kRows, n = std::min(kRows, d.sq - r0);
          const Range rg = ranges[(d.bm == 1 ? 0 : bi) * blocks + blk];
          const int64_t w = rg.hi - rg.lo;
          if (w <= 0) {  // cannot happen (an all-masked row visits every key); keep outputs defined
            for (int64_t i = 0; i < n; ++i) std::memset(out + p.o_at(r0 + i), 0, sizeof(float) * d.dv);
            continue;
          }
          raw_scores(p, q, qpe, kv, kpe, r0, n, rg.lo, w, s.data());
          for (int64_t i = 0; i < n; ++i) {
            float *si = s.data() + i * w;
            const float *bi_row = bias + p.bias_at(r0 + i, rg.lo);
            float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
            for (int64_t j = 0; j < w; ++j) {
              si[j] = si[j] * scale + bi_row[j];
              m = std::max(m, si[j]);
            }
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < w; ++j) sum += (si[j] = mfds::fast_exp(si[j] - m));
            const float inv = 1.0f / sum;
#pragma omp simd
            for (int64_t j = 0; j < w; ++j) si[j] *= inv;
            stats[p.stats_at(r0 + i)] = m;
            stats[p.stats_at(r0 + i) + 1] = std::log(sum);
          }
          mfds::sgemm('N', 'N', n, d.dv, w, 1.0f, s.data(), w, kv + p.kv_at(rg.lo) + d.dn, p.kv_ld(), 0.0f,
                      out + p.o_at(r0), p.o_ld());
        }
      }
    }
  }
  return 0;
}

MFDS_AOT(MlaAttentionGrad) {
  Dims d;
  if (nparam != 13 || !mfds::is(dtypes[0], "float32") || !dims_of(ndims + 1, shapes + 1, &d)) return 1;
  const float *dout = static_cast<const float *>(params[0]);
  const float *q = static_cast<const float *>(params[1]), *qpe = static_cast<const float *>(params[2]);
  const float *kv = static_cast<const float *>(params[3]), *kpe = static_cast<const float *>(params[4]);
  const float *bias = static_cast<const float *>(params[5]);
  const float scale = static_cast<const float *>(params[6])[0];
  const float *out = static_cast<const float *>(params[7]), *stats = static_cast<const float *>(params[8]);
  float *dq = static_cast<float *>(params[9]), *dqpe = static_cast<float *>(params[10]);
  float *dkv = static_cast<float *>(params[11]), *dkpe = static_cast<float *>(params[12]);
  const std::vector<Range> ranges = key_ranges(bias, d);
  const int64_t blocks = (d.sq + kRows - 1) / kRows;
  // the shared rope key's gradient is a sum over heads: each pair writes its own slice first
  std::vector<float> dkpe_heads(d.b * d.h * d.sk * d.dr, 0.0f);
#pragma omp parallel
  {
    std::vector<float> prob(kRows * d.sk), ds(kRows * d.sk);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t bi = 0; bi < d.b; ++bi) {
      for (int64_t hh = 0; hh < d.h; ++hh) {
        const Pair p{d, bi, hh};
        float *dkpe_h = dkpe_heads.data() + (bi * d.h + hh) * d.sk * d.dr;
        for (int64_t j = 0; j < d.sk; ++j) std::memset(dkv + p.kv_at(j), 0, sizeof(float) * d.dkv);
        for (int64_t blk = 0; blk < blocks; ++blk) {
          const int64_t r0 = blk * kRows, n = std::min(kRows, d.sq - r0);
          const Range rg = ranges[(d.bm == 1 ? 0 : bi) * blocks + blk];
          const int64_t w = rg.hi - rg.lo;
          for (int64_t i = 0; i < n; ++i) {
            std::memset(dq + p.q_at(r0 + i), 0, sizeof(float) * d.dq);
            std::memset(dqpe + p.qpe_at(r0 + i), 0, sizeof(float) * d.dr);
          }
          if (w <= 0) continue;
          raw_scores(p, q, qpe, kv, kpe, r0, n, rg.lo, w, prob.data());
          // dP = dO V^T
          mfds::sgemm('N', 'T', n, w, d.dv, 1.0f, dout + p.o_at(r0), p.o_ld(), kv + p.kv_at(rg.lo) + d.dn, p.kv_ld(),
                      0.0f, ds.data(), w);
          for (int64_t i = 0; i < n; ++i) {
            float *pi = prob.data() + i * w, *dsi = ds.data() + i * w;
            const float *bi_row = bias + p.bias_at(r0 + i, rg.lo);
            const float *st = stats + p.stats_at(r0 + i);
            const float delta = mfds::dot(dout + p.o_at(r0 + i), out + p.o_at(r0 + i), d.dv);
            softmax_backward_row(pi, dsi, bi_row, w, scale, st[0], st[1], delta);
          }
          // dV += P^T dO;  dK_nope += dS^T Q_nope;  dK_pe(head) += dS^T Q_pe
          mfds::sgemm('T', 'N', w, d.dv, n, 1.0f, prob.data(), w, dout + p.o_at(r0), p.o_ld(), 1.0f,
                      dkv + p.kv_at(rg.lo) + d.dn, p.kv_ld());
          mfds::sgemm('T', 'N', w, d.dn, n, 1.0f, ds.data(), w, q + p.q_at(r0), p.q_ld(), 1.0f, dkv + p.kv_at(rg.lo),
                      p.kv_ld());
          mfds::sgemm('T', 'N', w, d.dr, n, 1.0f, ds.data(), w, qpe + p.qpe_at(r0), d.dr, 1.0f,
                      dkpe_h + rg.lo * d.dr, d.dr);
          // dQ_nope = dS K_nope;  dQ_pe = dS K_pe
          mfds::sgemm('N', 'N', n, d.dn, w, 1.0f, ds.data(), w, kv + p.kv_at(rg.lo), p.kv_ld(), 0.0f, dq + p.q_at(r0),
                      p.q_ld());
          mfds::sgemm('N', 'N', n, d.dr, w, 1.0f, ds.data(), w, kpe + p.kpe_at(rg.lo), d.dr, 0.0f,
                      dqpe + p.qpe_at(r0), d.dr);
        }
      }
    }
    mfds::sum_rope_key_grads(dkpe_heads.data(), d, dkpe);
  }
  return 0;
}
