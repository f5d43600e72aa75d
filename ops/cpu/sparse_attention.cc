// MLA attention over each query's top-k keys only (DeepSeek Sparse Attention, V3.2): the keys a
// Lightning Indexer chose are gathered, scored, softmaxed and their values summed, and the
// backward scatters into the chosen keys' rows. Cost O(Sq * k) per head instead of O(Sq * Sk);
// no [Sq, Sk] tensor, mask or score matrix exists.
//
//   SparseMlaAttention:     q [B, Sq, H, Dn+Dr], q_pe [B, H, Sq, Dr], kv [B, Sk, H, Dn+Dv],
//                           k_pe [B, Sk, Dr], index [B, Sq, K] int32, bias [B, Sq, K] float32,
//                           scale [1]                    -> out [B, Sq, H, Dv], stats [B, H, Sq, 2]
//   SparseMlaAttentionGrad: dout, q, q_pe, kv, k_pe, index, bias, scale, out, stats
//                           -> dq (rope channels 0), dq_pe, dkv, dk_pe
//
// For query i the t-th key is j = index[i, t], scored (q_nope[i] . k_nope[j] + q_pe[i] . k_pe[j])
// * scale + bias[i, t]. A key whose bias is below -1e29 (the model's MASK_VALUE, -1e30), or whose
// index is outside [0, Sk), is dropped: probability exactly 0, as the masked dense composite gives
// it (composite.SparseMlaAttentionCore scatters the same bias into a [Sq, Sk] one). Indices are
// distinct (top-k's are). A query with no key left outputs zeros (the composite would spread it
// uniformly over every key); under the causal mask it cannot happen, each query keeps itself.
//
// Work splits over (batch, head) pairs on OpenMP threads, so in the backward every pair owns its
// head's slice of dkv and writes it without atomics; the shared rope key's gradient goes to one
// buffer per pair and is summed over heads at the end (as in attention.cc). Each key row of a head
// is Dn+Dv contiguous floats: the dot products and the value sums run along them (vectorised), and
// the gather costs one row per chosen key.
#include "common.h"
#include "mla_layout.h"

#include <algorithm>
#include <limits>

namespace {

constexpr float kMaskedBelow = -1e29f;

struct Topk {
  int64_t k;
  const int32_t *index;
  const float *bias;
};

bool dims_of(int *ndims, int64_t **shapes, mfds::MlaDims *d, int64_t *k) {
  if (!mfds::mla_dims_of(ndims, shapes, d) || ndims[4] != 3 || ndims[5] != 3) return false;
  *k = shapes[4][2];
  return shapes[4][0] == d->b && shapes[4][1] == d->sq && shapes[5][0] == d->b && shapes[5][1] == d->sq &&
         shapes[5][2] == *k && *k > 0;
}

// The gathers are latency bound: a head's key row sits 1 KB (H rows) from the next key's, so the
// hardware prefetcher cannot guess it and every chosen key was a cache miss (the kv of 8k keys is
// 8 MB, beyond L2). Each loop over the chosen keys asks for the row kAhead keys on.
constexpr int64_t kAhead = 4;

inline void prefetch_rows(const float *row, int64_t floats, const float *rope_row) {
  for (int64_t f = 0; f < floats; f += 16) __builtin_prefetch(row + f);
  __builtin_prefetch(rope_row);
}

// The kept keys of query i: their indices into Sk and scaled scores; returns how many.
int64_t score_row(const mfds::MlaPair &p, const Topk &tk, const float *q, const float *qpe, const float *kv,
                  const float *kpe, float scale, int64_t i, int32_t *keys, float *s) {
  const mfds::MlaDims &d = p.d;
  const int32_t *idx = tk.index + (p.bi * d.sq + i) * tk.k;
  const float *bias = tk.bias + (p.bi * d.sq + i) * tk.k;
  const float *qn = q + p.q_at(i), *qp = qpe + p.qpe_at(i);
  int64_t n = 0;
  for (int64_t t = 0; t < tk.k; ++t) {
    const int32_t j = idx[t];
    if (t + kAhead < tk.k && idx[t + kAhead] >= 0 && idx[t + kAhead] < d.sk)
      prefetch_rows(kv + p.kv_at(idx[t + kAhead]), d.dkv, kpe + p.kpe_at(idx[t + kAhead]));
    if (bias[t] < kMaskedBelow || j < 0 || j >= d.sk) continue;
    keys[n] = j;
    s[n++] = (mfds::dot(qn, kv + p.kv_at(j), d.dn) + mfds::dot(qp, kpe + p.kpe_at(j), d.dr)) * scale + bias[t];
  }
  return n;
}

}  // namespace

MFDS_AOT(SparseMlaAttention) {
  mfds::MlaDims d;
  int64_t k = 0;
  if (nparam != 9 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[4], "int32") ||
      !dims_of(ndims, shapes, &d, &k))
    return 1;
  const float *q = static_cast<const float *>(params[0]), *qpe = static_cast<const float *>(params[1]);
  const float *kv = static_cast<const float *>(params[2]), *kpe = static_cast<const float *>(params[3]);
  const Topk tk{k, static_cast<const int32_t *>(params[4]), static_cast<const float *>(params[5])};
  const float scale = static_cast<const float *>(params[6])[0];
  float *out = static_cast<float *>(params[7]), *stats = static_cast<float *>(params[8]);
