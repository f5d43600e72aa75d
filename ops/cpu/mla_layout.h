// The tensor layouts MLA's attention kernels read and write (dense: attention.cc; top-k:
// sparse_attention.cc): q [B, Sq, H, Dn+Dr] and kv [B, Sk, H, Dn+Dv] in the projections'
// head-interleaved rows, q_pe [B, H, Sq, Dr], the rotary key k_pe [B, Sk, Dr] shared by all
// heads, out [B, Sq, H, Dv] (o_proj's input layout) and stats [B, H, Sq, 2] (row max, log-sum).
#pragma once
#include <cstdint>
#include <cstring>

#include "common.h"

namespace mfds {

struct MlaDims {
  int64_t b, sq, sk, h, dq, dn, dr, dv, dkv;
};

// Reads the dims off q, q_pe, kv and k_pe (ndims/shapes of those four, in that order).
inline bool mla_dims_of(const int *ndims, int64_t *const *shapes, MlaDims *d) {
  if (ndims[0] != 4 || ndims[1] != 4 || ndims[2] != 4 || ndims[3] != 3) return false;
  d->b = shapes[0][0], d->sq = shapes[0][1], d->h = shapes[0][2], d->dq = shapes[0][3];
  d->dr = shapes[1][3], d->dn = d->dq - d->dr;
  d->sk = shapes[2][1], d->dkv = shapes[2][3], d->dv = d->dkv - d->dn;
  return d->dn > 0 && d->dv > 0 && shapes[3][2] == d->dr && shapes[1][2] == d->sq && shapes[2][2] == d->h &&
         shapes[3][1] == d->sk;
}

// Offsets of one (batch, head) pair's rows.
struct MlaPair {
  const MlaDims &d;
  int64_t bi, hh;
  int64_t q_ld() const { return d.h * d.dq; }
  int64_t kv_ld() const { return d.h * d.dkv; }
  int64_t o_ld() const { return d.h * d.dv; }
  int64_t q_at(int64_t i) const { return ((bi * d.sq + i) * d.h + hh) * d.dq; }
  int64_t qpe_at(int64_t i) const { return ((bi * d.h + hh) * d.sq + i) * d.dr; }
  int64_t kv_at(int64_t j) const { return ((bi * d.sk + j) * d.h + hh) * d.dkv; }
  int64_t kpe_at(int64_t j) const { return (bi * d.sk + j) * d.dr; }
  int64_t o_at(int64_t i) const { return ((bi * d.sq + i) * d.h + hh) * d.dv; }
  int64_t stats_at(int64_t i) const { return ((bi * d.h + hh) * d.sq + i) * 2; }
};

// dk_pe [B, Sk, Dr] = the sum over heads of per-(batch, head) buffers [B, H, Sk, Dr]: the rope
// key is shared by the heads, so each pair wrote its own slice. Called inside an omp parallel
// region (the loop is an orphaned worksharing construct).
inline void sum_rope_key_grads(const float *per_head, const MlaDims &d, float *dkpe) {
#pragma omp for schedule(static)
  for (int64_t t = 0; t < d.b * d.sk; ++t) {
    const int64_t bi = t / d.sk, j = t % d.sk;
    float *dst = dkpe + t * d.dr;
    std::memset(dst, 0, sizeof(float) * d.dr);
    for (int64_t hh = 0; hh < d.h; ++hh) axpy(dst, per_head + ((bi * d.h + hh) * d.sk + j) * d.dr, 1.0f, d.dr);
  }
}

}  // namespace mfds