#pragma omp parallel
  {
    std::vector<int32_t> keys(k);
    std::vector<float> s(k);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t bi = 0; bi < d.b; ++bi) {
      for (int64_t hh = 0; hh < d.h; ++hh) {
        const mfds::MlaPair p{d, bi, hh};
        for (int64_t i = 0; i < d.sq; ++i) {
          float *o = out + p.o_at(i), *st = stats + p.stats_at(i);
          std::memset(o, 0, sizeof(float) * d.dv);
          const int64_t n = score_row(p, tk, q, qpe, kv, kpe, scale, i, keys.data(), s.data());
          if (n == 0) {
            st[0] = 0.0f, st[1] = 0.0f;
            continue;
          }
          float m = -std::numeric_limits<float>::infinity();
          for (int64_t t = 0; t < n; ++t) m = std::max(m, s[t]);
          float sum = 0.0f;
          for (int64_t t = 0; t < n; ++t) sum += (s[t] = mfds::fast_exp(s[t] - m));
          const float inv = 1.0f / sum;
          for (int64_t t = 0; t < n; ++t) mfds::axpy(o, kv + p.kv_at(keys[t]) + d.dn, s[t] * inv, d.dv);
          st[0] = m, st[1] = std::log(sum);
        }
      }
    }
  }
  return 0;
}

MFDS_AOT(SparseMlaAttentionGrad) {
  mfds::MlaDims d;
  int64_t k = 0;
  if (nparam != 14 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[5], "int32") ||
      !dims_of(ndims + 1, shapes + 1, &d, &k))
    return 1;
  const float *dout = static_cast<const float *>(params[0]);
  const float *q = static_cast<const float *>(params[1]), *qpe = static_cast<const float *>(params[2]);
  const float *kv = static_cast<const float *>(params[3]), *kpe = static_cast<const float *>(params[4]);
  const Topk tk{k, static_cast<const int32_t *>(params[5]), static_cast<const float *>(params[6])};
  const float scale = static_cast<const float *>(params[7])[0];
  const float *out = static_cast<const float *>(params[8]), *stats = static_cast<const float *>(params[9]);
  float *dq = static_cast<float *>(params[10]), *dqpe = static_cast<float *>(params[11]);
  float *dkv = static_cast<float *>(params[12]), *dkpe = static_cast<float *>(params[13]);
  std::vector<float> dkpe_heads(d.b * d.h * d.sk * d.dr, 0.0f);
#pragma omp parallel
  {
    std::vector<int32_t> keys(k);
    std::vector<float> s(k);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t bi = 0; bi < d.b; ++bi) {
      for (int64_t hh = 0; hh < d.h; ++hh) {
        const mfds::MlaPair p{d, bi, hh};
        float *dkpe_h = dkpe_heads.data() + (bi * d.h + hh) * d.sk * d.dr;
        for (int64_t j = 0; j < d.sk; ++j) std::memset(dkv + p.kv_at(j), 0, sizeof(float) * d.dkv);
        for (int64_t i = 0; i < d.sq; ++i) {
          float *dqi = dq + p.q_at(i), *dqpi = dqpe + p.qpe_at(i);
          std::memset(dqi, 0, sizeof(float) * d.dq);
          std::memset(dqpi, 0, sizeof(float) * d.dr);
          const int64_t n = score_row(p, tk, q, qpe, kv, kpe, scale, i, keys.data(), s.data());
          if (n == 0) continue;
          const float *st = stats + p.stats_at(i), *doi = dout + p.o_at(i);
          const float delta = mfds::dot(doi, out + p.o_at(i), d.dv);
          const float *qn = q + p.q_at(i), *qp = qpe + p.qpe_at(i);
          for (int64_t t = 0; t < n; ++t) {
            if (t + kAhead < n) {   // the row read below and the gradient rows written into
              prefetch_rows(dkv + p.kv_at(keys[t + kAhead]), d.dkv, dkpe_h + keys[t + kAhead] * d.dr);
            }
            const float *row = kv + p.kv_at(keys[t]);
            const float pt = mfds::fast_exp((s[t] - st[0]) - st[1]);
            const float ds = pt * (mfds::dot(doi, row + d.dn, d.dv) - delta) * scale;
            float *drow = dkv + p.kv_at(keys[t]);
            mfds::axpy(dqi, row, ds, d.dn);                              // dq_nope += ds k_nope
            mfds::axpy(dqpi, kpe + p.kpe_at(keys[t]), ds, d.dr);         // dq_pe += ds k_pe
            mfds::axpy(drow, qn, ds, d.dn);                              // dk_nope += ds q_nope
            mfds::axpy(drow + d.dn, doi, pt, d.dv);                      // dv += p dO
            mfds::axpy(dkpe_h + keys[t] * d.dr, qp, ds, d.dr);           // dk_pe(head) += ds q_pe
          }
        }
      }
    }
    mfds::sum_rope_key_grads(dkpe_heads.data(), d, dkpe);
  }
  return 0;
}
